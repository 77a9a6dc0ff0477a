"""Pareto front of accuracy versus cost, its hypervolume and knee point. Pure functions."""

from __future__ import annotations

import numpy as np


def pareto_mask(acc: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """True where no other point has accuracy >= and cost <= with one strictly better."""
    acc, cost = np.asarray(acc, float), np.asarray(cost, float)
    n = len(acc)
    mask = np.ones(n, dtype=bool)
    for i in range(n):
        better_eq = (acc >= acc[i]) & (cost <= cost[i])
        strictly = (acc > acc[i]) | (cost < cost[i])
        if np.any(better_eq & strictly):
            mask[i] = False
    return mask


def hypervolume(acc: np.ndarray, cost: np.ndarray, *, ref_acc: float, ref_cost: float) -> float:
    """Area dominated by the points, bounded by the reference point ``(ref_acc, ref_cost)``
    (worst accuracy, largest cost), with cost in units of ``ref_cost``: so with accuracy in
    [0, 1] and ``ref_acc = 0`` the result lies in [0, 1]. Points beyond the reference add
    nothing."""
    pts = sorted((c, a) for a, c in zip(acc, cost, strict=True) if a > ref_acc and c < ref_cost)
    area, best = 0.0, ref_acc
    # sweep from cheap to costly: a point adds the strip between the best accuracy of the
    # cheaper points and its own, from its cost up to the reference cost
    for c, a in pts:
        if a > best:
            area += (1.0 - c / ref_cost) * (a - best)
            best = a
    return area


def knee_index(acc: np.ndarray, cost: np.ndarray) -> int | None:
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
    dist = np.abs(d[0] * (a - p0[1]) - d[1] * (c - p0[0])) / norm
    # only points above the line are knees (better than the linear trade-off)
    above = (d[0] * (a - p0[1]) - d[1] * (c - p0[0])) > 0
    if not above.any():
        return int(np.argmax(acc))
    dist[~above] = -1
    return int(np.argmax(dist))
