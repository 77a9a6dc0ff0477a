"""Reports people read, from a study's records: ``trials.csv``, ``pareto.csv``, ``pareto.md``,
``pareto.png`` (and ``pareto_latency.png``), ``learning_curves.png``, ``summary.json``,
``report.json`` and the self-contained ``report.html``. Tables in :mod:`.frames`, the
front's arithmetic in :mod:`kdnas.front`, plots in :mod:`.plots`, Markdown in :mod:`.markdown`,
HTML in :mod:`.html`."""

from __future__ import annotations

import json
from pathlib import Path

from kdnas.core.files import write_text
from kdnas.core.records import StudyRecord
from kdnas.core.settings import SearchConfig
from kdnas.front import pick_trial
from kdnas.report.frames import (
    export_command,
    front_frame,
    references_frame,
    summary,
    trials_frame,
)
from kdnas.report.rungs import rung_html, rung_lines
from kdnas.report.html import write_html
from kdnas.report.markdown import front_markdown
from kdnas.report.plots import plot_curves, plot_front

__all__ = ["export_command", "front_frame", "pick_trial", "references_frame", "summary",
           "trials_frame", "write_report"]


def write_report(record: StudyRecord, cfg: SearchConfig, out_dir: Path | None = None) -> Path:
    """Write every report file of a study into ``out_dir`` (default ``reports/<study>``)."""
    out = Path(out_dir or cfg.report_dir)
    out.mkdir(parents=True, exist_ok=True)
    df = trials_frame(record)
    front = front_frame(df, cfg.cost_columns)
    df.to_csv(out / "trials.csv", index=False)
    front.to_csv(out / "pareto.csv", index=False)
    info = summary(record, cfg, df)
    write_text(out / "summary.json", json.dumps(info, indent=2))
    write_text(out / "pareto.md", front_markdown(front, info, cfg)
               + "".join(f"{line}\n" for line in rung_lines(record, info)))
    refs = references_frame(record)
    write_text(out / "report.json", json.dumps({
        "summary": info, "pareto": json.loads(front.to_json(orient="records")),
        "trials": json.loads(df.to_json(orient="records")),
        "references": json.loads(refs.to_json(orient="records"))}, indent=1))
    plot_front(df, front, info, cfg, out / "pareto.png", refs=refs)
    if df.latency_ms.notna().any():
        plot_front(df, front, info, cfg, out / "pareto_latency.png", x="latency_ms", refs=refs)
    if "train_step_ms" in cfg.cost_columns:
        plot_front(df, front, info, cfg, out / "pareto_train_time.png", x="train_step_ms",
                   refs=refs)
    (out / "learning_curves.png").unlink(missing_ok=True)
    plot_curves(record, front, info, out / "learning_curves.png")
    write_html(out, df, front, info, cfg, refs, record.distilled, rung_html(record, info),
               record.exported)
    return out
