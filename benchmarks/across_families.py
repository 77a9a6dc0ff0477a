"""Fidelity across families: does training on to longer rungs rank students of different
families the way much longer training does? The protocol is docs/evidence/across_families.md,
committed before the first run; this script runs it and records every raw result as it comes.

    OMP_NUM_THREADS=1 python -m benchmarks.across_families        # resumes where it stopped
    python -m benchmarks.across_families --summarise               # figures from the json only
    python -m benchmarks.across_families --data digits --steps 8 --work /tmp/af --out /tmp/af.json

Candidates: the proxy study's 12 (reports/search_quality.json, 3.2-4.0M MACs) and 6 more drawn
in the same band (3 MobileNetV2, 3 ShuffleNetV2), so each of three families has 6.
Rungs: each candidate is trained with the brief recipe (400 steps) and then trained on, from
its weights, to 4x and 8x the brief steps in all (:func:`kdnas.distill.candidate.climb`),
with seed 2. Ground truth: 8x the brief steps from scratch with seeds 0 and 1 (the proxy
study's `long` runs; the same for the new six), independent of the rungs' seed.
The per-family arm: the first rung again with MobileNetV2 and ShuffleNetV2 at learning rate
0.02 (RepDistiller's ratio, 0.01 against 0.05 for ResNets), ResNets unchanged.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from kdnas.bench.workload import draw_in_band  # the bench's own draw
from kdnas.targets import shown
from benchmarks.common import (
    ROOT,
    Results,
    add_setup_args,
    check_teacher,
    drop_caches,
    prepared,
    result,
    run_one,
    spec_of,
    truth_recipe,
)
from benchmarks.common import progress as progress_line
from benchmarks.search_quality import pick_candidates

PROXY_SEED = 2  # the rungs' seed: initialisation and data order
TRUTH_SEEDS = (0, 1)  # the ground truth's own seeds (the proxy study's `long` runs)
RUNG_FACTORS = (1, 4, 8)  # steps in all at each rung, in brief recipes
FAMILY_LR = {"mobilenet": 0.02, "shufflenet": 0.02}  # the per-family arm's first rung
NEW_PER_FAMILY = {"mobilenet": 3, "shufflenet": 3}  # drawn in the band with seed 1
SOURCE = ROOT / "reports" / "search_quality.json"


def candidates(data, band: tuple[float, float], existing: list[dict], seed: int = 1
               ) -> list[dict]:
    """The proxy study's candidates and NEW_PER_FAMILY more per family, drawn in the same
    band with ``seed`` (none a repeat)."""
    from kdnas.cost import count_params
    from search_spaces import build, describe

    out, taken = [dict(c) for c in existing], {c["id"] for c in existing}
    rng = np.random.RandomState(seed)
    for family, want in NEW_PER_FAMILY.items():
        for c in draw_in_band(family, data, *band, want + len(taken), rng):
            if want and c["id"] not in taken:
                spec = c.pop("spec")
                out.append({**c, "arch": describe(spec), "params_count": count_params(
                    build(spec)), "new": True})
                taken.add(c["id"])
                want -= 1
    return out


def run_rungs(ctx, base, c: dict, index: int, data, work: Path, results: Results) -> None:
    """Candidate ``c`` up every rung not yet recorded, each from the previous rung's weights
    (:func:`kdnas.distill.candidate.climb`); where those weights are lost (a new checkout),
    its rungs are trained again from the first."""
    from kdnas.distill.candidate import climb, init_seed

    keys = {f: f"rung{f}x/s{PROXY_SEED}" for f in RUNG_FACTORS}
    runs = results.runs()

    def have(f: int) -> bool:
        return c["id"] in runs.get(keys[f], {})

    def on_rung(f: int, out, seconds: float) -> None:
        results.put(keys[f], {c["id"]: result(out, seconds)})
        print(f"{c['arch']} rung {f}x ({out.total_steps} steps): "
              f"{100 * out.val_accuracy:.2f}%", flush=True)

    climb(ctx, spec_of(c, data), base, init=init_seed(PROXY_SEED, index), factors=RUNG_FACTORS,
          folder=work / "rungs" / c["id"], have=have, on_rung=on_rung, checkpoints=True,
          progress=lambda f: progress_line(f"{c['arch']} rung {f}x"))


# ---- figures -------------------------------------------------------------------------------

def run_table(res: dict) -> dict[str, pd.Series]:
    out = {}
    for key, runs in res.get("runs", {}).items():
        out[key] = pd.Series({cid: r["val_accuracy"] for cid, r in runs.items()})
    return out


def truth(res: dict) -> tuple[pd.Series, pd.DataFrame]:
    """Each candidate's ground truth (mean over TRUTH_SEEDS, from the proxy study's `long`
    runs or this study's own) and the per-seed table."""
    seeds = {}
    for s in TRUTH_SEEDS:
        own = res.get("runs", {}).get(f"truth/s{s}", {})
        src = res.get("source_truth", {}).get(f"long/s{s}", {})
        seeds[s] = pd.Series({**{k: v for k, v in src.items()},
                              **{k: r["val_accuracy"] for k, r in own.items()}}, dtype=float)
    df = pd.DataFrame(seeds).reindex([c["id"] for c in res["candidates"]])
    return df.mean(axis=1, skipna=False), df


def _tau(a: pd.Series, b: pd.Series) -> tuple[float | None, int]:
    both = pd.concat([a, b], axis=1).dropna()
    if len(both) < 3:
        return None, len(both)
    return float(both.iloc[:, 0].corr(both.iloc[:, 1], method="kendall")), len(both)


def summarise(res: dict) -> dict:
    """The protocol's figures: for each rung and arm, Kendall's tau against the truth pooled
    over every family and within each; the truth's own seed tau and spread; which families'
    truth ranges lie within the truth's seed spread (noise)."""
    fam = pd.Series({c["id"]: c["space"] for c in res["candidates"]})
    t_mean, t_seeds = truth(res)
    full = t_seeds.dropna()
    spread = float((full.max(axis=1) - full.min(axis=1)).mean()) if len(full) >= 2 else None
    seed_tau = _tau(full.iloc[:, 0], full.iloc[:, 1])[0] if len(full) >= 3 else None
    ranges = {f: float(t_mean[ids].max() - t_mean[ids].min())
              for f, ids in fam.groupby(fam).groups.items() if t_mean[ids].notna().sum() >= 2}
    arms = {}
    table = run_table(res)
    for key in [k for k in table if not k.startswith("truth/")]:
        proxy = table[key]
        pooled, n = _tau(proxy, t_mean)
        within = {f: _tau(proxy[proxy.index.isin(ids)], t_mean[ids])[0]
                  for f, ids in fam.groupby(fam).groups.items()}
        arms[key] = {"tau_pooled": pooled, "over": n, "tau_within": within,
                     "candidates": int(proxy.notna().sum())}
    return {"arms": arms, "truth_seed_tau": seed_tau, "truth_seed_spread": spread,
            "truth_range_by_family": ranges,
            "noise_families": sorted(f for f, r in ranges.items()
                                     if spread is not None and r <= spread),
            "truth_complete": int(t_mean.notna().sum())}


TOP_RUNG_TARGET = 0.7  # the protocol's bar for the top rung's pooled tau


def across_keys(res: dict) -> dict:
    """The headline keys (``across.*`` of reports/headlines.json)."""
    s = res["summary"]
    top = f"rung{RUNG_FACTORS[-1]}x/s{PROXY_SEED}"
    first = f"rung{RUNG_FACTORS[0]}x/s{PROXY_SEED}"
    return {"kendall_tau_top_rung": s["arms"].get(top, {}).get("tau_pooled"),
            "kendall_tau_first_rung": s["arms"].get(first, {}).get("tau_pooled"),
            "kendall_tau_by_rung": {k: v["tau_pooled"] for k, v in s["arms"].items()},
            "ground_truth_seed_tau": s["truth_seed_tau"],
            "ground_truth_seed_spread": s["truth_seed_spread"],
            "candidates": len(res["candidates"]),
            "complete": {k: v["candidates"] for k, v in s["arms"].items()},
            "protocol": "docs/evidence/across_families.md"}


def write_markdown(path: Path, res: dict) -> None:
    s = res["summary"]

    def f2(v):
        return "-" if v is None else f"{v:.2f}"
    spread = s["truth_seed_spread"]
    lines = ["# Fidelity across families: rungs against the ground truth", "",
             "Protocol: [docs/evidence/across_families.md](../docs/evidence/across_families.md)"
             " (committed before the runs). Raw results: `reports/across_families.json`.", "",
             f"{len(res['candidates'])} candidates, ground truth complete for "
             f"{s['truth_complete']}; truth seed tau {f2(s['truth_seed_tau'])}, truth seed "
             f"spread {f2(None if spread is None else 100 * spread)}"
             " points. Families whose truth range is inside that spread (noise): "
             f"{', '.join(s['noise_families']) or 'none'}.", "",
             "| arm | candidates | tau pooled across families | " + " | ".join(
                 f"tau within {f}" for f in sorted(s["truth_range_by_family"])) + " |",
             "| --- | --- | --- | " + " | ".join("---" for _ in s["truth_range_by_family"])
             + " |"]
    for key, a in s["arms"].items():
        lines.append(f"| {key} | {a['candidates']} | {f2(a['tau_pooled'])} (n={a['over']}) | "
                     + " | ".join(f2(a["tau_within"].get(f))
                                  for f in sorted(s["truth_range_by_family"])) + " |")
    top = across_keys(res)["kendall_tau_top_rung"]
    lines += ["", f"Headline `across.kendall_tau_top_rung` (rung{RUNG_FACTORS[-1]}x pooled): "
              f"{shown(top, '>=', TOP_RUNG_TARGET)}; the protocol set that bar for the "
              "multi-fidelity search to rest on the top rung."]
    t_mean, _ = truth(res)
    table = run_table(res)
    lines += ["", "| candidate | family | MACs | truth | " + " | ".join(table) + " |",
              "| --- | --- | --- | --- | " + " | ".join("---" for _ in table) + " |"]
    for c in res["candidates"]:
        cells = [table[k].get(c["id"]) for k in table]
        tv = t_mean.get(c["id"])
        lines.append(f"| {c['arch']} | {c['space']} | {c['macs'] / 1e6:.2f}M | "
                     + ("-" if tv is None or tv != tv else f"{100 * tv:.1f}") + " | "
                     + " | ".join("-" if v is None or v != v else f"{100 * v:.1f}"
                                  for v in cells) + " |")
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_setup_args(ap)
    ap.set_defaults(out=Path(__file__).resolve().parents[1] / "reports"
                    / "across_families.json")
    ap.add_argument("--band", default="3.2,4.0", help="MACs band in millions: LO,HI")
    ap.add_argument("--steps", type=int, default=None, help="brief steps (default 400)")
    ap.add_argument("--summarise", action="store_true")
    ap.add_argument("--phase", choices=("all", "truth"), default="all",
                    help="truth: only the ground-truth runs (a second process on the other "
                    "core; runs are claimed, so none is trained twice)")
    ap.add_argument("--source", type=Path, default=SOURCE, help="the proxy study's results "
                    "(its candidates and `long` truth runs)")
    args = ap.parse_args(argv)
    if args.summarise:
        Results(args.out, _figures,
                lambda r: write_markdown(args.out.with_suffix(".md"), r)).update(lambda d: d)
        return

    from kdnas.distill.candidate import init_seed
    from kdnas.search.costs import train_context

    lo, hi = (float(x) * 1e6 for x in args.band.split(","))
    base_cfg, teacher, data, base = prepared(args, study="af", budget_macs=hi, steps=args.steps,
                                             seed=PROXY_SEED)
    results = Results(args.out, _figures, lambda r: write_markdown(args.out.with_suffix(".md"), r))
    res = results.read()
    check_teacher(res, teacher.digest, Path(base_cfg.teacher))
    src = json.loads(args.source.read_text()) if args.source.exists() and not (
        args.data or args.per_class) else {}
    if "candidates" not in res:
        existing = src.get("candidates") or pick_candidates(data, lo, hi, 6, seed=0)
        res["candidates"] = candidates(data, (lo, hi), existing)
    res["source_truth"] = {k: {cid: r["val_accuracy"] for cid, r in v.items()}
                           for k, v in src.get("runs", {}).items() if k.startswith("long/")}
    res["setup"] = {"data": base_cfg.data, "teacher_digest": teacher.digest,
                    "band_macs": [lo, hi], "brief_steps": base.steps,
                    "rungs": list(RUNG_FACTORS), "proxy_seed": PROXY_SEED,
                    "truth_seeds": list(TRUTH_SEEDS), "family_lr": FAMILY_LR,
                    "argv": sys.argv[1:] if argv is None else argv}
    results.update(lambda disk: {**disk, **{k: res[k] for k in (
        "candidates", "source_truth", "setup")}, "runs": disk.get("runs", {})})
    work = args.work / "across"
    ctx = dataclasses.replace(train_context(base_cfg, teacher, data),
                              cache_root=work / "teacher_cache")
    cands = res["candidates"]
    if args.phase == "all":
        for i, c in enumerate(cands):  # the rungs, one by one
            run_rungs(ctx, base, c, 1000 + i, data, work, results)
        drop_caches(work / "teacher_cache", "rungs")
        for i, c in enumerate(cands):  # the per-family arm
            key, lr = f"family_lr/s{PROXY_SEED}", FAMILY_LR.get(c["space"])
            if lr is None:  # unchanged: the first rung's own result
                first = results.runs().get(f"rung{RUNG_FACTORS[0]}x/s{PROXY_SEED}", {})
                if c["id"] in first and c["id"] not in results.runs().get(key, {}):
                    results.put(key, {c["id"]: first[c["id"]]})
                continue
            run_one(ctx, dataclasses.replace(base, lr=lr), c, spec_of(c, data),
                    init_seed(PROXY_SEED, 1000 + i), work, key, results)
    truth_ctx = dataclasses.replace(ctx, cache_root=work / "truth_cache")  # both processes'

    def known(s: int, c: dict) -> bool:
        return c["id"] in res["source_truth"].get(f"long/s{s}", {}) or c["id"] in (
            results.runs().get(f"truth/s{s}", {}))
    for s in reversed(TRUTH_SEEDS):  # the ground truth of the candidates the source lacks
        recipe = truth_recipe(base, s)
        for i, c in enumerate(cands):
            if not known(s, c):
                run_one(truth_ctx, recipe, c, spec_of(c, data), init_seed(s, 1000 + i), work,
                        f"truth/s{s}", results)
        if all(known(s, c) for c in cands):
            drop_caches(truth_ctx.cache_for(recipe).dir, f"truth seed {s}")  # that seed's only


def _figures(res: dict) -> dict:
    if res.get("candidates"):
        res["summary"] = summarise(res)
        res["across"] = across_keys(res)
    return res


if __name__ == "__main__":
    main()
