"""The front drawn for people (PNG, via matplotlib): accuracy against MACs, latency or
training step time, and the learning curves of the brief training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from kdnas.core.records import StudyRecord
from kdnas.core.settings import SearchConfig
from kdnas.report.frames import COST_NAMES, subset_curve


def plot_front(df: pd.DataFrame, front: pd.DataFrame, info: dict, cfg: SearchConfig,
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
        if "val_lo" in shown and shown.val_lo.notna().all():  # the validation set's error
            ax.errorbar(shown[x] / scale, 100 * shown.val_accuracy, fmt="none", ecolor="#1f77b4",
                        elinewidth=1, capsize=2, zorder=3,
                        yerr=[100 * (shown.val_accuracy - shown.val_lo),
                              100 * (shown.val_hi - shown.val_accuracy)])
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
    if refs is not None and not refs.empty and x in refs and refs[x].notna().all():
        ax.scatter(refs[x] / scale, 100 * refs.val_accuracy, marker="D", c="black", s=30,
                   zorder=4, label="hand-designed, same recipe")
        for _, r in refs.iterrows():
            ax.annotate(r["name"], (r[x] / scale, 100 * r.val_accuracy), fontsize=8,
                        xytext=(4, 4), textcoords="offset points")
    budget = cfg.budget_value
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
    elif x == "latency_ms":
        setting = df.latency_setting.dropna()
        ax.set_xlabel("latency, median ms" + (f" ({setting.iloc[0]})" if len(setting) else ""))
    else:
        ax.set_xlabel(f"training step, ms (batch {cfg.batch_size}, measured before training)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"{cfg.study}: accuracy vs {COST_NAMES[x]}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_curves(record: StudyRecord, front: pd.DataFrame, info: dict, path: Path) -> bool:
    """Each trained student's learning curve during its brief training (validation-subset
    accuracy by step): the front's in colour, the knee thick, the rest grey. Curves still
    rising at the right edge, or crossing there, are rankings longer training may change.
    Returns False (and draws nothing) when no trial recorded a curve."""
    curves = {t.number: subset_curve(t.learning_curve) for t in record.trials if t.trained}
    curves = {n: pts for n, pts in curves.items() if len(pts) >= 2}
    if not curves:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    on_front = [int(t) for t in front.sort_values("val_accuracy", ascending=False).trial]
    knee = info.get("knee_trial")
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for n, pts in curves.items():
        if n not in on_front:
            ax.plot([p["step"] for p in pts], [100 * p["val_subset_accuracy"] for p in pts],
                    c="#c8c8c8", lw=1, zorder=1)
    colours = plt.get_cmap("tab10")
    for i, n in enumerate(x for x in on_front if x in curves):
        pts = curves[n]
        ax.plot([p["step"] for p in pts], [100 * p["val_subset_accuracy"] for p in pts],
                "-o", ms=3, lw=3 if n == knee else 1.5, c=colours(i % 10), zorder=3,
                label=f"trial {n}" + (" (knee)" if n == knee else ""))
    t = info.get("teacher_val_accuracy")
    if t is not None:
        ax.axhline(100 * t, ls=":", c="#2ca02c", lw=1, label=f"teacher {100 * t:.1f}%")
    images = next(iter(curves.values()))[-1].get("val_images")
    ax.set_xlabel("training step")
    ax.set_ylabel("validation accuracy (%)" + (f", first {images} images" if images else ""))
    ax.set_title(f"{record.name}: learning curves (front in colour, others grey)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right", ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True
