"""The front, below the search and the report, pandas-free: the Pareto front of accuracy
against any number of costs, its knee and the students tied with it (the validation set's
sampling error), the trial a user picks, the hypervolume and its reference point, and when an
accuracy is too near chance to be a result.

The front and the hypervolume are Optuna's own computations (the ones behind
``study.best_trials`` and its hypervolume plots), so the report agrees with the study and
with optuna-dashboard; the knee, the ties and the pick are kdnas'.
"""

from __future__ import annotations

import math

import numpy as np

from kdnas import optuna_internals
from kdnas.core.attrs import Outcome
from kdnas.core.errors import KdnasError
from kdnas.core.records import StudyRecord


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


# ---- uncertainty ---------------------------------------------------------------------------

def wilson(acc: float | None, n: int | None, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of an accuracy measured on ``n`` images: the validation
    set's own sampling error (NaNs when either is unknown). Unlike acc +- z*se it stays inside
    [0, 1] and is honest near 100%, where small students' accuracies on small sets sit."""
    if acc is None or not n or math.isnan(acc):
        return float("nan"), float("nan")
    centre = (acc + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(acc * (1 - acc) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar (sign) test of two classifiers on the same images: ``only_a``
    images right by the first alone, ``only_b`` by the second alone. Exact binomial tail in
    integers (no normal approximation, no scipy)."""
    n, k = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)


def accuracy_se(acc, n):
    """Standard error of accuracies measured on ``n`` images (Agresti-Coull: two hits and two
    misses added, so that 100% on a small set is not certain); arrays welcome."""
    p = (np.asarray(acc, float) * n + 2) / (n + 4)
    return np.sqrt(p * (1 - p) / (n + 4))


def tied(acc_a, acc_b, n, z: float = 1.96):
    """Whether two accuracies on the same ``n`` validation images differ by less than the 95%
    interval of their difference (their sampling errors combined): a tie."""
    return np.abs(np.asarray(acc_a, float) - acc_b) <= z * np.hypot(accuracy_se(acc_a, n),
                                                                    accuracy_se(acc_b, n))


def near_chance(acc: float, classes: int) -> bool:
    """The one rule for "not a result": an accuracy less than a quarter of the way from
    chance to perfect (32.5% with 10 classes), for a front, a teacher or a distilled
    student."""
    chance = 1.0 / classes
    return acc < chance + 0.25 * (1.0 - chance)


COLLAPSE_SHARE = 0.1  # of the way from chance to perfect: 19% with 10 classes


def collapsed(acc: float, classes: int, losses: list[float] | None = None) -> str | None:
    """Why a training failed, or None: the one rule for a candidate that did not train (its
    accuracy is no result). Failed: an accuracy less than a tenth of the way from chance to
    perfect (19% with 10 classes: where MobileNetV2s that diverged ended, 9-19%), or a
    training loss whose last tenth of steps is no lower than its first tenth. Stricter than
    :func:`near_chance` (a quarter of the way), which a weak student trained briefly on
    CIFAR-10 may sit under and still rank."""
    chance = 1.0 / classes
    if acc < chance + COLLAPSE_SHARE * (1.0 - chance):
        return (f"did not train: {100 * acc:.1f}% validation accuracy, near chance "
                f"({100 * chance:.0f}% with {classes} classes)")
    if losses and len(losses) >= 10:
        k = max(1, len(losses) // 10)
        first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
        if not last < first:
            return (f"did not train: its loss did not fall ({first:.3g} at the start, "
                    f"{last:.3g} at the end)")
    return None


# ---- the front of a study ------------------------------------------------------------------

def front_order(acc, costs, n_val: int | None) -> tuple[list[int], int | None, list[bool]]:
    """The Pareto front of points ``acc`` against the rows of ``costs`` (first cost first):
    the indices of its points, cheapest first in the first cost (most accurate first among
    equals); the position of the knee among them (:func:`knee_index`, or the cheapest point
    tied with it, :func:`tied`, when ``n_val`` is known); and which are tied with the knee."""
    acc = np.asarray(acc, float)
    costs = np.asarray(costs, float).reshape(len(acc), -1)
    if len(acc) == 0:
        return [], None, []
    idx = np.flatnonzero(pareto_mask(acc, costs))
    idx = sorted(idx, key=lambda i: (costs[i, 0], -acc[i]))
    a = acc[idx]
    k = knee_index(a, costs[idx, 0])
    ties = list(tied(a, a[k], n_val)) if n_val else [False] * len(idx)
    if any(ties):
        k = ties.index(True)  # cheapest first: the cheapest tie
    return [int(i) for i in idx], k, [bool(t) for t in ties]


def competing(record: StudyRecord, costs: list[str]) -> list:
    """The trials that compete for the front: trained, within budget, every cost known; with
    ``--rungs``, only those at the highest rung reached (at that rung's accuracy)."""
    ok = [t for t in record.trials if t.state == Outcome.TRAINED and t.within_budget is True
          and all(t.cost.get(c) is not None for c in costs)]
    top = max((t.rung for t in ok if t.rung is not None), default=None)
    return [t for t in ok if top is None or t.rung == top]


def reference_verdict(record: StudyRecord, costs: list[str] | str = "macs") -> dict | None:
    """The best searched student within budget against the best reference within budget
    (``--references``): ``beats`` or ``loses`` beyond the validation set's sampling error
    (:func:`tied`), else ``tie``; with the sentence that says so. None without both."""
    costs = [costs] if isinstance(costs, str) else list(costs)
    refs = {n: r for n, r in record.references.items()
            if r.get("within_budget") and not r.get("did_not_train")}
    trials = competing(record, costs)
    if not refs or not trials:
        return None
    best = max(trials, key=lambda t: t.val_accuracy)
    name, ref = max(refs.items(), key=lambda r: r[1]["val_accuracy"])
    a, b = best.val_accuracy, ref["val_accuracy"]
    n = record.val_images
    verdict = "tie" if n and bool(tied(a, b, n)) else "beats" if a > b else "loses"
    said = {"beats": "beats it beyond the validation set's sampling error",
            "loses": "loses to it beyond the validation set's sampling error",
            "tie": "ties with it (the difference is within the validation set's sampling "
                   "error)" if n else "ties with it"}[verdict]
    c = costs[0]
    unit = {"macs": "MACs", "flops": "FLOPs"}.get(c, c)
    sentence = (f"The best searched student (trial {best.number}, {100 * a:.2f}% at "
                f"{best.cost.get(c, 0) / 1e6:.2f}M {unit}) {said}: the best hand-designed "
                f"reference that fits, {name}, reaches {100 * b:.2f}% at "
                f"{ref['cost'].get(c, 0) / 1e6:.2f}M {unit}, under the same brief recipe.")
    return {"trial": best.number, "accuracy": a, "reference": name, "reference_accuracy": b,
            "verdict": verdict, "sentence": sentence}


def pick_trial(record: StudyRecord, pick: str, costs: list[str] | str = "macs") -> int:
    """Trial number for ``knee`` or ``best`` (most accurate within budget)."""
    costs = [costs] if isinstance(costs, str) else list(costs)
    trials = competing(record, costs)
    if not trials:
        raise KdnasError(f"study {record.name!r} has no trained trial within budget yet")
    acc = [t.val_accuracy for t in trials]
    order, k, _ = front_order(acc, [[t.cost[c] for c in costs] for t in trials],
                              record.val_images)
    if pick == "best":
        return trials[max(order, key=lambda i: acc[i])].number
    return trials[order[k]].number


def hypervolume_reference(record: StudyRecord, budget, cost_columns: list[str]
                          ) -> dict[str, float]:
    """The worst point of the hypervolume: accuracy 0 and, on each cost objective, the budget
    where the budget bounds it, else the value the study fixed when it was created
    (:func:`reference_at_creation`, so that the hypervolumes of a resumed study stay
    comparable)."""
    stored = record.hypervolume_reference or {}
    ref = {"val_accuracy": 0.0}
    for c in cost_columns:
        if c == budget.metric:
            ref[c] = budget.limit
        elif c in stored:
            ref[c] = float(stored[c])
        else:  # a study made before the reference was stored: from its costs
            ref[c] = 1.1 * float(max((t.cost.get(c) or 0 for t in record.trials), default=1)
                                 or 1)
    return ref


def reference_at_creation(budget, cost_columns: list[str], cheapest: dict[str, float] | None
                          ) -> dict[str, float]:
    """The hypervolume's reference on each cost objective the budget does not bound, fixed
    when the study is made: the cheapest candidate's cost (``cheapest``: column -> value)
    scaled by how many times the budget exceeds that candidate's cost on the budget's
    metric."""
    if cheapest is None:
        return {}
    base = cheapest.get(budget.metric)
    scale = budget.limit / base if base else 1.0
    return {c: float(cheapest[c]) * scale for c in cost_columns
            if c != budget.metric and cheapest.get(c) is not None}
