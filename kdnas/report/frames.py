"""The study as tables (pandas frames) and figures: every trial, the hand-designed references,
the Pareto front with its knee, and the summary every report format shows.

Everything is read from a :class:`~kdnas.core.records.StudyRecord`; nothing is recomputed or
retrained.
"""

from __future__ import annotations

import json

import numpy as np

import pandas as pd

from kdnas.core.attrs import SIGNAL_NAMES
from kdnas.core.budget import fmt_count
from kdnas.core.kd_methods import (
    ACROSS_FAMILIES_FRESH,
    ACROSS_FAMILIES_RERUN,
    ACROSS_FAMILIES_TAU,
    canonical_method,
)
from kdnas.core.records import StudyRecord
from kdnas.core.settings import SearchConfig
from kdnas.front import front_order, hypervolume, near_chance, reference_verdict, wilson
from kdnas.front import hypervolume_reference
from kdnas.report.rungs import rung_summary
from search_spaces import describe

COLUMNS = ["trial", "state", "spec_id", "arch", "macs", "flops", "params", "latency_ms",
           "latency_p90_ms", "latency_setting", "val_accuracy", "within_budget",
           "train_seconds", "estimate_seconds", "train_step_ms", "student_seconds", "kd",
           "note", "spec", "rung",
           "brief_val_accuracy", "val_lo", "val_hi", "val_images",
           *(f"signal_{n}" for n in SIGNAL_NAMES), "signals_seconds"]


def trials_frame(record: StudyRecord) -> pd.DataFrame:
    rows = []
    for t in record.trials:
        cost = t.cost
        rows.append({
            "trial": t.number, "state": t.state, "spec_id": t.spec_id,
            "arch": describe(t.spec) if t.spec else None,
            "macs": cost.get("macs"), "flops": cost.get("flops"), "params": cost.get("params"),
            "latency_ms": cost.get("latency_ms"), "latency_p90_ms": cost.get("latency_p90_ms"),
            "latency_setting": cost.get("latency_setting"),
            "val_accuracy": t.val_accuracy, "within_budget": t.within_budget,
            "train_seconds": t.train_seconds, "estimate_seconds": t.estimate_seconds,
            "train_step_ms": cost.get("train_step_ms"),
            "student_seconds": t.time.get("student") if t.trained else None,
            "kd": t.kd, "note": t.note,
            "spec": json.dumps(t.spec, sort_keys=True) if t.spec else None,
            "rung": t.rung, "brief_val_accuracy": t.brief_accuracy,
            **dict(zip(("val_lo", "val_hi"), wilson(t.val_accuracy, record.val_images),
                       strict=True)), "val_images": record.val_images,
            **{f"signal_{k}": v["value"] for k, v in t.signals.items()},
            "signals_seconds": round(sum(v["seconds"] for v in t.signals.values()), 3)
            if t.signals else None,
        })
    return pd.DataFrame(rows, columns=COLUMNS)


def references_frame(record: StudyRecord) -> pd.DataFrame:
    """Hand-designed students trained with the study's brief recipe (``--references``)."""
    rows = [{"name": name, "arch": describe(r["spec"]), **{k: r["cost"].get(k) for k in
            ("macs", "flops", "params", "latency_ms", "latency_p90_ms")},
             "val_accuracy": r["val_accuracy"], "within_budget": r["within_budget"],
             "train_seconds": r["train_seconds"], "kd": r["kd"],
             "did_not_train": r.get("did_not_train")}
            for name, r in record.references.items()]
    return pd.DataFrame(rows, columns=["name", "arch", "macs", "flops", "params", "latency_ms",
                                       "latency_p90_ms", "val_accuracy", "within_budget",
                                       "train_seconds", "kd", "did_not_train"])


def front_frame(df: pd.DataFrame, costs: list[str] | str = "macs") -> pd.DataFrame:
    """Trained, within-budget trials on the Pareto front of accuracy versus every cost column
    in ``costs`` (macs, params, latency_ms: the study's objectives), cheapest first in the
    first, with a ``knee`` flag: the best trade-off of accuracy against the first cost, or the
    cheapest student tied with it (``tied_with_knee``); :func:`kdnas.front.front_order`. With
    ``--rungs``, only the trials at the top rung reached compete (at that rung's
    accuracy)."""
    costs = [costs] if isinstance(costs, str) else list(costs)
    ok = df[(df.state == "trained") & df.within_budget.eq(True)].copy()
    ok = ok[ok[costs].notna().all(axis=1)]
    if "rung" in ok and ok.rung.notna().any():  # --rungs: read at the top rung reached
        ok = ok[ok.rung == ok.rung.max()]
    if ok.empty:
        ok["knee"] = []
        return ok
    n = ok.val_images.iloc[0] if "val_images" in ok else None
    order, k, ties = front_order(ok.val_accuracy.to_numpy(), ok[costs].to_numpy(),
                                 None if n is None or pd.isna(n) else int(n))
    ok = ok.iloc[order].reset_index(drop=True)
    ok["tied_with_knee"] = ties
    ok["knee"] = [i == k for i in range(len(ok))]
    return ok


def export_command(cfg: SearchConfig, trial: int | None = None) -> str:
    """The command that exports a trial of this study (the knee when ``trial`` is None)."""
    which = "--pick knee" if trial is None else f"--trial {trial}"
    workdir = "" if cfg.workdir == "runs" else f" --workdir {cfg.workdir}"
    return f"kdnas export --study {cfg.study} {which}{workdir}"


def summary(record: StudyRecord, cfg: SearchConfig, df: pd.DataFrame | None = None) -> dict:
    """The study in figures; ``df`` is its :func:`trials_frame` when the caller has it."""
    df = trials_frame(record) if df is None else df
    costs = cfg.cost_columns
    front = front_frame(df, costs)
    budget = cfg.budget_value
    ref = hypervolume_reference(record, budget, costs)
    hv = hypervolume(front.val_accuracy.to_numpy(), front[costs].to_numpy(), ref_acc=0.0,
                     ref_cost=[ref[c] for c in costs]) if not front.empty else 0.0
    counts = df.state.value_counts().to_dict()
    return {
        "study": cfg.study, "budget": cfg.budget, "budget_described": budget.describe(),
        "teacher": cfg.teacher, "data": cfg.data,
        "teacher_val_accuracy": record.teacher_val_accuracy,
        "trials_by_state": {k: int(v) for k, v in counts.items()},
        "trained_over_budget": int(((df.state == "trained") &
                                    df.within_budget.eq(False)).sum()),
        "front_size": len(front),
        "best_val_accuracy": None if front.empty else float(front.val_accuracy.max()),
        "knee_trial": None if front.empty else int(front.loc[front.knee.idxmax(), "trial"]),
        "front_cost": costs[0], "front_costs": costs,
        "hypervolume": hv, "hypervolume_reference": ref,
        "search_seconds": float(df.train_seconds.fillna(0).sum()),
        "wall_seconds": wall_seconds(record), "trained_at_once": at_once(record),
        "time_per_trial": time_per_trial(record),
        "macs_latency_spearman": macs_latency_spearman(df),
        "num_classes": record.num_classes, "noise": record.noise,
        "brief_steps": next((t.recipe.get("steps") for t in record.trials if t.recipe), None),
        "caveat": caveat(front, record),
        "against_references": reference_verdict(record, costs),
        "curves": curve_summary(record, [int(t) for t in front.trial]),
        "rungs": rung_summary(record),
    }


def subset_curve(points) -> list[dict]:
    """The learning-curve points measured on the fixed validation subset (records written
    before the final point carried it end at the last point during training)."""
    return [p for p in points if "val_subset_accuracy" in p]


def curve_summary(record: StudyRecord, front_trials: list[int]) -> dict | None:
    """How the front's students were learning when their brief training stopped: the gain in
    validation-subset accuracy over each one's last learning-curve interval. A gain above
    twice the subset's standard error (1/sqrt(images), at least 2 points) counts as still
    climbing: such students can change places with longer training."""
    gains, spans = {}, []
    for n in front_trials:
        pts = subset_curve(record.trial(n).learning_curve)
        if len(pts) >= 2:
            gains[n] = pts[-1]["val_subset_accuracy"] - pts[-2]["val_subset_accuracy"]
            spans.append((pts[-1]["step"] - pts[-2]["step"], pts[-1]["step"],
                          pts[-1].get("val_images", 1000)))  # older records: the old limit
    if not gains:
        return None
    last, total, images = (int(np.median(v)) for v in zip(*spans, strict=True))
    threshold = max(0.02, 1 / images ** 0.5)
    return {"last_gains": gains, "threshold": threshold, "last_steps": last, "steps": total,
            "val_images": images,
            "climbing": sorted(n for n, g in gains.items() if g >= threshold),
            "median_last_gain": float(np.median(list(gains.values())))}


def curve_text(curves: dict | None) -> str | None:
    """The front's learning curves in one sentence (None when no trial recorded one)."""
    if not curves:
        return None
    n, up = len(curves["last_gains"]), curves["climbing"]
    head = (f"learning curves (learning_curves.png): {len(up)} of the front's {n} students "
            f"gained {100 * curves['threshold']:.1f} points or more (on "
            f"{curves['val_images']} validation images) in the last "
            f"{curves['last_steps']} of their {curves['steps']} steps (median "
            f"{100 * curves['median_last_gain']:+.1f} points)")
    if not up:
        return head + ": they had levelled off, so longer training is unlikely to reorder them"
    return (head + f" (trials {', '.join(map(str, up))}): still learning, so their order may "
            "change with longer training; compare the leaders with `kdnas distill` before "
            "choosing")


def noise_text(noise: dict | None) -> str | None:
    """The seed spread of the knee, in words."""
    if not noise:
        return None
    a, b = (100 * v for v in noise["accuracies"])
    s0, s1 = noise["seeds"]
    return (f"seed spread: trial {noise['trial']} (the knee) trained again with seed {s1} "
            f"reached {b:.2f}% against {a:.2f}% with seed {s0}, a spread of "
            f"{100 * noise['spread']:.2f} points")


def caveat(front: pd.DataFrame, record: StudyRecord) -> str | None:
    """One plain sentence when the front is not a result: near chance, or within the seed
    spread of its own knee; with the fix."""
    if front.empty:
        return None
    steps = next((t.recipe.get("steps") for t in record.trials if t.recipe), None)
    fix = ("train each candidate longer (--steps" + (f", now {steps}" if steps else "")
           + ") or on more of the data (--train-fraction)")
    best, worst = float(front.val_accuracy.max()), float(front.val_accuracy.min())
    if record.num_classes and near_chance(best, record.num_classes):
        return (f"Not a result yet: the best student reaches {100 * best:.1f}%, near chance "
                f"({100 / record.num_classes:.1f}% with {record.num_classes} classes), so "
                f"this ranking is noise; {fix}.")
    spread = (record.noise or {}).get("spread")
    if spread is not None and len(front) > 1 and best - worst <= spread:
        return (f"The front's accuracies ({100 * worst:.1f}-{100 * best:.1f}%) lie within the "
                f"seed spread measured on its knee ({100 * spread:.1f} points), so their order "
                f"may be noise; {fix}.")
    families = sorted({(record.trial(int(n)).spec or {}).get("space", "?")
                       for n in front.trial})
    rung = front.rung.max() if "rung" in front and front.rung.notna().any() else None
    if len(families) > 1 and rung is not None and rung > 1:
        return (f"This front mixes families ({', '.join(families)}) and is read after "
                f"{int(rung)}x the brief steps (--rungs); on CIFAR-10, 8x with FitNets "
                "ranked 18 students of three families at Kendall tau 0.699 against full "
                "training (4x: 0.51; full training against itself, another seed: 0.84), so "
                "distil the students you would choose between fully (`kdnas distill`).")
    if len(families) > 1:
        methods = sorted({record.trial(int(n)).kd or "?" for n in front.trial})
        method = canonical_method(methods[0])
        tau = ACROSS_FAMILIES_TAU.get(method) if len(methods) == 1 else None
        again = ACROSS_FAMILIES_RERUN.get(method)
        fresh = ACROSS_FAMILIES_FRESH.get(method)
        measured = (f"with {method}, Kendall tau {tau:.2f} against 8x longer training "
                    "over 18 CIFAR-10 students of three families"
                    + (f", {again:.2f} when run again" if again is not None else "")
                    + (f", {fresh:.2f} on 18 others with seeds of their own"
                       if fresh is not None else "")
                    if tau is not None else
                    f"not measured for {', '.join(methods)}; FitNets' was Kendall tau "
                    f"{ACROSS_FAMILIES_TAU['fitnets']:.2f} over 18 CIFAR-10 students of "
                    "three families")
        return (f"This front mixes families ({', '.join(families)}): brief training ranks "
                f"students across families poorly ({measured}; FitNets' within a family: "
                "0.62), though its best pick held up (reports/search_replay.md); compare "
                "students of different families only after distilling them fully "
                "(`kdnas distill`).")
    return None


def acc_text(r) -> str:
    """A front row's accuracy with its 95% interval, and ``tie`` when it is the knee's within
    that error (the knee is then the cheapest of its ties)."""
    text = f"{100 * r.val_accuracy:.2f}%"
    if "val_lo" in r and not pd.isna(r.val_lo):
        text += f" ({100 * r.val_lo:.1f}-{100 * r.val_hi:.1f})"
    if bool(r.get("tied_with_knee", False)) and not r.knee:
        text += " tie"
    return text


COST_NAMES = {"macs": "MACs", "params": "params", "latency_ms": "latency",
              "train_step_ms": "training step time"}


def _cost_text(cost: str, value: float) -> str:
    return f"{value:.3g} ms" if cost.endswith("_ms") else fmt_count(value)


def hypervolume_text(info: dict) -> str:
    """The hypervolume with its reference point, in words."""
    costs = info.get("front_costs") or [info["front_cost"]]
    ref = info["hypervolume_reference"]
    names = " x ".join(COST_NAMES[c] for c in costs)
    refs = ", ".join(f"{COST_NAMES[c]} up to {_cost_text(c, ref[c])}" for c in costs)
    return (f"{info['hypervolume']:.4f} (share dominated of accuracy x {names}; accuracy "
            f"from 0, {refs}, each in units of its reference; 1.0 would be 100% at no cost)")


PHASES = {"student": "student forward/backward", "teacher": "teacher (run or cache)",
          "data": "batches", "curve": "learning-curve points", "eval": "final validation",
          "propose": "proposal (sampling, cost counting, latency)",
          "estimate": "step-time estimate", "signals": "training-free signals",
          "storage": "checks and storage", "other": "checkpoints and progress"}


def time_per_trial(record: StudyRecord) -> dict | None:
    """Median seconds per trained trial and the share of the trials' time in each phase
    (:data:`PHASES`), from the times each trial recorded."""
    times = [t.time for t in record.trials if t.trained and t.time.get("total")]
    if not times:
        return None
    total = sum(t["total"] for t in times)
    shares = {p: sum(t.get(p, 0.0) for t in times) / total for p in PHASES}
    out = {"median_seconds": float(pd.Series([t["total"] for t in times]).median()),
           "trials": len(times), "shares": {p: round(v, 4) for p, v in shares.items()}}
    # the training time each trial was told before it trained (its student's step time x
    # its steps, scaled by what the process's earlier trials took against that) against what
    # it took; a study that did not record it: the student's time against the unscaled product
    told = [(t.train_seconds, t.estimate_seconds) for t in record.trials if t.trained
            and t.train_seconds and t.estimate_seconds]
    pairs = pd.DataFrame(told or [
        (t.time["student"], t.cost["train_step_ms"] * t.recipe["steps"] / 1e3)
        for t in record.trials if t.trained and t.time.get("student")
        and t.cost.get("train_step_ms") and t.recipe.get("steps")],
        columns=["measured", "estimated"])
    if len(pairs):
        r = pairs.measured / pairs.estimated
        rank = pairs.measured.corr(pairs.estimated, method="spearman") if len(pairs) >= 3 \
            else float("nan")
        out["estimate"] = {"median_ratio": round(float(r.median()), 3),
                           "median_error": round(float((r - 1).abs().median()), 3),
                           "spearman": None if pd.isna(rank) else round(float(rank), 3),
                           "trials": len(pairs), "told": bool(told)}
    return out


def time_text(info: dict) -> str:
    """Time per trial and where it went, in one line."""
    t = info.get("time_per_trial")
    if not t:
        return "not recorded"
    parts = ", ".join(f"{PHASES[p]} {100 * v:.0f}%" for p, v in
                      sorted(t["shares"].items(), key=lambda kv: -kv[1]) if v >= 0.005)
    text = f"{t['median_seconds']:.1f} s per trained trial (median of {t['trials']}): {parts}"
    est = t.get("estimate")
    if est:
        rank = "" if est.get("spearman") is None else \
            f", rank correlation with the measured times {est['spearman']:.2f}"
        what = ("the training time told before each trial (`estimate_seconds` in "
                "trials.csv)" if est.get("told") else "the student time estimated before "
                "training (training steps timed, `train_step_ms` in trials.csv)")
        text += (f"; {what} was off by {100 * est['median_error']:.0f}% "
                 f"(median of {est['trials']}; measured/estimated {est['median_ratio']:.2f}"
                 f"{rank})")
    return text


def wall_seconds(record: StudyRecord) -> float:
    times = [(t.started, t.completed) for t in record.trials if t.started and t.completed]
    if not times:
        return 0.0
    return max(c for _, c in times) - min(s for s, _ in times)


def at_once(record: StudyRecord) -> dict | None:
    """How many candidates trained at once: the most whose training overlapped at any
    instant, and the mean over the time any trained (from each trained trial's start and
    end, whatever process or machine trained it). None before two trials are trained."""
    times = [(t.started, t.completed) for t in record.trials if t.trained
             and t.started is not None and t.completed is not None
             and t.completed > t.started]
    if len(times) < 2:
        return None
    edges = sorted([(s, 1) for s, _ in times] + [(c, -1) for _, c in times],
                   key=lambda e: (e[0], e[1]))  # an end before a start at the same instant
    running, most, busy, area, last = 0, 0, 0.0, 0.0, edges[0][0]
    for when, step in edges:
        if running:
            busy += when - last
            area += running * (when - last)
        running += step
        most = max(most, running)
        last = when
    threads = sorted({t.recipe["threads"] for t in record.trials
                      if t.trained and "threads" in t.recipe})
    return {"max": most, "mean": area / busy if busy else 1.0, "threads": threads}


def at_once_text(a: dict | None) -> str:
    if not a:
        return "-"
    threads = a.get("threads") or []
    each = "" if not threads else (
        f", {threads[0]} CPU thread{'s' if threads[0] > 1 else ''} each" if len(threads) == 1
        else f", {threads[0]}-{threads[-1]} CPU threads each")
    return f"up to {a['max']} at once, {a['mean']:.1f} on average while any trained{each}"


def macs_latency_spearman(df: pd.DataFrame) -> float | None:
    """Rank correlation of MACs and measured latency over all costed candidates: how well
    MACs predict latency on this machine (1.0 = same order)."""
    ok = df[["macs", "latency_ms"]].dropna().astype(float)
    if len(ok) < 3 or ok.macs.nunique() < 2 or ok.latency_ms.nunique() < 2:
        return None
    return float(ok.macs.corr(ok.latency_ms, method="spearman"))


def fmt_value(v, spec: str = ".3g") -> str:
    """A number for a table cell; empty when missing (None or NaN)."""
    return "" if v is None or pd.isna(v) else format(v, spec)


