"""The evidence's headline keys in one file, ``reports/headlines.json``, assembled by one
function (:func:`assemble`) from each experiment's own results file. No experiment writes
another's file: each keeps its raw runs and figures in its own JSON, and this file is derived
from them (``python -m benchmarks.headlines`` writes it again; every results file written
under reports/ does so too).

    section        source (reports/)          what
    proxy          search_quality.json        the proxy study: brief recipes against the truth
    claim          claim.json                 the found student against resnet8, ResNets only
    claim_across   claim_across.json          the same budget searched across families
    claim_shipped  claim_shipped.json         the same, with the defaults as shipped
    across         across_families.json       rungs against the truth across families, and
                   search_replay.json         .replay / .live: search against search
    methods        distill_methods.json       the distillation methods' evidence
    rank           rank_fresh.json            ranking at brief cost on a fresh set
    deploy         deploy.json                students that ship: int8 on ONNX Runtime
"""

from __future__ import annotations

import json
import os
from pathlib import Path

REPORTS = Path(__file__).resolve().parents[1] / "reports"
FILE = "headlines.json"
SOURCES = ("search_quality.json", "claim.json", "claim_across.json", "claim_shipped.json",
           "across_families.json", "search_replay.json", "distill_methods.json",
           "rank_fresh.json", "deploy.json")


def _read(reports: Path, name: str) -> dict:
    path = reports / name
    return json.loads(path.read_text()) if path.exists() else {}


def _replay(res: dict) -> dict | None:
    """across.replay: the primary budget's picks of the replayed searches."""
    if "budgets" not in res:
        return None
    budget = res["primary_budget_B"]
    return {"primary_budget_B": budget, "primary": res["primary"],
            "pick_truth_mean": {name: r.get("pick_truth_mean") for name, r in
                                res["budgets"][str(budget)].items()},
            "complete": res["complete"]}


def _live(live: dict) -> dict | None:
    """across.live: the live searches' confirmation of the replay."""
    if not live:
        return None
    return {"margin_all_minus_resnet": live.get("margin_all_minus_resnet"),
            "verdict": live.get("verdict"), "wall_seconds": live.get("wall_seconds"),
            "pick_truth": {a: v.get("pick_truth") for a, v in live.get("arms", {}).items()}}


def assemble(reports: Path = REPORTS) -> dict:
    """Every section whose source exists, from the sources alone."""
    replay = _read(reports, "search_replay.json")
    across = dict(_read(reports, "across_families.json").get("across", {}))
    for key, value in (("replay", _replay(replay)), ("live", _live(replay.get("live", {})))):
        if value is not None:
            across[key] = value
    out = {"proxy": _read(reports, "search_quality.json").get("proxy"),
           "claim": _read(reports, "claim.json").get("claim"),
           "claim_across": _read(reports, "claim_across.json").get("claim_across"),
           "claim_shipped": _read(reports, "claim_shipped.json").get("claim_shipped"),
           "across": across or None,
           "methods": _read(reports, "distill_methods.json").get("methods"),
           "rank": _read(reports, "rank_fresh.json").get("rank"),
           "deploy": _read(reports, "deploy.json").get("deploy")}
    return {k: v for k, v in out.items() if v is not None}


def write(reports: Path = REPORTS) -> dict:
    """Assemble and write ``reports/headlines.json`` (atomically: a reader never sees half)."""
    new = assemble(reports)
    tmp = reports / f"{FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(new, indent=1) + "\n")
    tmp.replace(reports / FILE)
    return new


def refresh(path: Path) -> None:
    """Write the headlines again if ``path`` (a results file just written) is one of their
    sources under reports/ (a test's or a tiny run's file elsewhere changes nothing)."""
    if Path(path).resolve().parent == REPORTS.resolve() and Path(path).name in SOURCES:
        write()


def main() -> None:
    new = write()
    print(f"{REPORTS / FILE}: " + ", ".join(sorted(new)))


if __name__ == "__main__":
    main()
