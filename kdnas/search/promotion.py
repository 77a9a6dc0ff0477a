"""Which candidates are trained on to the next rung: multi-objective successive halving.

Every candidate gets the brief recipe (rung 0). Those that reach a rung are compared within
cost bands (so a cheap candidate competes with cheap ones), by Pareto rank over (accuracy at
the rung, cost), as MO-ASHA does (Schmucker et al. 2021, "Multi-objective asynchronous
successive halving"): the first ``1 / eta`` of each band, by rank and then by accuracy, go on.
At the first rung every family of a band keeps at least ``family_quota`` places, so that a
family whose students start slowly (MobileNetV2 and deep ShuffleNetV2 under feature KD) is not
dropped before longer training can show what it is worth.

Optuna cannot prune multi-objective studies (``Trial.report`` raises in them), so the rule is
kdnas' own: plain functions of plain values, with no storage or training here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kdnas.optuna_internals import pareto_mask


@dataclass(frozen=True)
class RungResult:
    """A candidate's result at one rung: its key (spec id or trial), family, cost on the
    budget's metric and accuracy after the rung's training."""

    key: str
    family: str
    cost: float
    accuracy: float


def pareto_ranks(accuracy: Sequence[float], cost: Sequence[float]) -> list[int]:
    """Non-dominated sorting: 0 for the front of (max accuracy, min cost), 1 for the front of
    what remains, and so on."""
    losses = np.column_stack([-np.asarray(accuracy, float), np.asarray(cost, float)])
    ranks = np.full(len(losses), -1)
    left = np.arange(len(losses))
    rank = 0
    while len(left):
        front = left[pareto_mask(losses[left])]
        ranks[front] = rank
        left = np.setdiff1d(left, front)
        rank += 1
    return ranks.tolist()


def cost_bands(cost: Sequence[float], bands: int) -> list[int]:
    """Band of each candidate: ``bands`` bands of equal width in log cost between the
    cheapest and the dearest (one band when all cost the same)."""
    c = np.log(np.maximum(np.asarray(cost, float), 1e-12))
    lo, hi = float(c.min()), float(c.max())
    if bands <= 1 or hi - lo < 1e-9:
        return [0] * len(c)
    return np.minimum(((c - lo) / (hi - lo) * bands).astype(int), bands - 1).tolist()


def promote(results: Sequence[RungResult], *, eta: float = 3.0, bands: int = 3,
            family_quota: int = 0) -> list[str]:
    """The keys to train on to the next rung: in each cost band, the best ``ceil(n / eta)``
    by (Pareto rank, -accuracy, cost, key); with ``family_quota``, each family of the band
    first gets up to that many of its own best (the band's places grow if the quotas need
    more). Returned in the order they were chosen, best first within each band."""
    if not results:
        return []
    if eta <= 1:
        raise ValueError(f"eta must be above 1, got {eta}")
    band = cost_bands([r.cost for r in results], bands)
    chosen: list[str] = []
    for b in sorted(set(band)):
        members = [r for r, k in zip(results, band, strict=True) if k == b]
        ranks = pareto_ranks([r.accuracy for r in members], [r.cost for r in members])
        order = sorted(range(len(members)), key=lambda i: (
            ranks[i], -members[i].accuracy, members[i].cost, members[i].key))
        places = math.ceil(len(members) / eta)
        picked: list[int] = []
        if family_quota:
            for fam in sorted({m.family for m in members}):
                own = [i for i in order if members[i].family == fam]
                picked += own[:family_quota]
        for i in order:
            if len(picked) >= places:
                break
            if i not in picked:
                picked.append(i)
        picked.sort(key=order.index)
        chosen += [members[i].key for i in picked]
    return chosen
