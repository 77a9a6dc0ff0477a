"""Where the search's proposals go, without training: the share at or above half the budget
and the families among them, with the sampler's coverage (the default) and without it.

For each budget (the demo's, resnet8's 12.5M, the user's 50M) and sampler seed, a study over
``--space all`` proposes candidates as ``kdnas search`` does (the budget-aware sampler, its
start-up phase then TPE), told a stand-in objective instead of a trained accuracy
(:func:`benchmarks.space_coverage.propose`). Writes ``reports/search_coverage.json`` and a
page beside it.

    python -m benchmarks.search_coverage [--proposals 30] [--seeds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from collections import Counter
from pathlib import Path

import optuna

from benchmarks.space_coverage import propose
from kdnas.core.budget import parse_budget

ROOT = Path(__file__).resolve().parents[1]
# budget, input shape (channels, size): the demo's digits are 8x8 grey
BUDGETS = (("0.8MFLOPs", (1, 8)), ("12.5MMACs", (3, 32)), ("50MFLOPs", (3, 32)))
TARGET_UPPER_HALF = 0.4  # at 50M, the target


def summary(rows: list[tuple[str, float]], limit: float) -> dict:
    fit = [(f, m) for f, m in rows if m <= limit]
    upper = [f for f, m in fit if m >= limit / 2]
    macs = sorted(m for _, m in fit)
    q = statistics.quantiles(macs, n=4) if len(macs) > 1 else [macs[0]] * 3
    return {"proposals": len(rows), "fit": len(fit),
            "upper_half_share": len(upper) / max(1, len(fit)),
            "families": dict(Counter(f for f, _ in fit)),
            "families_upper_half": dict(Counter(upper)),
            "macs_quartiles": [round(v) for v in q]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--proposals", type=int, default=30, help="per study (default 30, the "
                    "claim's search)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "search_coverage.json")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t0 = time.perf_counter()
    res = {"command": f"python -m benchmarks.search_coverage --proposals {args.proposals} "
                      f"--seeds {args.seeds}", "space": "all", "budgets": {}}
    for budget, (channels, size) in BUDGETS:
        limit = parse_budget(budget).limit
        entry = {}
        for name, on in (("before", False), ("after", True)):
            rows = []
            for seed in range(args.seeds):
                rows += propose("all", budget, args.proposals, seed=seed, coverage=on,
                                channels=channels, size=size)[0]
            entry[name] = summary(rows, limit)
            print(budget, name, json.dumps(entry[name]), flush=True)
        res["budgets"][budget] = entry
    at50 = res["budgets"]["50MFLOPs"]["after"]
    res["coverage"] = {"upper_half_share": at50["upper_half_share"],
                       "upper_half_share_before":
                           res["budgets"]["50MFLOPs"]["before"]["upper_half_share"],
                       "families": sorted(at50["families_upper_half"]),
                       "target_upper_half_share": TARGET_UPPER_HALF,
                       "met": at50["upper_half_share"] >= TARGET_UPPER_HALF
                       and len(at50["families_upper_half"]) == 3}
    res["seconds"] = round(time.perf_counter() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    page(res, args.out.with_suffix(".md"))
    print(f"written to {args.out}")


def page(res: dict, path: Path) -> None:
    c = res["coverage"]
    lines = ["# Where the search's proposals go", "",
             f"`{res['command']}`: a study over `--space all` per budget and sampler seed, "
             "proposing as `kdnas search` does (budget-aware sampler: start-up draws, then "
             "TPE), told a stand-in objective (maximise log params, minimise MACs) instead of "
             "training. Before: draws where they fall; after: the sampler's coverage "
             "(kdnas.search.sampler.Coverage, the default).", "",
             f"At 50M MACs the share of fitting proposals at or above half the budget is "
             f"**{c['upper_half_share']:.2f}** (before {c['upper_half_share_before']:.2f}; "
             f"target at least {c['target_upper_half_share']}), with "
             f"{', '.join(c['families']) or 'no family'} among them (target: all three): "
             f"**{'met' if c['met'] else 'not met'}**.", "",
             "| budget | sampler | fit / proposed | upper-half share | MACs quartiles "
             "(fitting) | families (fitting) | families (upper half) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for budget, entry in res["budgets"].items():
        for name, s in entry.items():
            q = " / ".join(f"{v / 1e6:.2f}M" for v in s["macs_quartiles"])
            fams, upper = (", ".join(f"{k} {v}" for k, v in sorted(s[key].items()))
                           for key in ("families", "families_upper_half"))
            lines.append(f"| {budget} | {name} | {s['fit']} / {s['proposals']} | "
                         f"{s['upper_half_share']:.2f} | {q} | {fams} | {upper} |")
    lines += ["", f"Wall time {res['seconds']:.0f} s.", ""]
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
