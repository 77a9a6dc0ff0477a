"""The rungs of a study with ``--rungs``: each candidate's accuracy at every rung it reached,
where the promotions were decided, and the time spent per rung (read from the records)."""

from __future__ import annotations

import html

from kdnas.core.budget import fmt_count
from kdnas.core.records import StudyRecord
from search_spaces import describe


def rung_summary(record: StudyRecord) -> dict | None:
    """Per rung (a multiple of the brief steps): how many candidates reached it and the
    seconds spent training them there; None for a study without rungs."""
    trained = [t for t in record.trials if t.trained and t.rung is not None]
    if not trained:
        return None
    first = min(t.rung for t in trained)
    reached = {first: len(trained)}
    seconds = {first: sum(t.train_seconds or 0.0 for t in trained)}
    for t in trained:
        for f, r in t.rungs.items():
            reached[f] = reached.get(f, 0) + 1
            seconds[f] = seconds.get(f, 0.0) + float(r.get("seconds") or 0.0)
    return {"reached": {str(f): reached[f] for f in sorted(reached)},
            "seconds": {str(f): round(seconds[f], 1) for f in sorted(seconds)},
            "top": max(reached)}


def _rows(record: StudyRecord) -> tuple[list[int], list[list[str]]]:
    factors = sorted({f for t in record.trials for f in t.rungs} | {
        t.rung for t in record.trials if t.trained and t.rung is not None and not t.rungs})
    rows = []
    promoted = [t for t in record.trials if t.trained and t.rungs]
    for t in sorted(promoted, key=lambda t: (-t.rung, -(t.val_accuracy or 0))):
        accs = {factors[0]: t.brief_accuracy, **{f: r["val_accuracy"]
                                                 for f, r in t.rungs.items()}}
        rows.append([str(t.number), describe(t.spec), t.spec.get("space", "?"),
                     fmt_count(t.cost.get("macs")),
                     *("" if accs.get(f) is None else f"{100 * accs[f]:.2f}%"
                       for f in factors)])
    return factors, rows


def rung_lines(record: StudyRecord, info: dict) -> list[str]:
    """pareto.md's section on the rungs (empty without them)."""
    s = info.get("rungs")
    if not s:
        return []
    factors, rows = _rows(record)
    lines = ["", "## Rungs: decisions at the fidelity where they hold", "",
             "Every candidate trained briefly (rung 1x); the best of each cost band (Pareto rank "
             "over accuracy and cost, at least one per family at the first rung) trained on "
             "from their weights to the next rung. The front above is read at the top rung "
             f"({s['top']}x).", "",
             "| rung | candidates | training seconds |", "| --- | --- | --- |"]
    lines += [f"| {f}x | {s['reached'][f]} | {s['seconds'][f]:.0f} |" for f in s["reached"]]
    lines += ["", "| trial | architecture | family | MACs | "
              + " | ".join(f"{f}x" for f in factors) + " |",
              "| --- | --- | --- | --- | " + " | ".join("---" for _ in factors) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def rung_html(record: StudyRecord, info: dict) -> list[str]:
    """report.html's section on the rungs (empty without them)."""
    s = info.get("rungs")
    if not s:
        return []
    e = html.escape
    factors, rows = _rows(record)
    parts = ["<h2>Rungs</h2><p>Every candidate trained briefly (1x); the best of each cost band "
             "trained on from their weights to the next rung. The front is read at the top rung "
             f"({s['top']}x). Candidates and training seconds per rung: "
             + ", ".join(f"{f}x: {s['reached'][f]} in {s['seconds'][f]:.0f} s"
                         for f in s["reached"]) + ".</p>",
             "<table><tr><th>trial</th><th class='l'>architecture</th><th>family</th>"
             "<th>MACs</th>" + "".join(f"<th>{f}x</th>" for f in factors) + "</tr>"]
    parts += ["<tr>" + "".join(f"<td{' class=l' if i == 1 else ''}>{e(c)}</td>"
                               for i, c in enumerate(r)) + "</tr>" for r in rows]
    return parts + ["</table>"]
