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

from kdnas.targets import shown

from benchmarks import across_families as af
from benchmarks import rank_signals as rs
from benchmarks.rank_signals import set_table
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


def score_set(ctx, cands: list[dict], prefix: str, data, results: Results) -> None:
    """The training-free signals of every candidate of a set at the brief arms'
    initialisation (seed PROXY_SEED), each with its seconds, under ``signals[prefix]``."""
    import torch

    from kdnas.distill.candidate import init_seed
    from kdnas.distill.signals import score_all
    from search_spaces import get_space

    for i, c in enumerate(cands):
        if c["id"] in results.runs("signals").get(prefix, {}):
            continue
        spec = spec_of(c, data)
        space = get_space(spec["space"])
        torch.manual_seed(init_seed(PROXY_SEED, 1000 + i))
        scores = score_all(space.build(spec), data, teacher=ctx.teacher)
        results.put(prefix, {c["id"]: scores}, "signals")
        print(f"{c['arch']} {prefix} signals: " + ", ".join(
            f"{k} {v['value']:.3g} ({v['seconds']:.2f} s)" for k, v in scores.items()),
            flush=True)


# ---- figures -------------------------------------------------------------------------------

def summarise(res: dict) -> dict:
    """Per set: each brief arm's pooled and within-family tau against the truth, the truth's
    seed tau and spread, the noise families; the development runs' final accuracies against
    part B's (the same seed, initialisation and batches)."""
    out = {}
    frozen = res.get("frozen")
    for which in ("dev", "fresh"):
        t = set_table(res, which)
        if t["candidates"]:
            out[which] = af.summarise(t)
            if res.get("signals", {}).get(which) and (which == "dev" or frozen):
                out[which]["signals"] = rs.taus(rs.table(res, which), frozen)
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
    sig = s.get("signals", {})
    complete = s.get("truth_complete", 0) == len(res.get("fresh_candidates", [])) > 0
    dec = rs.decisions(sig, complete and bool(res.get("frozen_at")) and bool(sig))
    chosen = sig.get(dec.get("ranker") or "", {})
    return {"fresh": {"brief_tau": sig.get("brief_dkd_ls", {}).get("tau_pooled"),
                      "kendall_tau_pooled": chosen.get("tau_pooled"),
                      "cost_vs_brief": chosen.get("cost_vs_brief"),
                      "truth_complete": s.get("truth_complete", 0)},
            "frozen_at": res.get("frozen_at"), **dec,
            "target": {"kendall_tau_pooled": 0.8, "cost_vs_brief": 1.5},
            "protocol": "docs/evidence/rank_fresh.md"}


def freeze(res: dict) -> dict:
    """Fix every signal's formula and fitted parameters (the mix, fitted on the development
    set) at the checked-out commit, which must hold this code unchanged; refused once the
    fresh truth's first seed is complete, as the protocol says."""
    import subprocess

    if res.get("frozen"):
        raise SystemExit(f"already frozen at {res.get('frozen_at')}")
    first = res.get("runs", {}).get(f"fresh/truth/s{TRUTH_SEEDS[0]}", {})
    if len(first) >= len(res.get("fresh_candidates", [])) > 0:
        raise SystemExit("the fresh truth's first seed is complete: too late to freeze")
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "kdnas", "benchmarks"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout
    if dirty.strip():
        raise SystemExit("commit the signals' code first: the freeze names a commit\n" + dirty)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout.strip()
    return {**res, "frozen": rs.freeze(rs.table(res, "dev")), "frozen_at": head}


def figures(res: dict) -> dict:
    if res.get("fresh_candidates"):
        res["summary"] = summarise(res)
        res["rank"] = rank_keys(res)
    return res


def write_markdown(path: Path, res: dict) -> None:
    f2 = _f2
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
        lines += signal_lines(s.get("signals"), fams, which, res.get("frozen"))
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
    lines += decision_lines(res)
    path.write_text("\n".join(lines) + "\n")


def _f2(v) -> str:
    return "-" if v is None or v != v else f"{v:.2f}"


def _ci(v) -> str:
    return "" if not v else f" [{v[0]:.2f}, {v[1]:.2f}]"


def signal_lines(sig: dict | None, fams: list[str], which: str, frozen: dict | None
                 ) -> list[str]:
    """Each signal's tau table, and on the development set the mix as fitted there."""
    if not sig:
        return []
    lines = [("Signals (tuned on this set: in-sample figures)" if which == "dev" else
              "Signals (frozen before this set's truth was complete)") + ": Kendall tau "
             "against the truth with a bootstrap 95% interval over candidates; the difference "
             "from brief dkd-ls's tau is a tie where its interval holds 0.", "",
             "| signal | n | tau pooled | minus brief dkd-ls | " + " | ".join(
                 f"within {f}" for f in fams) + " | cost vs brief |",
             "| --- | --- | --- | --- | " + " | ".join("---" for _ in fams) + " | --- |"]
    for name, v in sig.items():
        if not v["over"]:
            continue
        d = None if name == "brief_dkd_ls" else v["diff_vs_brief_ci95"]
        tie = "" if name == "brief_dkd_ls" or not d else (
            " (tie)" if d[0] <= 0 <= d[1] else " (better)" if d[0] > 0 else " (worse)")
        lines.append(f"| {name} | {v['over']} | {_f2(v['tau_pooled'])}{_ci(v['ci95'])} | "
                     f"{_ci(d).strip() or '-'}{tie} | " + " | ".join(
                         _f2(v["tau_within"].get(f)) for f in fams)
                     + " | " + ("-" if v["cost_vs_brief"] is None
                                else f"{v['cost_vs_brief']:.3g}x") + " |")
    lines.append("")
    if which == "dev" and frozen:
        m = frozen["mix"]
        loo = ", ".join(f"{k} {v:.2f}" for k, v in frozen["mix_loo_tau"].items())
        lines += [f"The mix (frozen): ridge regression (penalty {m['ridge']}) of the truth on "
                  f"the standardised {', '.join(m['features'])} and one offset per family, "
                  f"chosen among {frozen['mixes_tried']} by the leave-one-out pooled tau on "
                  f"this set ({loo}).", ""]
    return lines


def decision_lines(res: dict) -> list[str]:
    r = res.get("rank", {})
    frozen = (f"Signals frozen at {r['frozen_at']}." if r.get("frozen_at")
              else "No signal is frozen yet.")
    if not r.get("decision"):
        return [frozen + " No decision is taken yet: the protocol scores the signals once, "
                "after the fresh truth is complete."]
    f, t = r["fresh"], r["target"]
    why = "" if r["decision"].startswith("adopt") else (
        " (no learning-curve, training-free or mixed signal beat brief dkd-ls's fresh pooled "
        f"tau, {_f2(f['brief_tau'])}, by more than 0.1 at no more than 1.5x its cost)")
    return [frozen, "", f"Decision 1 (the ranker): {r['decision']}{why}.", "",
            f"Decision 2 (features): {r['features_decision']}.", "",
            f"The search ranks with {r['ranker']}: fresh pooled tau "
            f"{shown(f['kendall_tau_pooled'], '>=', t['kendall_tau_pooled'])} at "
            f"a cost of {shown(f['cost_vs_brief'], '<=', t['cost_vs_brief'])} times the "
            f"brief dkd-ls recipe's (brief dkd-ls {_f2(f['brief_tau'])})."]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_setup_args(ap, out="rank_fresh.json")
    ap.add_argument("--band", default="4.4,5.5", help="the fresh set's MACs band, millions")
    ap.add_argument("--table", type=Path, default=TABLE, help="the development set")
    ap.add_argument("--steps", type=int, default=None, help="brief steps (default 400)")
    ap.add_argument("--phase", choices=("all", "truth", "signals"), default="all",
                    help="truth: only the fresh truth (a second process; runs are claimed); "
                    "signals: only the training-free signals of both sets")
    ap.add_argument("--summarise", action="store_true")
    ap.add_argument("--freeze", action="store_true", help="fix the signals and the mix "
                    "(fitted on the development set) at the checked-out commit")
    args = ap.parse_args(argv)
    results = Results(args.out, figures,
                      lambda r: write_markdown(args.out.with_suffix(".md"), r))
    if args.summarise or args.freeze:
        results.update(freeze if args.freeze else lambda d: d)
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
    if args.phase == "signals":
        for which in ("dev", "fresh"):
            score_set(ctx, res[f"{which}_candidates"], which, data, results)
        return
    if args.phase == "all":
        run_set(ctx, base, res["dev_candidates"], DEV_METHODS, "dev", data, work, results)
        run_set(ctx, base, res["fresh_candidates"], FRESH_METHODS, "fresh", data, work, results)
        drop_caches(work / "teacher_cache", "brief arms")
    run_truth(dataclasses.replace(ctx, cache_root=work / "truth_cache"), base,
              res["fresh_candidates"], data, work, results)


if __name__ == "__main__":
    main()
