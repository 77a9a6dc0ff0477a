"""Does the default brief recipe give a front that means something on a small real data set?

On a seeded CIFAR-10 subset of a few thousand images (400 a class by default) with a kdnas
teacher, run the default `kdnas search` (no --steps, no --epochs) and the old default of one
epoch, then train every candidate of the default study 4x longer and compare: is the best
student far above chance, and close to what longer training of the same candidates reaches?

    python -m benchmarks.trust_check [--per-class 400 --trials 6 --budget 5MFLOPs]

Resumable: the subset, the teacher, both studies (kdnas' own resumable studies) and each long
run are kept in --work and reused by the next run. Figures go to
reports/benchmarks/trust_check.md and .json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import pandas as pd

from benchmarks.common import ARCHIVE, ROOT, truth_recipe
from kdnas.bench.workload import make_subset


def long_runs(study, cfg, teacher, data, factor: int, done: dict, save) -> dict:
    """Train every trained candidate of the study ``factor`` times longer (same seed, init,
    method); results keyed by trial number, saved after each one."""
    from kdnas.distill.candidate import TrainContext, init_seed, train_candidate
    from kdnas.search.rungs import trial_recipe
    from kdnas.search.storage import load_record

    ctx = TrainContext(teacher, data)
    for t in load_record(study).trials:
        if not t.trained or str(t.number) in done:
            continue
        brief = trial_recipe(cfg, len(data.train_y), t)
        tcfg = truth_recipe(brief, brief.seed, factor)  # the search's own seed and init
        t0 = time.perf_counter()
        out = train_candidate(ctx, t.spec, tcfg, init=init_seed(cfg.seed, t.number))
        done[str(t.number)] = {"steps": out.total_steps, "val_accuracy": out.val_accuracy,
                               "seconds": time.perf_counter() - t0, "curve": out.result.points}
        save()
    return done


def table(study, long: dict) -> pd.DataFrame:
    from kdnas.search.storage import load_record
    from search_spaces import describe

    rows = [{"trial": t.number, "arch": describe(t.spec), "macs": t.cost["macs"],
             "brief_steps": t.recipe.get("steps"), "brief_accuracy": t.val_accuracy,
             "long_steps": long.get(str(t.number), {}).get("steps"),
             "long_accuracy": long.get(str(t.number), {}).get("val_accuracy")}
            for t in load_record(study).trials if t.trained]
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archive", type=Path, default=ARCHIVE)
    ap.add_argument("--work", type=Path, default=Path("/tmp/kdnas-trust"))
    ap.add_argument("--per-class", type=int, default=400)
    ap.add_argument("--teacher-arch", default="resnet8")
    ap.add_argument("--teacher-epochs", type=float, default=30)
    ap.add_argument("--budget", default="5MFLOPs")
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--factor", type=int, default=4, help="long runs: this many times the "
                    "default brief steps")
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "benchmarks" /
                    "trust_check.md")
    args = ap.parse_args()

    from kdnas.core.settings import SearchConfig
    from kdnas.search.loop import run_search
    from kdnas.teacher.prepare import prepare
    from kdnas.teacher.train import train_teacher

    subset = make_subset(args.archive, args.work / "data", args.per_class, 100)
    spec = f"imagefolder:{subset}"
    teacher_path = args.work / f"teacher-{args.teacher_arch}.pt"
    if not teacher_path.exists():
        train_teacher(spec, args.teacher_arch, epochs=args.teacher_epochs, out=teacher_path)
    results_path = args.out.with_suffix(".json")
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results.setdefault("long", {})

    def save() -> None:
        results_path.write_text(json.dumps(results, indent=1))

    base = SearchConfig(study="trust-default", teacher=str(teacher_path), data=spec,
                        budget=args.budget, trials=args.trials, latency=False, space="resnet",
                        kd="feature",
                        workdir=str(args.work / "runs"), reports=str(args.work / "reports"))
    base, teacher, data, _ = prepare(base)
    results["teacher_val_accuracy"] = teacher.meta.get("val_accuracy")
    results["data"] = {"train": len(data.train_y), "val": len(data.val_y),
                       "classes": data.num_classes}
    studies = {"default": base,
               "one_epoch": dataclasses.replace(base, study="trust-1epoch", epochs=1.0)}
    for name, cfg in studies.items():
        t0 = time.perf_counter()
        out = run_search(cfg, teacher, data)
        results.setdefault(name, {})["search_seconds"] = results.get(name, {}).get(
            "search_seconds") or time.perf_counter() - t0
        results[name]["recipe"] = cfg.recipe_text(len(data.train_y))
        results[name]["noise"] = out.study.user_attrs.get("noise")
        results[name]["table"] = table(out.study, {}).to_dict(orient="records")
        save()
        if name == "default":
            long_runs(out.study, cfg, teacher, data, args.factor, results["long"], save)
            df = table(out.study, results["long"])
            results[name]["table"] = df.to_dict(orient="records")
            results[name]["kendall_tau_brief_vs_long"] = float(
                df.brief_accuracy.corr(df.long_accuracy, method="kendall"))
            save()
    write_markdown(args.out, results, args)


def write_markdown(path: Path, r: dict, args) -> None:
    d, o = r["default"], r["one_epoch"]
    df, do = pd.DataFrame(d["table"]), pd.DataFrame(o["table"])
    chance = 1 / r["data"]["classes"]
    lines = [
        "# Does the default brief recipe rank on a small real data set?", "",
        f"CIFAR-10 subset: {r['data']['train']} train / {r['data']['val']} val images "
        f"({args.per_class} a class, seeded), teacher {args.teacher_arch} at "
        f"{100 * (r['teacher_val_accuracy'] or 0):.1f}% val, budget {args.budget}, "
        f"{args.trials} candidates, feature KD, chance {100 * chance:.0f}%. CPU, 2 cores.", "",
        "| recipe | best val acc | range over candidates | knee seed spread | search time |",
        "| --- | --- | --- | --- | --- |"]
    for name, x, frame in (("default: " + d["recipe"], d, df),
                           ("old default, 1 epoch: " + o["recipe"], o, do)):
        spread = (x.get("noise") or {}).get("spread")
        lines.append(f"| {name} | {100 * frame.brief_accuracy.max():.1f}% | "
                     f"{100 * frame.brief_accuracy.min():.1f}-"
                     f"{100 * frame.brief_accuracy.max():.1f}% | "
                     + (f"{100 * spread:.1f} points" if spread is not None else "-")
                     + f" | {x['search_seconds'] / 60:.1f} min |")
    lines += ["", f"Every candidate of the default study trained {args.factor}x longer "
              "(same init, data order and method):", "",
              "| trial | architecture | MACs | brief steps | brief acc | long steps | long acc |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for _, row in df.iterrows():
        lines.append(f"| {row.trial} | {row.arch} | {row.macs / 1e6:.2f}M | {row.brief_steps} | "
                     f"{100 * row.brief_accuracy:.1f}% | {row.long_steps} | "
                     f"{100 * row.long_accuracy:.1f}% |")
    lines += ["", f"Best brief {100 * df.brief_accuracy.max():.1f}% against best long "
              f"{100 * df.long_accuracy.max():.1f}%; Kendall tau between the two rankings "
              f"{d['kendall_tau_brief_vs_long']:.2f} over {len(df)} candidates (a small sample: "
              "the proxy-fidelity study with many candidates is search_quality.md).", "",
              "Reproduce: `python -m benchmarks.trust_check` (resumes from --work)."]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
