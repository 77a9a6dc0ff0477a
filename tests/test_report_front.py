from __future__ import annotations

import numpy as np
import pytest

from kdnas.report.front import hypervolume, knee_index, pareto_mask


def test_pareto_mask_keeps_only_non_dominated_points():
    acc = np.array([0.90, 0.85, 0.80, 0.70, 0.88, 0.90])
    cost = np.array([10.0, 5.0, 6.0, 1.0, 10.0, 12.0])
    # 0.80@6 is dominated by 0.85@5; 0.88@10 by 0.90@10; 0.90@12 by 0.90@10
    assert pareto_mask(acc, cost).tolist() == [True, True, False, True, False, False]


def test_hypervolume_of_a_staircase():
    acc = np.array([0.5, 0.8])
    cost = np.array([2.0, 6.0])
    # reference cost 10: rectangles (1-0.2)*0.5 + (1-0.6)*(0.8-0.5)
    assert hypervolume(acc, cost, ref_acc=0.0, ref_cost=10.0) == pytest.approx(0.4 + 0.12)


def test_hypervolume_ignores_points_beyond_the_reference_and_dominated_ones():
    hv = hypervolume(np.array([0.5, 0.4, 0.9]), np.array([2.0, 3.0, 11.0]), ref_acc=0.0,
                     ref_cost=10.0)
    assert hv == pytest.approx(0.8 * 0.5)
    assert hypervolume(np.array([]), np.array([]), ref_acc=0, ref_cost=1) == 0.0


def test_knee_is_the_point_of_best_trade_off():
    cost = np.array([1.0, 2.0, 3.0, 10.0])
    acc = np.array([0.50, 0.85, 0.87, 0.90])
    assert knee_index(acc, cost) == 1


def test_knee_with_few_points_is_the_most_accurate():
    assert knee_index(np.array([0.5, 0.7]), np.array([1.0, 2.0])) == 1
    assert knee_index(np.array([]), np.array([])) is None
