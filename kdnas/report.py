"""Reports people read: trials.csv, pareto.csv/.md/.png and summary.json.

Everything is read back from the study's storage; nothing is recomputed or retrained.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState

from kdnas.config import SearchConfig
from kdnas.cost import fmt_count
from kdnas.front import hypervolume, knee_index, pareto_mask
from search_spaces import describe

log = logging.getLogger(__name__)

COLUMNS = ["trial", "state", "spec_id", "arch", "macs", "flops", "params", "latency_ms",
           "latency_p90_ms", "latency_setting", "val_accuracy", "within_budget",
           "train_seconds", "kd", "spec"]


def _state(t: optuna.trial.FrozenTrial) -> str:
    if t.state == TrialState.COMPLETE:
        return "trained" if t.user_attrs.get("trained") else "infeasible"
    if t.state == TrialState.FAIL:
        return "interrupted" if t.user_attrs.get("interrupted") else "failed"
    return t.state.name.lower()


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    rows = []
    for t in study.get_trials(deepcopy=False):
        spec = t.user_attrs.get("spec")
        cost = t.user_attrs.get("cost", {})
        budget = t.constraints.get("budget")
        rows.append({
            "trial": t.number, "state": _state(t), "spec_id": t.user_attrs.get("spec_id"),
            "arch": describe(spec) if spec else None,
            "macs": cost.get("macs"), "flops": cost.get("flops"), "params": cost.get("params"),
            "latency_ms": cost.get("latency_ms"), "latency_p90_ms": cost.get("latency_p90_ms"),
            "latency_setting": cost.get("latency_setting"),
            "val_accuracy": t.user_attrs.get("val_accuracy"),
            "within_budget": None if budget is None else bool(budget <= 0),
            "train_seconds": t.user_attrs.get("train_seconds"), "kd": t.user_attrs.get("kd"),
            "spec": json.dumps(spec, sort_keys=True) if spec else None,
        })
    return pd.DataFrame(rows, columns=COLUMNS)


def references_frame(study: optuna.Study) -> pd.DataFrame:
    """Hand-designed students trained with the study's brief recipe (``--references``)."""
    rows = [{"name": name, "arch": describe(r["spec"]), **{k: r["cost"].get(k) for k in
            ("macs", "flops", "params", "latency_ms", "latency_p90_ms")},
             "val_accuracy": r["val_accuracy"], "within_budget": r["within_budget"],
             "train_seconds": r["train_seconds"], "kd": r["kd"]}
            for name, r in study.user_attrs.get("references", {}).items()]
    return pd.DataFrame(rows, columns=["name", "arch", "macs", "flops", "params", "latency_ms",
                                       "latency_p90_ms", "val_accuracy", "within_budget",
                                       "train_seconds", "kd"])


def front_frame(df: pd.DataFrame, cost: str = "macs") -> pd.DataFrame:
    """Trained, within-budget trials on the Pareto front of accuracy versus ``cost`` (a
    column: macs, params or latency_ms), cheapest first, with a ``knee`` flag."""
    ok = df[(df.state == "trained") & df.within_budget.eq(True)].copy()
    ok = ok[ok[cost].notna()]
    if ok.empty:
        ok["knee"] = []
        return ok
    ok = ok[pareto_mask(ok.val_accuracy.to_numpy(), ok[cost].to_numpy())]
    ok = ok.sort_values([cost, "val_accuracy"], ascending=[True, False]).reset_index(drop=True)
    k = knee_index(ok.val_accuracy.to_numpy(), ok[cost].to_numpy())
    ok["knee"] = [i == k for i in range(len(ok))]
    return ok


def pick_trial(study: optuna.Study, pick: str, cost: str = "macs") -> int:
    """Trial number for ``knee`` or ``best`` (most accurate within budget)."""
    front = front_frame(trials_frame(study), cost)
    if front.empty:
        from kdnas.errors import KdnasError

        raise KdnasError(f"study {study.study_name!r} has no trained trial within budget yet")
    if pick == "best":
        return int(front.loc[front.val_accuracy.idxmax(), "trial"])
    return int(front.loc[front.knee.idxmax(), "trial"])


def export_command(cfg: SearchConfig, trial: int | None = None) -> str:
    """The command that exports a trial of this study (the knee when ``trial`` is None)."""
    which = "--pick knee" if trial is None else f"--trial {trial}"
    workdir = "" if cfg.workdir == "runs" else f" --workdir {cfg.workdir}"
    return f"kdnas export --study {cfg.study} {which}{workdir}"


def summary(study: optuna.Study, cfg: SearchConfig, df: pd.DataFrame | None = None) -> dict:
    """The study in figures; ``df`` is its :func:`trials_frame` when the caller has it."""
    df = trials_frame(study) if df is None else df
    cost = cfg.cost_columns[0]
    front = front_frame(df, cost)
    budget = cfg.budget_obj()
    ref_cost = (budget.limit if budget.metric == cost
                else float(df[cost].max() or 1) * 1.1)
    hv = hypervolume(front.val_accuracy.to_numpy(), front[cost].to_numpy(), ref_acc=0.0,
                     ref_cost=ref_cost) if not front.empty else 0.0
    counts = df.state.value_counts().to_dict()
    return {
        "study": cfg.study, "budget": cfg.budget, "budget_described": budget.describe(),
        "teacher": cfg.teacher, "data": cfg.data,
        "teacher_val_accuracy": study.user_attrs.get("teacher_val_accuracy"),
        "trials_by_state": {k: int(v) for k, v in counts.items()},
        "trained_over_budget": int(((df.state == "trained") &
                                    df.within_budget.eq(False)).sum()),
        "front_size": len(front),
        "best_val_accuracy": None if front.empty else float(front.val_accuracy.max()),
        "knee_trial": None if front.empty else int(front.loc[front.knee.idxmax(), "trial"]),
        "front_cost": cost,
        "hypervolume": hv, "hypervolume_reference": {"val_accuracy": 0.0, cost: ref_cost},
        "search_seconds": float(df.train_seconds.fillna(0).sum()),
        "wall_seconds": _wall_seconds(study),
        "macs_latency_spearman": macs_latency_spearman(df),
    }


COST_NAMES = {"macs": "MACs", "params": "params", "latency_ms": "latency"}


def hypervolume_text(info: dict) -> str:
    """The hypervolume with its reference point, in words."""
    cost = info["front_cost"]
    ref = info["hypervolume_reference"][cost]
    ref_text = f"{ref:.3g} ms" if cost == "latency_ms" else fmt_count(ref)
    return (f"{info['hypervolume']:.4f} (area dominated in accuracy x {COST_NAMES[cost]}; "
            f"accuracy from 0, {COST_NAMES[cost]} up to the reference {ref_text}, in units of "
            "it; 1.0 would be 100% at no cost)")


def _wall_seconds(study: optuna.Study) -> float:
    times = [(t.datetime_start, t.datetime_complete) for t in study.get_trials(deepcopy=False)
             if t.datetime_start and t.datetime_complete]
    if not times:
        return 0.0
    return (max(c for _, c in times) - min(s for s, _ in times)).total_seconds()


def macs_latency_spearman(df: pd.DataFrame) -> float | None:
    """Rank correlation of MACs and measured latency over all costed candidates: how well
    MACs predict latency on this machine (1.0 = same order)."""
    ok = df[["macs", "latency_ms"]].dropna()
    if len(ok) < 3 or ok.macs.nunique() < 2 or ok.latency_ms.nunique() < 2:
        return None
    ranks = ok.rank()
    return float(np.corrcoef(ranks.macs, ranks.latency_ms)[0, 1])


def write_report(study: optuna.Study, cfg: SearchConfig, out_dir: Path | None = None) -> Path:
    out = Path(out_dir or cfg.report_dir)
    out.mkdir(parents=True, exist_ok=True)
    df = trials_frame(study)
    front = front_frame(df, cfg.cost_columns[0])
    df.to_csv(out / "trials.csv", index=False)
    front.to_csv(out / "pareto.csv", index=False)
    info = summary(study, cfg, df)
    (out / "summary.json").write_text(json.dumps(info, indent=2))
    (out / "pareto.md").write_text(_markdown(front, info, cfg))
    refs = references_frame(study)
    (out / "report.json").write_text(json.dumps({
        "summary": info, "pareto": json.loads(front.to_json(orient="records")),
        "trials": json.loads(df.to_json(orient="records")),
        "references": json.loads(refs.to_json(orient="records"))}, indent=1))
    _plot(df, front, info, cfg, out / "pareto.png", refs=refs)
    if df.latency_ms.notna().any():
        _plot(df, front, info, cfg, out / "pareto_latency.png", x="latency_ms", refs=refs)
    from kdnas.report_html import write_html

    write_html(out, df, front, info, cfg, refs)
    return out


def fmt_value(v, spec: str = ".3g") -> str:
    """A number for a table cell; empty when missing (None or NaN)."""
    return "" if v is None or pd.isna(v) else format(v, spec)


def _markdown(front: pd.DataFrame, info: dict, cfg: SearchConfig) -> str:
    lines = [f"# Study {cfg.study}: accuracy versus MACs", "",
             f"Budget: {info['budget']} = {info['budget_described']}. MACs are "
             "multiply-accumulates at batch 1 (fvcore); FLOPs = 2 x MACs.", ""]
    t = info.get("teacher_val_accuracy")
    if t is not None:
        lines += [f"Teacher validation accuracy: {100 * t:.2f}%", ""]
    counts = ", ".join(f"{v} {k}" for k, v in sorted(info["trials_by_state"].items()))
    lines += [f"Trials: {counts}. Pareto front: {info['front_size']} students; hypervolume "
              f"{hypervolume_text(info)}.", ""]
    if front.empty:
        return "\n".join(lines + ["No trained student within budget yet.", ""])
    lines += ["| rank | trial | architecture | val acc | MACs | FLOPs | params | latency ms "
              "(p50/p90) | train s | export |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    order = front.sort_values("val_accuracy", ascending=False)
    for rank, (_, r) in enumerate(order.iterrows(), 1):
        knee = " (knee)" if r.knee else ""
        lines.append(
            f"| {rank} | {int(r.trial)}{knee} | {r.arch} | {100 * r.val_accuracy:.2f}% | "
            f"{fmt_count(r.macs)} | {fmt_count(r.flops)} | {fmt_count(r.params)} | "
            f"{fmt_value(r.latency_ms)}/{fmt_value(r.latency_p90_ms)} | "
            f"{fmt_value(r.train_seconds, '.0f')} | "
            f"`{export_command(cfg, int(r.trial))}` |")
    setting = front.latency_setting.dropna()
    if len(setting):
        lines += ["", f"Latency measured on this machine: {setting.iloc[0]}."]
    return "\n".join(lines + [""])


def _plot(df: pd.DataFrame, front: pd.DataFrame, info: dict, cfg: SearchConfig,
          path: Path, x: str = "macs", refs: pd.DataFrame | None = None) -> None:
    """Accuracy against MACs (or latency): dominated points grey, the front in blue, the knee
    circled, candidates over budget marked, the budget and the teacher drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    trained = df[df.state == "trained"]
    infeasible = df[df.state == "infeasible"]
    scale = 1e6 if x == "macs" else 1.0
    ax.scatter(trained[x] / scale, 100 * trained.val_accuracy, s=22, c="#b0b0b0",
               label="trained (dominated)", zorder=2)
    if not front.empty:
        shown = front.sort_values(x)
        ax.plot(shown[x] / scale, 100 * shown.val_accuracy,
                "-o" if x == info["front_cost"] else "o",
                c="#1f77b4", ms=6, zorder=3,
                label=f"Pareto front (accuracy vs {COST_NAMES[info['front_cost']]})")
        k = front[front.knee]
        if not k.empty:
            r = k.iloc[0]
            ax.scatter([r[x] / scale], [100 * r.val_accuracy], s=160, facecolors="none",
                       edgecolors="#d62728", linewidths=2, zorder=4,
                       label=f"knee: trial {int(r.trial)}")
    if not infeasible.empty:
        lo = 100 * float(trained.val_accuracy.min()) if len(trained) else 0.0
        ax.scatter(infeasible[x] / scale, np.full(len(infeasible), lo), marker="x",
                   c="#ff7f0e", s=24, label="over budget (not trained)", zorder=2)
    if refs is not None and not refs.empty and refs[x].notna().all():
        ax.scatter(refs[x] / scale, 100 * refs.val_accuracy, marker="D", c="black", s=30,
                   zorder=4, label="hand-designed, same recipe")
        for _, r in refs.iterrows():
            ax.annotate(r["name"], (r[x] / scale, 100 * r.val_accuracy), fontsize=8,
                        xytext=(4, 4), textcoords="offset points")
    budget = cfg.budget_obj()
    if budget.metric == x:
        ax.axvline(budget.limit / scale, ls="--", c="#d62728", lw=1,
                   label=f"budget {budget.describe()}")
    t = info.get("teacher_val_accuracy")
    if t is not None:
        ax.axhline(100 * t, ls=":", c="#2ca02c", lw=1, label=f"teacher {100 * t:.1f}%")
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter

    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.tick_params(axis="x", which="minor", labelsize=7)
    if x == "macs":
        ax.set_xlabel("MACs (millions, batch 1; FLOPs = 2 x MACs)")
    else:
        setting = df.latency_setting.dropna()
        ax.set_xlabel("latency, median ms" + (f" ({setting.iloc[0]})" if len(setting) else ""))
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"{cfg.study}: accuracy vs {'MACs' if x == 'macs' else 'latency'}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
