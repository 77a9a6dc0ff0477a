"""Fidelity across families: does training on to longer rungs rank students of different
families the way much longer training does? The protocol is docs/evidence/across_families.md,
committed before the first run; this script runs it and records every raw result as it comes.

    OMP_NUM_THREADS=1 python benchmarks/across_families.py        # resumes where it stopped
    python benchmarks/across_families.py --summarise               # figures from the json only
    python benchmarks/across_families.py --data digits --steps 8 --work /tmp/af --out /tmp/af.json

Candidates: the proxy study's 12 (reports/search_quality.json, 3.2-4.0M MACs) and 6 more drawn
in the same band (3 MobileNetV2, 3 ShuffleNetV2), so each of three families has 6.
Rungs: each candidate is trained with the brief recipe (400 steps) and then trained on, from
its weights, to 4x and 8x the brief steps in all (:func:`kdnas.distill.candidate.continuation`),
with seed 2. Ground truth: 8x the brief steps from scratch with seeds 0 and 1 (the proxy
study's `long` runs; the same for the new six), independent of the rungs' seed.
The per-family arm: the first rung again with MobileNetV2 and ShuffleNetV2 at learning rate
0.02 (RepDistiller's ratio, 0.01 against 0.05 for ResNets), ResNets unchanged.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_quality import (  # noqa: E402
    add_setup_args,
    check_teacher,
    data_and_teacher,
    pick_candidates,
    update_results,
)

PROXY_SEED = 2  # the rungs' seed: initialisation and data order
TRUTH_SEEDS = (0, 1)  # the ground truth's own seeds (the proxy study's `long` runs)
RUNG_FACTORS = (1, 4, 8)  # steps in all at each rung, in brief recipes
TRUTH_FACTOR = 8
FAMILY_LR = {"mobilenet": 0.02, "shufflenet": 0.02}  # the per-family arm's first rung
NEW_PER_FAMILY = {"mobilenet": 3, "shufflenet": 3}  # drawn in the band with seed 1
SOURCE = Path(__file__).resolve().parents[1] / "reports" / "search_quality.json"


def candidates(data, band: tuple[float, float], existing: list[dict], seed: int = 1
               ) -> list[dict]:
    """The proxy study's candidates and NEW_PER_FAMILY more per family, drawn in the same
    band with ``seed`` (none a repeat)."""
    from kdnas.bench.workload import draw_in_band
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


def _spec(c: dict, data) -> dict:
    """The candidate's spec: its own (a search's pick), or sampled again from its params."""
    from search_spaces import get_space

    if "spec" in c:
        return c["spec"]

    import optuna

    return get_space(c["space"]).sample(optuna.trial.FixedTrial(c["params"]),
                                        in_channels=data.in_channels,
                                        num_classes=data.num_classes,
                                        input_size=data.input_size)


def run_rungs(ctx, base, c: dict, index: int, data, work: Path, record) -> None:
    """Candidate ``c`` through every rung not yet recorded, each from the previous rung's
    weights; where those weights are lost (a new checkout), the candidate's rungs are
    trained again from the first."""
    from kdnas.distill.candidate import continuation, init_seed, save_weights, train_candidate

    folder = work / "rungs" / c["id"]
    keys = [f"rung{f}x/s{PROXY_SEED}" for f in RUNG_FACTORS]
    runs = record("get", None, None)
    done = [c["id"] in runs.get(k, {}) for k in keys]
    if all(done):
        return
    first = done.index(False)
    if first and not (folder / f"{RUNG_FACTORS[first - 1]}x.pt").exists():
        print(f"{c['arch']}: the weights of rung {RUNG_FACTORS[first - 1]}x are gone: "
              "its rungs are trained again from the first", flush=True)
        record("drop", c["id"], None)
        first = 0
    for k in range(first, len(RUNG_FACTORS)):
        steps, prev = RUNG_FACTORS[k] * base.steps, RUNG_FACTORS[k - 1] * base.steps if k else 0
        recipe = continuation(base, done=prev, to=steps) if k else base
        t0 = time.perf_counter()
        out = train_candidate(ctx, _spec(c, data), recipe, init=init_seed(PROXY_SEED, index),
                              start=folder / f"{RUNG_FACTORS[k - 1]}x.pt" if k else None,
                              checkpoint=work / "ckpt" / c["id"] / f"{RUNG_FACTORS[k]}x.pt",
                              progress=_progress(c, f"rung {RUNG_FACTORS[k]}x"))
        save_weights(folder / f"{RUNG_FACTORS[k]}x.pt", out)
        record("put", keys[k], {c["id"]: _result(out, time.perf_counter() - t0)})
        print(f"{c['arch']} rung {RUNG_FACTORS[k]}x ({out.total_steps} steps): "
              f"{100 * out.val_accuracy:.2f}%", flush=True)


def claim(work: Path, key: str, cid: str) -> bool:
    """Claim run ``key`` of candidate ``cid`` for this process (two processes may share the
    ground truth, each on one core); a claim whose process is gone is taken over."""
    import os

    path = work / "claims" / f"{key.replace('/', '-')}-{cid}"
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(path.read_text() or 0)
                os.kill(pid, 0)
                return pid == os.getpid()
            except (ProcessLookupError, ValueError):
                path.unlink(missing_ok=True)  # its process is gone: take it over
            continue
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        return True
    return False


def run_one(ctx, recipe, c: dict, init: int, data, work: Path, key: str, record) -> None:
    """One run from scratch (the ground truth, or the per-family first rung), unless another
    process has claimed it."""
    from kdnas.distill.candidate import train_candidate

    if not claim(work, key, c["id"]):
        print(f"{c['arch']} {key}: another process trains it", flush=True)
        return
    t0 = time.perf_counter()
    out = train_candidate(ctx, _spec(c, data), recipe, init=init,
                          checkpoint=work / "ckpt" / c["id"] / f"{key.replace('/', '-')}.pt",
                          progress=_progress(c, key))
    record("put", key, {c["id"]: _result(out, time.perf_counter() - t0)})
    print(f"{c['arch']} {key}: {100 * out.val_accuracy:.2f}%", flush=True)


def _result(out, seconds: float) -> dict:
    return {"val_accuracy": out.val_accuracy, "steps": out.total_steps,
            "seconds": round(seconds, 1), "curve": out.result.points}


def _progress(c: dict, what):
    last = [time.perf_counter()]

    def show(step: int, total: int, loss: float) -> None:
        if time.perf_counter() - last[0] > 60 or step == total:
            last[0] = time.perf_counter()
            print(f"  {c['arch']} {what}: step {step}/{total} loss {loss:.3f}", flush=True)
    return show


# ---- figures -------------------------------------------------------------------------------

def _table(res: dict) -> dict[str, pd.Series]:
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
    table = _table(res)
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


def across_keys(res: dict) -> dict:
    """The headline keys (``across.*`` of reports/search_quality.json)."""
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
    t_mean, _ = truth(res)
    table = _table(res)
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
        res = update_results(args.out, _figures)
        write_markdown(args.out.with_suffix(".md"), res)
        if args.out.resolve().parent == SOURCE.parent:  # the headline keys, across.*
            update_results(SOURCE, lambda d: {**d, "across": {
                **d.get("across", {}), **res["across"]}})
        return

    from kdnas.core.settings import SearchConfig
    from kdnas.teacher.prepare import prepare
    from kdnas.search.costs import train_context

    spec, teacher_path = data_and_teacher(args)
    lo, hi = (float(x) * 1e6 for x in args.band.split(","))
    base_cfg = SearchConfig(study="af", teacher=str(teacher_path), data=spec,
                            budget=f"{hi / 1e6:.6g}MMACs", steps=args.steps, latency=False,
                            kd="feature", noise_check=False, cache_limit_gb=64, seed=PROXY_SEED,
                            workdir=str(args.work / "runs"), reports=str(args.work / "reports"))
    base_cfg, teacher, data, _ = prepare(base_cfg)
    base = base_cfg.train_config(len(data.train_y))
    res = json.loads(args.out.read_text()) if args.out.exists() else {}
    check_teacher(res, teacher.digest, teacher_path)
    src = json.loads(args.source.read_text()) if args.source.exists() and not (
        args.data or args.per_class) else {}
    if "candidates" not in res:
        existing = src.get("candidates") or pick_candidates(data, lo, hi, 6, seed=0)
        res["candidates"] = candidates(data, (lo, hi), existing)
    res["source_truth"] = {k: {cid: r["val_accuracy"] for cid, r in v.items()}
                           for k, v in src.get("runs", {}).items() if k.startswith("long/")}
    res["setup"] = {"data": spec, "teacher_digest": teacher.digest, "band_macs": [lo, hi],
                    "brief_steps": base.steps, "rungs": list(RUNG_FACTORS),
                    "proxy_seed": PROXY_SEED, "truth_seeds": list(TRUTH_SEEDS),
                    "family_lr": FAMILY_LR, "argv": sys.argv[1:] if argv is None else argv}
    update_results(args.out, lambda disk: _figures({**disk, **{k: res[k] for k in (
        "candidates", "source_truth", "setup")}, "runs": disk.get("runs", {})}))
    work = args.work / "across"
    ctx = dataclasses.replace(train_context(base_cfg, teacher, data),
                              cache_root=work / "teacher_cache")

    def record(op, key, value):
        if op == "get":
            return json.loads(args.out.read_text()).get("runs", {})

        def put(disk):
            runs = disk.setdefault("runs", {})
            if op == "put":
                runs[key] = {**runs.get(key, {}), **value}
            elif op == "drop":
                for r in runs.values():
                    r.pop(key, None)
            return _figures(disk)
        new = update_results(args.out, put)
        write_markdown(args.out.with_suffix(".md"), new)
        return None

    cands = res["candidates"]
    for i, c in enumerate(cands if args.phase == "all" else []):  # the rungs, one by one
        run_rungs(ctx, base, c, 1000 + i, data, work, record)
    if args.phase == "all":
        _drop_caches(work / "teacher_cache", "rungs")
    for i, c in enumerate(cands if args.phase == "all" else []):  # the per-family arm
        key = f"family_lr/s{PROXY_SEED}"
        lr = FAMILY_LR.get(c["space"])
        if c["id"] in (record("get", None, None).get(key, {})):
            continue
        if lr is None:  # unchanged: the first rung's own result
            first = record("get", None, None).get(f"rung{RUNG_FACTORS[0]}x/s{PROXY_SEED}", {})
            if c["id"] in first:
                record("put", key, {c["id"]: first[c["id"]]})
            continue
        from kdnas.distill.candidate import init_seed
        run_one(ctx, dataclasses.replace(base, lr=lr), c, init_seed(PROXY_SEED, 1000 + i),
                data, work, key, record)
    truth_ctx = dataclasses.replace(ctx, cache_root=work / "truth_cache")  # both processes'
    for s in reversed(TRUTH_SEEDS):  # the ground truth of the candidates the source lacks
        from kdnas.distill.candidate import init_seed
        recipe = dataclasses.replace(base, steps=TRUTH_FACTOR * base.steps, seed=s,
                                     eval_every=TRUTH_FACTOR * base.steps // 5)
        for i, c in enumerate(cands):
            if c["id"] in res["source_truth"].get(f"long/s{s}", {}) or c["id"] in record(
                    "get", None, None).get(f"truth/s{s}", {}):
                continue
            run_one(truth_ctx, recipe, c, init_seed(s, 1000 + i), data, work, f"truth/s{s}",
                    record)
        if all(c["id"] in res["source_truth"].get(f"long/s{s}", {}) or c["id"] in record(
                "get", None, None).get(f"truth/s{s}", {}) for c in cands):
            _drop_caches(truth_ctx.cache_for(recipe).dir, f"truth seed {s}")  # that seed's only


def _drop_caches(root: Path, what: str) -> None:
    """A finished phase's teacher caches are read by no later run: up to 22 GB each."""
    if root.exists():
        shutil.rmtree(root, ignore_errors=True)
        print(f"removed the teacher caches of the {what}")


def _figures(res: dict) -> dict:
    if res.get("candidates"):
        res["summary"] = summarise(res)
        res["across"] = across_keys(res)
    return res


if __name__ == "__main__":
    main()
