"""The promotion rule on hand-built rung results (kdnas/search/promotion.py)."""

from __future__ import annotations

import pytest

from kdnas.search.promotion import RungResult, cost_bands, pareto_ranks, promote


def test_pareto_ranks_peel_fronts():
    acc = [0.9, 0.8, 0.7, 0.85, 0.6]
    cost = [3.0, 2.0, 1.0, 3.5, 2.5]
    # front: (0.9,3) (0.8,2) (0.7,1); then (0.85,3.5) and (0.6,2.5), each dominated once
    assert pareto_ranks(acc, cost) == [0, 0, 0, 1, 1]
    assert pareto_ranks([0.5, 0.5], [1.0, 1.0]) == [0, 0]  # equal points share a rank


def test_cost_bands_split_log_cost_evenly():
    assert cost_bands([1, 2, 4, 8], 3) == [0, 1, 2, 2]
    assert cost_bands([5, 5, 5], 3) == [0, 0, 0]
    assert cost_bands([1, 100], 1) == [0, 0]


def _r(key, family, cost, acc):
    return RungResult(key, family, cost, acc)


def test_the_best_third_of_each_band_by_rank_then_accuracy():
    cheap = [_r(f"c{i}", "resnet", 1.0 + i / 100, a) for i, a in enumerate(
        [0.50, 0.60, 0.55, 0.40, 0.45, 0.58])]
    dear = [_r(f"d{i}", "resnet", 10.0 + i / 10, a) for i, a in enumerate(
        [0.70, 0.75, 0.65])]
    got = promote(cheap + dear, eta=3, bands=2)
    # cheap band: c0 (the cheapest) and c1 (0.60, which dominates every dearer one) make
    # the front, the more accurate first; in the dear band d0 (cheapest) and d1 (most
    # accurate) make the front and its one place goes to the more accurate
    assert got == ["c1", "c0", "d1"]
    assert len(promote(cheap + dear, eta=1.5, bands=2)) == 4 + 2


def test_a_slow_starting_family_keeps_its_quota_at_the_first_rung():
    """Brief accuracies underrate one family: without a quota it is dropped in every band,
    with one its best goes on beside the leaders."""
    band = [_r("r1", "resnet", 1.0, 0.70), _r("r2", "resnet", 1.1, 0.69),
            _r("r3", "resnet", 1.2, 0.68), _r("r4", "resnet", 1.3, 0.67),
            _r("m1", "mobilenet", 1.0, 0.45), _r("m2", "mobilenet", 1.1, 0.47)]
    assert promote(band, eta=3, bands=1) == ["r1", "r2"]
    # the family's best by Pareto rank is m1: cheaper than m2, and r1 dominates m2
    assert promote(band, eta=3, bands=1, family_quota=1) == ["r1", "m1"]
    assert promote(band, eta=3, bands=1, family_quota=2) == ["r1", "r2", "m1", "m2"]


def test_nothing_to_promote_and_bad_eta():
    assert promote([], eta=3) == []
    with pytest.raises(ValueError, match="eta"):
        promote([_r("a", "f", 1.0, 0.5)], eta=1)
