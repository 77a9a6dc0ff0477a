"""Search against search at the same wall time, replayed on the across-families table.

The protocol is docs/evidence/search_replay.md, committed before the runs. Every candidate of
reports/across_families.json was trained once through rungs 1x, 4x and 8x and has its ground
truth; a replay draws the order in which a search would meet the candidates, trains (on the
table) as many as its wall time allows and picks, with the promotion rule kdnas runs
(:func:`kdnas.search.promotion.promote`, called as :func:`kdnas.search.rungs.train_rungs`
calls it). No training here: seconds on the table, replays in a second.

    python -m benchmarks.search_replay                    # reports/search_replay.{json,md}
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks import headlines
from benchmarks.across_families import PROXY_SEED, truth
from benchmarks.common import ROOT
from kdnas.front import hypervolume, pareto_mask
from kdnas.search.promotion import RungResult, promote
from kdnas.search.rungs import COST_BANDS

REPORTS = ROOT / "reports"
SEEDS = 200
BUDGETS = (12, 24, 36)  # in units of B, the mean seconds of rung 1x
PRIMARY = 24
ETA = 3.0  # the default --promote-eta


@dataclass(frozen=True)
class Strategy:
    name: str
    families: tuple[str, ...] | None  # None: every family of the table
    rungs: tuple[int, ...]


STRATEGIES = (Strategy("resnet-brief", ("resnet",), (1,)),
              Strategy("all-brief", None, (1,)),
              Strategy("all-rungs148", None, (1, 4, 8)),
              Strategy("all-rungs14", None, (1, 4)))


@dataclass(frozen=True)
class Table:
    """Per candidate: family, MACs, accuracy and seconds at each rung, truth."""

    ids: list[str]
    family: dict[str, str]
    macs: dict[str, float]
    acc: dict[int, dict[str, float]]
    seconds: dict[int, dict[str, float]]
    truth: dict[str, float]
    truth_spread: float
    budget: float


def load_table(res: dict, rungs=(1, 4, 8)) -> Table:
    """The candidates with every rung and a truth (others are left out, and counted)."""
    mean, seeds = truth(res)
    runs = res.get("runs", {})
    acc = {f: {k: r["val_accuracy"] for k, r in runs.get(f"rung{f}x/s{PROXY_SEED}", {}).items()}
           for f in rungs}
    sec = {f: {k: r["seconds"] for k, r in runs.get(f"rung{f}x/s{PROXY_SEED}", {}).items()}
           for f in rungs}
    ids = [c["id"] for c in res["candidates"]
           if all(c["id"] in acc[f] for f in rungs) and not math.isnan(mean.get(c["id"],
                                                                                   math.nan))]
    both = seeds.dropna()
    return Table(ids=ids, family={c["id"]: c["space"] for c in res["candidates"]},
                 macs={c["id"]: float(c["macs"]) for c in res["candidates"]},
                 acc=acc, seconds=sec, truth={k: float(mean[k]) for k in ids},
                 truth_spread=float((both.iloc[:, 0] - both.iloc[:, 1]).abs().mean()),
                 budget=float(res["setup"]["band_macs"][1]))


def _best(t: Table, ids, acc: dict[str, float]) -> str:
    return min(ids, key=lambda k: (-acc[k], t.macs[k], k))


def run_search(t: Table, s: Strategy, order: list[str], n: int
               ) -> tuple[str, list[str], float, int]:
    """One replayed search: its first ``n`` candidates of ``order`` (in its families) at rung
    1x, then promotions up ``s.rungs``; returns (pick, its front, seconds spent, how many
    reached the top rung)."""
    pool = [k for k in order if s.families is None or t.family[k] in s.families][:n]
    spent = sum(t.seconds[1][k] for k in pool)
    here = pool
    for k in range(1, len(s.rungs)):
        lo, hi = s.rungs[k - 1], s.rungs[k]
        results = [RungResult(c, t.family[c], t.macs[c], t.acc[lo][c]) for c in here]
        here = promote(results, eta=ETA, bands=COST_BANDS, family_quota=1 if k == 1 else 0)
        spent += sum(t.seconds[hi][c] for c in here)
    top = t.acc[s.rungs[-1]]
    mask = pareto_mask(np.array([top[c] for c in here]), np.array([[t.macs[c]] for c in here]))
    front = [c for c, m in zip(here, mask, strict=True) if m]
    return _best(t, here, top), front, spent, len(here)


def orders(t: Table, seeds: int = SEEDS) -> list[list[str]]:
    return [[t.ids[i] for i in np.random.RandomState(s).permutation(len(t.ids))]
            for s in range(seeds)]


def trials_for(t: Table, s: Strategy, budget_s: float, draws: list[list[str]]) -> int:
    """The largest ``--trials`` whose mean cost over ``draws`` is at most ``budget_s`` (0 when
    not even one fits); at most the strategy's pool."""
    size = sum(1 for k in t.ids if s.families is None or t.family[k] in s.families)
    best = 0
    for n in range(1, size + 1):
        if np.mean([run_search(t, s, o, n)[2] for o in draws]) <= budget_s:
            best = n
    return best


def replay(t: Table, seeds: int = SEEDS, budgets=BUDGETS) -> dict:
    """The protocol's figures for every strategy and budget."""
    draws = orders(t, seeds)
    unit = float(np.mean([t.seconds[1][k] for k in t.ids]))
    best_truth = max(t.truth.values())
    out = {"unit_seconds": unit, "pool": len(t.ids), "best_truth": best_truth,
           "truth_seed_spread": t.truth_spread, "seeds": seeds, "budgets": {}}
    for w in budgets:
        rows = {}
        for s in STRATEGIES:
            n = trials_for(t, s, w * unit, draws)
            if n == 0:
                rows[s.name] = {"trials": 0, "fits": False}
                continue
            picks, hvs, spent, at_top = [], [], [], []
            for o in draws:
                pick, front, sec, top = run_search(t, s, o, n)
                at_top.append(top)
                picks.append(t.truth[pick])
                hvs.append(hypervolume(np.array([t.truth[c] for c in front]),
                                       np.array([[t.macs[c]] for c in front]), ref_acc=0.0,
                                       ref_cost=[t.budget]))
                spent.append(sec)
            p = np.array(picks)
            rows[s.name] = {
                "trials": n, "fits": True,
                "seconds_used_in_B": float(np.mean(spent) / unit),
                "pick_truth_mean": float(p.mean()), "pick_truth_sd": float(p.std(ddof=1)),
                "regret_mean": float(best_truth - p.mean()),
                "share_near_best": float(np.mean(best_truth - p <= t.truth_spread)),
                "hypervolume_mean": float(np.mean(hvs)),
                "reached_top_rung_mean": float(np.mean(at_top))}
        out["budgets"][str(w)] = rows
    out["primary"] = primary(out)
    many = [int(w) for w, rows in out["budgets"].items()
            if rows["all-rungs148"].get("reached_top_rung_mean", 0) > 1]
    out["smallest_budget_promoting_several_to_8x"] = min(many) if many else None
    return out


def primary(out: dict, w: int = PRIMARY) -> dict:
    """all-rungs148 against the two brief searches at budget ``w``, marked tie within the
    truth seed spread."""
    rows = out["budgets"].get(str(w), {})
    mf = rows.get("all-rungs148", {})
    res = {}
    for other in ("resnet-brief", "all-brief"):
        o = rows.get(other, {})
        if not (mf.get("fits") and o.get("fits")):
            res[other] = None
            continue
        d = mf["pick_truth_mean"] - o["pick_truth_mean"]
        res[other] = {"margin": d, "verdict": "tie" if abs(d) < out["truth_seed_spread"]
                      else ("better" if d > 0 else "worse")}
    return res


def write_markdown(path: Path, out: dict, res: dict) -> None:
    pct = lambda v: f"{100 * v:.2f}"  # noqa: E731
    lines = ["# Search against search at the same wall time (replayed)", "",
             "Protocol: [docs/evidence/search_replay.md](../docs/evidence/search_replay.md) "
             "(committed before the runs). Table: `reports/across_families.json`; figures: "
             "`reports/search_replay.json`.", "",
             f"Pool: {out['pool']} of {len(res['candidates'])} candidates with every rung and "
             f"a truth; best truth {pct(out['best_truth'])}%; truth seed spread "
             f"{pct(out['truth_seed_spread'])} points (the tie rule); B = "
             f"{out['unit_seconds']:.0f} s (mean rung-1x seconds); {out['seeds']} search "
             "seeds (orders of the pool) per cell.", ""]
    p = out.get("primary", {})
    for other, v in p.items():
        lines.append(f"- At {PRIMARY}B, all-rungs148 against {other}: " + (
            "does not fit" if v is None else
            f"{v['margin'] * 100:+.2f} points of pick truth: **{v['verdict']}**"))
    w8 = out.get("smallest_budget_promoting_several_to_8x")
    lines.append("- Smallest budget at which all-rungs148 takes more than one candidate to 8x "
                 "on average: " + (f"{w8}B" if w8 else "none of those replayed"))
    lines += ["", "| budget | strategy | trials | time used (B) | pick truth % (mean +- sd) | "
              "regret (points) | share near best | hypervolume under truth | at top rung |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for w, rows in out["budgets"].items():
        for name, r in rows.items():
            if not r["fits"]:
                lines.append(f"| {w}B | {name} | 0 | - | does not fit | - | - | - | - |")
                continue
            lines.append(
                f"| {w}B | {name} | {r['trials']} | {r['seconds_used_in_B']:.1f} | "
                f"{pct(r['pick_truth_mean'])} +- {pct(r['pick_truth_sd'])} | "
                f"{100 * r['regret_mean']:.2f} | {r['share_near_best']:.2f} | "
                f"{r['hypervolume_mean']:.4f} | {r['reached_top_rung_mean']:.1f} |")
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", type=Path, default=REPORTS / "across_families.json")
    ap.add_argument("--out", type=Path, default=REPORTS / "search_replay.json")
    ap.add_argument("--seeds", type=int, default=SEEDS)
    args = ap.parse_args(argv)
    res = json.loads(args.table.read_text())
    t = load_table(res)
    out = {"protocol": "docs/evidence/search_replay.md", **replay(t, args.seeds),
           "primary_budget_B": PRIMARY, "complete": len(t.ids) == len(res["candidates"])}
    live = json.loads(args.out.read_text()).get("live") if args.out.exists() else None
    if live:  # the live confirmation's (benchmarks/search_live.py) results stay
        out["live"] = live
    args.out.write_text(json.dumps(out, indent=1))
    write_markdown(args.out.with_suffix(".md"), out, res)
    if live:
        from benchmarks.search_live import write_section

        write_section(args.out.with_suffix(".md"), live)
    headlines.refresh(args.out)  # across.replay
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
