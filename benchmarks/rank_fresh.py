"""Ranking across families at brief cost, proven on a fresh set: the protocol
docs/evidence/rank_fresh.md, committed before its runs. This module runs it and records every
raw result as it comes in reports/rank_fresh.json (figures in reports/rank_fresh.md).

    OMP_NUM_THREADS=1 python -m benchmarks.rank_fresh            # resumes where it stopped
    OMP_NUM_THREADS=1 python -m benchmarks.rank_fresh --phase truth   # a second process
    python -m benchmarks.rank_fresh --summarise                  # figures from the json only
    python -m benchmarks.rank_fresh --data digits --steps 8 --band 0.1,0.6 --work /tmp/rf \\
        --out /tmp/rf.json                                       # a tiny run

Development set: the across-families table's 18 candidates and truth; its dkd-ls brief runs
again with the corrected 10-point curve. Fresh set: 18 candidates drawn with seed 39 in
another MACs band, brief runs of dkd-ls, FitNets and dkd-ls-hints (seed 2), and their own
truth (3,200 steps of FitNets, seeds 1 and 0).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks import across_families as af
from benchmarks.common import (
    ROOT,
    Results,
    add_setup_args,
    check_teacher,
    drop_caches,
    prepared,
    run_one,
    spec_of,
    truth_recipe,
)

PROXY_SEED = 2  # the brief arms' initialisation and data order (the rungs' and part B's)
TRUTH_SEEDS = (1, 0)  # in this order
DRAW_SEED = 39
QUOTA = (("resnet", {"block": "basic"}, 3), ("resnet", {"block": "bottleneck"}, 3),
         ("mobilenet", None, 6), ("shufflenet", None, 6))
DEV_METHODS = ("dkd-ls",)
FRESH_METHODS = ("dkd-ls", "fitnets", "dkd-ls-hints")
TRUTH_METHOD = "fitnets"
CURVE_POINTS = 10
CURVE_IMAGES = 1000
TABLE = ROOT / "reports" / "across_families.json"


def draw_fresh(data, lo: float, hi: float, seed: int = DRAW_SEED, quota=QUOTA) -> list[dict]:
    """The fresh set: each family's quota drawn in [lo, hi] by the sampler's own code, with
    one random state in the protocol's order, none a repeat."""
    from kdnas.bench.workload import draw_in_band
    from kdnas.cost import count_params
    from search_spaces import build, describe

    rng, out = np.random.RandomState(seed), []
    for family, fixed, n in quota:
        for c in draw_in_band(family, data, lo, hi, n, rng, fixed=fixed):
            if c["id"] in {o["id"] for o in out}:
                raise SystemExit(f"the draw repeated {c['id']}")
            spec = c["spec"]
            out.append({**c, "arch": describe(spec), "params_count": count_params(build(spec))})
    return out


def brief_recipe(base, method: str):
    """The brief recipe with ``method`` and the protocol's 10-point curve on 1,000 images."""
    return dataclasses.replace(base, kd=method, eval_every=max(1, base.steps // CURVE_POINTS),
                               eval_limit=CURVE_IMAGES)


def run_set(ctx, base, cands: list[dict], methods, prefix: str, data, work: Path,
            results: Results) -> None:
    """Every candidate of a set with every brief method (seed PROXY_SEED), method by method."""
    from kdnas.distill.candidate import init_seed

    for method in methods:
        key = f"{prefix}/brief-{method}/s{PROXY_SEED}"
        for i, c in enumerate(cands):
            if c["id"] not in results.runs().get(key, {}):
                run_one(ctx, brief_recipe(base, method), c, spec_of(c, data),
                        init_seed(PROXY_SEED, 1000 + i), work, key, results)


def run_truth(ctx, base, cands: list[dict], data, work: Path, results: Results) -> None:
    """The fresh truth, seed by seed; a seed's teacher cache goes once its runs are in."""
    from kdnas.distill.candidate import init_seed

    for s in TRUTH_SEEDS:
        recipe = truth_recipe(dataclasses.replace(base, kd=TRUTH_METHOD), s)
        key = f"fresh/truth/s{s}"
        for i, c in enumerate(cands):
            if c["id"] not in results.runs().get(key, {}):
                run_one(ctx, recipe, c, spec_of(c, data), init_seed(s, 1000 + i), work, key,
                        results)
        if all(c["id"] in results.runs().get(key, {}) for c in cands):
            drop_caches(ctx.cache_for(recipe).dir, f"truth seed {s}")


# ---- figures -------------------------------------------------------------------------------

def set_table(res: dict, which: str) -> dict:
    """One set as the across-families summary reads it: candidates, runs (without the set's
    prefix) and, for the development set, the table's truth as ``source_truth``."""
    runs = {k.split("/", 1)[1]: v for k, v in res.get("runs", {}).items()
            if k.startswith(which + "/")}
    out = {"candidates": res.get(f"{which}_candidates", []), "runs": runs}
    if which == "dev":
        out["source_truth"] = res.get("dev_truth", {})
    return out


def summarise(res: dict) -> dict:
    """Per set: each brief arm's pooled and within-family tau against the truth, the truth's
    seed tau and spread, the noise families; the development runs' final accuracies against
    part B's (the same seed, initialisation and batches)."""
    out = {}
    for which in ("dev", "fresh"):
        t = set_table(res, which)
        if t["candidates"]:
            out[which] = af.summarise(t)
    repeat = res.get("dev_part_b", {})
    mine = res.get("runs", {}).get(f"dev/brief-dkd-ls/s{PROXY_SEED}", {})
    both = [cid for cid in mine if cid in repeat]
    out["dev_repeats_part_b"] = {
        "candidates": len(both),
        "max_abs_difference": max((abs(mine[c]["val_accuracy"] - repeat[c]) for c in both),
                                  default=None)}
    return out


def rank_keys(res: dict) -> dict:
    """The protocol's headline keys, as far as the runs go (no decision before the signals
    are frozen and the fresh truth is complete)."""
    s = res.get("summary", {}).get("fresh", {})
    arm = s.get("arms", {}).get(f"brief-dkd-ls/s{PROXY_SEED}", {})
    complete = s.get("truth_complete", 0) == len(res.get("fresh_candidates", [])) > 0
    return {"fresh": {"brief_tau": arm.get("tau_pooled"),
                      "truth_complete": s.get("truth_complete", 0)},
            "frozen_at": res.get("frozen_at"),
            "decision": None if not complete or not res.get("frozen_at") else "pending",
            "protocol": "docs/evidence/rank_fresh.md"}


def figures(res: dict) -> dict:
    if res.get("fresh_candidates"):
        res["summary"] = summarise(res)
        res["rank"] = rank_keys(res)
    return res


def write_markdown(path: Path, res: dict) -> None:
    def f2(v):
        return "-" if v is None else f"{v:.2f}"

    lines = ["# Ranking across families at brief cost: development and fresh sets", "",
             "Protocol: [docs/evidence/rank_fresh.md](../docs/evidence/rank_fresh.md) "
             "(committed before the runs). Raw results: `reports/rank_fresh.json`.", ""]
    for which, title in (("dev", "Development set (the old 18; signals are tuned here)"),
                         ("fresh", "Fresh set (scored once, after the signals are frozen)")):
        s = res.get("summary", {}).get(which)
        if not s:
            continue
        fams = sorted(s["truth_range_by_family"])
        spread = s["truth_seed_spread"]
        lines += [f"## {title}", "",
                  f"{len(res.get(f'{which}_candidates', []))} candidates; truth complete for "
                  f"{s['truth_complete']}; truth seed tau {f2(s['truth_seed_tau'])}, seed "
                  f"spread {f2(None if spread is None else 100 * spread)} points; noise "
                  f"families: {', '.join(s['noise_families']) or 'none'}.", "",
                  "| arm | candidates | tau pooled | " + " | ".join(
                      f"tau within {f}" for f in fams) + " |",
                  "| --- | --- | --- | " + " | ".join("---" for _ in fams) + " |"]
        for key, a in s["arms"].items():
            lines.append(f"| {key} | {a['candidates']} | {f2(a['tau_pooled'])} (n={a['over']})"
                         " | " + " | ".join(f2(a["tau_within"].get(f)) for f in fams) + " |")
        lines.append("")
        t = set_table(res, which)
        t_mean, _ = af.truth(t)
        table = af.run_table(t)
        lines += ["| candidate | family | MACs | truth | " + " | ".join(table) + " |",
                  "| --- | --- | --- | --- | " + " | ".join("---" for _ in table) + " |"]
        for c in t["candidates"]:
            tv = t_mean.get(c["id"])
            cells = [table[k].get(c["id"]) for k in table]
            lines.append(f"| {c['arch']} | {c['space']} | {c['macs'] / 1e6:.2f}M | "
                         + ("-" if tv is None or tv != tv else f"{100 * tv:.1f}") + " | "
                         + " | ".join("-" if v is None or v != v else f"{100 * v:.1f}"
                                      for v in cells) + " |")
        lines.append("")
    rep = res.get("summary", {}).get("dev_repeats_part_b", {})
    if rep.get("candidates"):
        lines += [f"The development set's dkd-ls runs repeat part B's (same seed, "
                  f"initialisation and batches) on {rep['candidates']} candidates: largest "
                  f"difference in final accuracy {100 * rep['max_abs_difference']:.2f} points.",
                  ""]
    lines += ["No signal is frozen and no decision is taken yet: the protocol scores the "
              "signals once, after the fresh truth is complete." if not res.get("rank", {}).get(
                  "decision") else f"Decision: {res['rank']['decision']}."]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_setup_args(ap, out="rank_fresh.json")
    ap.add_argument("--band", default="4.4,5.5", help="the fresh set's MACs band, millions")
    ap.add_argument("--table", type=Path, default=TABLE, help="the development set")
    ap.add_argument("--steps", type=int, default=None, help="brief steps (default 400)")
    ap.add_argument("--phase", choices=("all", "truth"), default="all", help="truth: only the "
                    "fresh truth (a second process; runs are claimed)")
    ap.add_argument("--summarise", action="store_true")
    args = ap.parse_args(argv)
    results = Results(args.out, figures,
                      lambda r: write_markdown(args.out.with_suffix(".md"), r))
    if args.summarise:
        results.update(lambda d: d)
        return
    from kdnas.search.costs import train_context

    table = json.loads(args.table.read_text()) if args.table.exists() and not (
        args.data or args.per_class) else {"candidates": []}
    lo, hi = (float(x) * 1e6 for x in args.band.split(","))
    cfg, teacher, data, base = prepared(args, study="rank", budget_macs=hi, steps=args.steps,
                                        seed=PROXY_SEED, kd="dkd-ls")
    check_teacher(results.read(), teacher.digest, Path(cfg.teacher))
    if table["candidates"]:
        check_teacher(table, teacher.digest, Path(cfg.teacher))

    def setup(d: dict) -> dict:
        if "fresh_candidates" not in d:
            d["fresh_candidates"] = draw_fresh(data, lo, hi)
        _, t_seeds = af.truth(table) if table["candidates"] else (None, pd.DataFrame())
        part_b = json.loads((ROOT / "reports" / "distill_methods.json").read_text()).get(
            "runs", {}).get(f"brief-dkd-ls/s{PROXY_SEED}", {}) if table["candidates"] else {}
        return {**d, "dev_candidates": table["candidates"],
                "dev_truth": {f"long/s{s}": {c: float(v) for c, v in t_seeds[s].dropna().items()}
                              for s in t_seeds},
                "dev_part_b": {c: r["val_accuracy"] for c, r in part_b.items()},
                "setup": {"data": cfg.data, "teacher_digest": teacher.digest,
                          "band_macs": [lo, hi], "brief_steps": base.steps,
                          "proxy_seed": PROXY_SEED, "truth_seeds": list(TRUTH_SEEDS),
                          "draw_seed": DRAW_SEED, "curve_points": CURVE_POINTS,
                          "curve_images": CURVE_IMAGES, "truth_method": TRUTH_METHOD,
                          "argv": sys.argv[1:] if argv is None else argv}}
    res = results.update(setup)
    work = args.work / "rank_fresh"
    ctx = dataclasses.replace(train_context(cfg, teacher, data),
                              cache_root=work / "teacher_cache", cache_features=True)
    if args.phase == "all":
        run_set(ctx, base, res["dev_candidates"], DEV_METHODS, "dev", data, work, results)
        run_set(ctx, base, res["fresh_candidates"], FRESH_METHODS, "fresh", data, work, results)
        drop_caches(work / "teacher_cache", "brief arms")
    run_truth(dataclasses.replace(ctx, cache_root=work / "truth_cache"), base,
              res["fresh_candidates"], data, work, results)


if __name__ == "__main__":
    main()
