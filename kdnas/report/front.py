"""Pareto front, hypervolume and knee point of accuracy against any number of costs.

The front and the hypervolume are Optuna's own computations (the ones behind
``study.best_trials`` and its hypervolume plots), so the report agrees with the study and with
optuna-dashboard; only the knee is ours.
"""

from __future__ import annotations

import numpy as np

from kdnas import optuna_internals


def _losses(acc, costs) -> np.ndarray:
    """Rows of values to minimise: -accuracy, then each cost."""
    acc = np.asarray(acc, float)
    costs = np.asarray(costs, float).reshape(len(acc), -1)
    return np.column_stack([-acc, costs])


def pareto_mask(acc, costs) -> np.ndarray:
    """True where no other point is at least as good on accuracy and on every cost and better
    on one. ``costs`` is one cost per point, or a row of costs per point."""
    if len(acc) == 0:
        return np.zeros(0, dtype=bool)
    return optuna_internals.pareto_mask(_losses(acc, costs))


def hypervolume(acc, costs, *, ref_acc: float, ref_cost) -> float:
    """Share of the box from the reference point ``(ref_acc, ref_cost)`` (worst accuracy,
    largest costs) to (accuracy 1, no cost) that the points dominate, with each cost in units
    of its reference: with accuracy in [0, 1] and ``ref_acc = 0`` the result lies in [0, 1].
    Points beyond the reference add nothing."""
    if len(acc) == 0:
        return 0.0
    ref_cost = np.atleast_1d(np.asarray(ref_cost, float))
    losses = _losses(acc, costs)
    losses[:, 1:] /= ref_cost
    ref = np.concatenate([[-ref_acc], np.ones(len(ref_cost))])
    inside = np.all(losses < ref, axis=1)
    if not inside.any():
        return 0.0
    front = losses[inside][pareto_mask(-losses[inside, 0], losses[inside, 1:])]
    return optuna_internals.hypervolume(front, ref, assume_pareto=True)


def knee_index(acc, cost) -> int | None:
    """The front point farthest from the line joining its two ends, in normalised units.

    With fewer than three points the most accurate is returned.
    """
    acc, cost = np.asarray(acc, float), np.asarray(cost, float)
    if len(acc) == 0:
        return None
    if len(acc) < 3:
        return int(np.argmax(acc))
    a = (acc - acc.min()) / max(np.ptp(acc), 1e-12)
    c = (cost - cost.min()) / max(np.ptp(cost), 1e-12)
    lo, hi = int(np.argmin(c)), int(np.argmax(c))
    p0, p1 = np.array([c[lo], a[lo]]), np.array([c[hi], a[hi]])
    d = p1 - p0
    norm = np.hypot(*d)
    if norm == 0:
        return int(np.argmax(acc))
    side = d[0] * (a - p0[1]) - d[1] * (c - p0[0])
    # only points above the line are knees (better than the linear trade-off)
    if not (side > 0).any():
        return int(np.argmax(acc))
    return int(np.argmax(np.where(side > 0, np.abs(side) / norm, -1)))
