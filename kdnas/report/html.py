"""report.html: one self-contained page (images embedded, no scripts, no network) that says
which student to ship and why."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import pandas as pd

from kdnas.core.budget import fmt_count
from kdnas.core.files import write_text
from kdnas.report.frames import (
    COST_NAMES,
    acc_text,
    at_once_text,
    curve_text,
    export_command,
    fmt_value,
    hypervolume_text,
    noise_text,
    time_text,
)

CSS = """
body{font:15px/1.45 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.8em}
table{border-collapse:collapse;font-size:13px;width:100%}
th,td{border-bottom:1px solid #ddd;padding:4px 6px;text-align:right;white-space:nowrap}
td.l{white-space:normal;overflow-wrap:anywhere}td.l code{word-break:break-all}
pre{white-space:pre-wrap;overflow-wrap:anywhere}
th{background:#f4f4f4}td.l,th.l{text-align:left}tr.knee{background:#fff4e0}
code{font-size:12px;background:#f4f4f4;padding:1px 3px}
.grid{display:flex;gap:1em;flex-wrap:wrap}.grid img{max-width:540px;width:100%}
.muted{color:#777}dl{display:grid;grid-template-columns:max-content auto;gap:2px 1em}
dt{color:#555}dd{margin:0}
.warn{background:#fff0f0;border-left:4px solid #d62728;padding:6px 10px}
"""


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _pct(v) -> str:
    return "" if v is None or pd.isna(v) else f"{100 * v:.2f}%"


def _headline(out: Path, front: pd.DataFrame, info: dict, cfg) -> list[str]:
    e = html.escape
    knee = info.get("knee_trial")
    parts = []
    if knee is not None:
        r = front[front.trial == knee].iloc[0]
        parts.append(
            f"<p><b>Knee of the front: trial {knee}</b>, {e(str(r.arch))}: "
            f"{_pct(r.val_accuracy)} validation accuracy at {fmt_count(r.macs)} MACs "
            f"({fmt_count(r.flops)} FLOPs), {fmt_count(r.params)} params"
            + (f", {r.latency_ms:.3g} ms" if pd.notna(r.latency_ms) else "")
            + f". Export it: <code>{e(export_command(cfg, knee))}</code></p>")
    else:
        parts.append("<p>No trained student within budget yet.</p>")
    if info.get("caveat"):
        parts.append(f"<p class='warn'><b>Read this first.</b> {e(info['caveat'])}</p>")
    if info.get("against_references"):
        parts.append(f"<p><b>Against hand design.</b> "
                     f"{e(info['against_references']['sentence'])}</p>")
    if info.get("noise"):
        parts.append(f"<p>{e(noise_text(info['noise']).capitalize())}.</p>")
    imgs = [_img(out / "pareto.png", "accuracy versus MACs")]
    if (out / "pareto_latency.png").exists():
        imgs.append(_img(out / "pareto_latency.png", "accuracy versus latency"))
    if "train_step_ms" in cfg.cost_columns and (out / "pareto_train_time.png").exists():
        imgs.append(_img(out / "pareto_train_time.png", "accuracy versus training step time"))
    if (out / "learning_curves.png").exists():
        imgs.append(_img(out / "learning_curves.png", "learning curves of the brief training"))
    parts.append("<div class='grid'>" + "".join(imgs) + "</div>")
    if curve_text(info.get("curves")):
        parts.append(f"<p>{e(curve_text(info['curves']).capitalize())}.</p>")
    parts.append("<p class='muted'>Grey: trained but dominated. Blue: the Pareto front of "
                 f"accuracy versus {COST_NAMES[info['front_cost']]}. Orange crosses: proposals "
                 "over budget, never trained. Red dashes: the budget. Green dots: the teacher.</p>")

    return parts


def _front_table(front: pd.DataFrame, info: dict, cfg) -> list[str]:
    e = html.escape
    teacher_acc = info.get("teacher_val_accuracy")
    parts = ["<h2>The front</h2><p class='muted'>Val acc with its 95% interval (the validation "
             "set's sampling error); <i>tie</i>: within that error of the knee, which is the "
             "cheapest of its ties.</p><table><tr><th>rank</th><th>trial</th>"
                 "<th class='l'>architecture</th><th>val acc</th><th>gap to teacher</th>"
                 "<th>MACs</th><th>FLOPs</th><th>params</th><th>latency p50 / p90 ms</th>"
                 "<th class='l'>distillation</th><th>train s</th><th class='l'>export</th></tr>"]
    for rank, (_, r) in enumerate(front.sort_values("val_accuracy", ascending=False)
                                  .iterrows(), 1):
        gap = "" if teacher_acc is None else f"{100 * (teacher_acc - r.val_accuracy):+.2f}"
        parts.append(
            f"<tr class='{'knee' if r.knee else ''}'><td>{rank}</td><td>{int(r.trial)}"
            f"{' (knee)' if r.knee else ''}</td><td class='l'>{e(str(r.arch))}</td>"
            f"<td>{e(acc_text(r))}</td><td>{gap}</td><td>{fmt_count(r.macs)}</td>"
            f"<td>{fmt_count(r.flops)}</td><td>{fmt_count(r.params)}</td>"
            f"<td>{fmt_value(r.latency_ms)} / {fmt_value(r.latency_p90_ms)}</td>"
            f"<td class='l'>{e(str(r.kd or ''))}</td>"
            f"<td>{fmt_value(r.train_seconds, '.0f')}</td>"
            f"<td class='l'><code>{e(export_command(cfg, int(r.trial)))}</code></td></tr>")
    parts.append("</table>")

    return parts


def _references_table(refs: pd.DataFrame | None) -> list[str]:
    e = html.escape
    parts: list[str] = []
    if refs is not None and not refs.empty:
        parts.append("<h2>Hand-designed students, same brief recipe</h2><table><tr>"
                     "<th class='l'>name</th><th class='l'>architecture</th><th>val acc</th>"
                     "<th>MACs</th><th>params</th><th>latency ms</th><th>within budget</th>"
                     "</tr>")
        for _, r in refs.iterrows():
            parts.append(f"<tr><td class='l'>{e(r['name'])}</td><td class='l'>{e(r.arch)}</td>"
                         f"<td>{_pct(r.val_accuracy)}"
                         f"{'' if not r.did_not_train else ' (' + e(r.did_not_train) + ')'}"
                         f"</td><td>{fmt_count(r.macs)}</td>"
                         f"<td>{fmt_count(r.params)}</td><td>{fmt_value(r.latency_ms)}</td>"
                         f"<td>{'yes' if r.within_budget else 'no'}</td></tr>")
        parts.append("</table>")

    return parts


DEPLOY_HEAD = ("<th>fp32 test acc</th><th>int8 test acc</th><th>fp32 p50</th>"
               "<th>int8 p50</th>")


def _deploy_cells(d: dict | None) -> str:
    """A shipped student's fp32 and int8 ONNX files side by side (``--int8``): test accuracy
    with its 95% interval, ONNX Runtime p50 latency; dashes without ``--int8``."""
    if not d:
        return "<td>-</td>" * 4
    f, q = d["fp32"], d["int8"]

    def acc(m):
        return (f"{_pct(m['accuracy'])} <span class='muted'>({_pct(m['accuracy_lo'])}-"
                f"{_pct(m['accuracy_hi'])})</span>")
    def warn(flag):
        return " class='warn'" if flag else ""
    pr = d.get("paired")
    p = (f" <span class='muted'>McNemar p {pr['mcnemar_p']:.2g}</span>" if pr else "")
    return (f"<td>{acc(f)}</td><td{warn(d.get('lost'))}>{acc(q)}{p}</td>"
            f"<td>{f['latency_p50_ms']:.3g} ms</td><td{warn(d.get('slower'))}>"
            f"{q['latency_p50_ms']:.3g} ms ({d['speedup_p50']:.2f}x)</td>")


def _deploy_note(rows: list[dict]) -> list[str]:
    settings = sorted({d["int8"]["latency_setting"] for d in rows if d.get("int8")})
    if not settings:
        return ["<p class='muted'>int8: export with <code>--int8</code> to see the quantized "
                "student's accuracy and ONNX Runtime latency here.</p>"]
    warns = [d["int8"]["warning"] for d in rows if d.get("int8") and d["int8"].get("warning")]
    return [f"<p class='muted'>fp32 and int8: the ONNX files on ONNX Runtime, test split "
            f"(95% Wilson intervals); latency {html.escape('; '.join(settings))}, on the "
            "machine that exported them.</p>",
            *(f"<p class='warn'>{html.escape(w)}</p>" for w in warns)]


def _exported_table(exported: dict) -> list[str]:
    if not exported:
        return []
    e = html.escape
    parts = ["<h2>Exported students</h2><table><tr><th>trial</th><th>MACs</th><th>params</th>"
             f"<th>val acc</th>{DEPLOY_HEAD}<th class='l'>folder</th></tr>"]
    for folder, d in sorted(exported.items()):
        parts.append(f"<tr><td>{d['trial']}</td><td>{fmt_count(d['macs'])}</td>"
                     f"<td>{fmt_count(d['params'])}</td><td>{_pct(d['val_accuracy'])}</td>"
                     f"{_deploy_cells(d.get('int8'))}<td class='l'>{e(folder)}</td></tr>")
    return [*parts, "</table>", *_deploy_note(list(exported.values()))]


def _distilled_table(distilled: dict) -> list[str]:
    e = html.escape
    parts: list[str] = []
    if distilled:
        parts.append("<h2>Fully distilled students</h2><table><tr><th>student</th>"
                     "<th>seed</th><th>epochs</th>"
                     "<th>search val acc</th><th>val acc</th><th>test acc</th>"
                     f"{DEPLOY_HEAD}<th class='l'>distillation</th><th class='l'>files</th>"
                     "</tr>")
        for _, d in sorted(distilled.items()):
            files = ", ".join(Path(p).name for p in d.get("exports", {}).values())
            who = (f"reference {e(d['reference'])}" if d.get("reference")
                   else f"trial {d.get('trial')}")
            parts.append(f"<tr><td>{who}</td><td>{d['recipe'].get('seed', '')}</td>"
                         f"<td>{d['epochs']:g}</td>"
                         f"<td>{_pct(d.get('search_val_accuracy'))}</td>"
                         f"<td>{_pct(d['val_accuracy'])}</td><td>{_pct(d['test_accuracy'])}</td>"
                         f"{_deploy_cells(d.get('int8'))}<td class='l'>{e(d['recipe']['kd'])}"
                         f"</td><td class='l'>{e(files)}</td></tr>")
        parts.append("</table>")
        parts += _deploy_note(list(distilled.values()))

    return parts


def _facts(df: pd.DataFrame, info: dict, cfg) -> list[str]:
    e = html.escape
    teacher_acc = info.get("teacher_val_accuracy")
    parts: list[str] = []
    rho = info.get("macs_latency_spearman")
    setting = df.latency_setting.dropna()
    counts = ", ".join(f"{v} {k}" for k, v in sorted(info["trials_by_state"].items()))
    facts = {
        "budget": f"{info['budget']} = {info['budget_described']}",
        "teacher": f"{info.get('teacher')}" + (f" ({_pct(teacher_acc)} val)"
                                               if teacher_acc is not None else ""),
        "data": str(info.get("data")),
        "trials": counts,
        "hypervolume": hypervolume_text(info),
        "search time": f"{info['wall_seconds'] / 60:.1f} min wall, "
                       f"{info['search_seconds'] / 60:.1f} min training",
        "time per trial": time_text(info),
        "candidates trained at once": at_once_text(info.get("trained_at_once")),
        "MACs predict latency": ("not enough measurements" if rho is None else
                                 f"Spearman rank correlation {rho:.2f} over "
                                 f"{int(df[['macs', 'latency_ms']].dropna().shape[0])} "
                                 "candidates" + (f" ({setting.iloc[0]})" if len(setting)
                                                 else "")),
    }
    parts.append("<h2>Study</h2><dl>" + "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>"
                                                for k, v in facts.items()) + "</dl>")
    manifest = cfg.study_dir / "manifest.json"
    if manifest.exists():
        parts.append("<h2>Manifest</h2><pre>" + e(json.dumps(json.loads(manifest.read_text()),
                                                             indent=1)) + "</pre>")
    return parts


def write_html(out: Path, df: pd.DataFrame, front: pd.DataFrame, info: dict, cfg,
               refs: pd.DataFrame | None = None, distilled: dict | None = None,
               rungs: list[str] | None = None, exported: dict | None = None) -> Path:
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>kdnas: {e(cfg.study)}"
             f"</title><style>{CSS}</style></head><body>",
             f"<h1>Study {e(cfg.study)}: which student to ship</h1>",
             *_headline(out, front, info, cfg), *_front_table(front, info, cfg),
             *(rungs or []), *_references_table(refs), *_distilled_table(distilled or {}),
             *_exported_table(exported or {}),
             *_facts(df, info, cfg)]
    parts.append("<p class='muted'>MACs: multiply-accumulates at batch 1 (torch's flop "
                 "counter); FLOPs = 2 x MACs. Accuracy: validation split carved from the "
                 "training data, after brief search training, for ranking; train the chosen "
                 "student fully with <code>kdnas distill</code>. The study database opens in "
                 "optuna-dashboard.</p>")
    parts.append("</body></html>")
    return write_text(out / "report.html", "\n".join(parts))
