"""Which distillation method to rank with, and which to train the final student with: the
protocol docs/evidence/distill_methods.md, committed before the runs. This script runs it and
records every raw result as it comes, in reports/distill_methods.json (figures beside it in
reports/distill_methods.md, headline keys ``methods.*`` in reports/headlines.json).

    OMP_NUM_THREADS=1 python -m benchmarks.method_choice --part B   # resumes where it stopped
    python -m benchmarks.method_choice --summarise                  # figures from the json only

Part B: the 18 candidates of the across-families table (reports/across_families.json), each
trained with the brief recipe (400 steps, seed 2: the same initialisation and batches as that
table's first rung) once per method; only the loss differs. FitNets' brief runs are that
table's own ``rung1x/s2``; the truth is that table's (3,200 steps of FitNets, seeds 0 and 1).
Part A: the best ShuffleNetV2 and the best ResNet of that table (by truth), each trained with
the full recipe (3,200 steps from scratch) once per method and seed (10, 11, 12), seed by
seed; each seed's teacher cache (about 22 GB) is removed when its runs are done. Raw results
under ``part_a``. Two processes may share a part (each run is claimed by file).
Part C (after A): the capacity gap. Part A's better student with Part A's chosen method,
distilled from an early teacher (the kept teacher's run, trained again with the same seed and
stopped at a quarter of its steps: ``kdnas teacher train --keep-early 0.25``) with seeds 10-12;
the final teacher's runs are part A's own (same student, method, seeds and batches). Raw
results under ``part_c``.
Part D (after A): the papers' cross-entropy weight. Both part A students with ``dist`` and
``dkd`` trained as their papers weigh them (1 x CE + the method's loss) instead of kdnas'
mixing (0.1 x CE + 0.9 x the loss), seeds 10-12, each run pairing with part A's of its seed.
Raw results under ``part_d``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from benchmarks import across_families as af
from benchmarks.common import (
    ROOT,
    TRUTH_FACTOR,
    Results,
    add_setup_args,
    check_teacher,
    compare,
    drop_caches,
    prepared,
    run_one,
    spec_of,
    truth_recipe,
)

PART_B_METHODS = ("logit", "dkd", "dist", "logit-ls", "dkd-ls", "rkd")  # fitnets: reused
PART_A_METHODS = ("none", "fitnets", "logit", "dkd", "dist", "logit-ls", "dkd-ls", "rkd")
PART_A_SEEDS = (10, 11, 12)
PART_A_FAMILIES = ("shufflenet", "resnet")
PART_D_METHODS = ("dist", "dkd")
PAPERS_CE_WEIGHT = 1.0  # part D: the DKD and DIST papers' cross-entropy weight
EARLY_FRACTION = 0.25  # part C: the teacher as it was a quarter of the way through its run
REUSED = {"fitnets": f"rung{af.RUNG_FACTORS[0]}x/s{af.PROXY_SEED}"}
TABLE = ROOT / "reports" / "across_families.json"


def from_table(res: dict, table: dict) -> dict:
    """The candidates, the truth (per seed, as ``source_truth``) and FitNets' brief runs,
    copied from the across-families table, so Part B is scored against the same truth."""
    t_mean, t_seeds = af.truth(table)
    truth = {f"long/s{s}": {cid: float(v) for cid, v in t_seeds[s].dropna().items()}
             for s in af.TRUTH_SEEDS}
    runs = res.setdefault("runs", {})
    for method, key in REUSED.items():
        runs[f"brief-{method}/s{af.PROXY_SEED}"] = table["runs"][key]
    return {**res, "candidates": table["candidates"], "source_truth": truth}


def part_a_students(table: dict) -> list[tuple[int, dict]]:
    """The best candidate of each of PART_A_FAMILIES by truth, with its index in the table."""
    t_mean, _ = af.truth(table)
    out = []
    for fam in PART_A_FAMILIES:
        ids = [(i, c) for i, c in enumerate(table["candidates"]) if c["space"] == fam]
        out.append(max(ids, key=lambda ic: t_mean[ic[1]["id"]]))
    return out


def full_recipe(base, seed: int):
    """Part A's recipe for ``seed`` (part C's too, so its runs pair with part A's): the truth
    recipe."""
    return truth_recipe(base, seed)


def run_part_a(args, table, ctx, base, data, work: Path, results: Results) -> None:
    students = part_a_students(table)
    results.update(lambda d: {**d, "part_a_setup": {
        "students": {c["id"]: c["arch"] for _, c in students}, "seeds": list(PART_A_SEEDS),
        "methods": list(PART_A_METHODS), "steps": TRUTH_FACTOR * base.steps}})

    run_grid(dataclasses.replace(ctx, cache_root=work / "full_cache"),
             results, "part_a", students, PART_A_METHODS,
             lambda s: full_recipe(base, s), "", data, work, "full recipe")


def run_grid(cache, results: Results, field: str, students, methods, recipe_for, suffix: str,
             data, work: Path, what: str) -> None:
    """Parts A and D: every student with every method, seed by seed (PART_A_SEEDS, each
    student initialised as in part A), under keys ``<method><suffix>/s<seed>``; a seed's
    teacher cache is removed once all its runs are recorded."""
    from kdnas.distill.candidate import init_seed

    for s in PART_A_SEEDS:
        recipe = recipe_for(s)
        for method in methods:
            key = f"{method}{suffix}/s{s}"
            for i, c in students:
                if c["id"] not in results.runs(field).get(key, {}):
                    run_one(cache, dataclasses.replace(recipe, kd=method), c, spec_of(c, data),
                            init_seed(s, 1000 + i), work, key, results, field)
        if all(c["id"] in results.runs(field).get(f"{m}{suffix}/s{s}", {})
               for m in methods for _, c in students):
            for tc in {t.dir: t for m in methods  # the caches the methods read, once each
                       if (t := cache.cache_for(dataclasses.replace(recipe, kd=m)))}.values():
                drop_caches(tc.dir, f"{what}, seed {s}")


def run_part_c(args, cfg, table, base, data, teacher, work: Path, results: Results) -> None:
    import torch

    from kdnas.distill.candidate import init_seed
    from kdnas.search.costs import train_context
    from kdnas.teacher.prepare import prepare
    from kdnas.teacher.train import early_path, train_teacher

    decision = json.loads(args.out.read_text()).get("methods", {}).get("distill_decision", {})
    if not decision.get("complete"):
        raise SystemExit("part C runs after part A: part A's runs are not all done "
                         "(python -m benchmarks.method_choice --part A)")
    method, cid = decision["method"], decision["student"]["id"]
    i, c = next((i, c) for i, c in enumerate(table["candidates"]) if c["id"] == cid)
    # the kept teacher's run again (same data, split, seed and recipe), keeping a quarter
    rerun = args.work / "early" / f"teacher-{args.teacher_arch}.pt"
    if not rerun.exists():
        train_teacher(cfg.data, args.teacher_arch, epochs=args.teacher_epochs, out=rerun,
                      val_fraction=args.val_fraction, keep_early=(EARLY_FRACTION,))
    early = early_path(rerun, EARLY_FRACTION)
    _, early_teacher, _, _ = prepare(dataclasses.replace(cfg, teacher=str(early)))
    results.update(lambda d: {**d, "part_c_setup": {
        "student": {"id": cid, "arch": c["arch"]}, "method": method,
        "seeds": list(PART_A_SEEDS), "steps": TRUTH_FACTOR * base.steps,
        "early_teacher": {"fraction": EARLY_FRACTION, "digest": early_teacher.digest,
                          "val_accuracy": float(early_teacher.meta["val_accuracy"])},
        "final_teacher": {"digest": teacher.digest,
                          "val_accuracy": float(teacher.meta["val_accuracy"]),
                          "rerun_val_accuracy": float(torch.load(
                              rerun, weights_only=False)["val_accuracy"])}}})

    ctx = dataclasses.replace(train_context(cfg, early_teacher, data),
                              cache_root=work / "early_cache")
    for s in PART_A_SEEDS:  # the same recipe, initialisation and batches as part A's runs
        recipe = dataclasses.replace(full_recipe(base, s), kd=method)
        key = f"early-{method}/s{s}"
        if cid not in results.runs("part_c").get(key, {}):
            run_one(ctx, recipe, c, spec_of(c, data), init_seed(s, 1000 + i), work, key,
                    results, "part_c")
        if cid in results.runs("part_c").get(key, {}):
            drop_caches(ctx.cache_for(recipe).dir, f"early teacher, seed {s}")


def run_part_d(args, table, ctx, base, data, work: Path, results: Results) -> None:
    if not json.loads(args.out.read_text()).get("methods", {}).get(
            "distill_decision", {}).get("complete"):
        raise SystemExit("part D runs after part A: part A's runs are not all done "
                         "(python -m benchmarks.method_choice --part A)")
    students = part_a_students(table)
    results.update(lambda d: {**d, "part_d_setup": {
        "students": {c["id"]: c["arch"] for _, c in students}, "seeds": list(PART_A_SEEDS),
        "methods": list(PART_D_METHODS), "ce_weight": PAPERS_CE_WEIGHT,
        "steps": TRUTH_FACTOR * base.steps}})
    # logits only: neither method reads the teacher's features
    run_grid(dataclasses.replace(ctx, cache_root=work / "logit_cache", cache_features=False),
             results, "part_d", students, PART_D_METHODS,
             lambda s: dataclasses.replace(full_recipe(base, s), ce_weight=PAPERS_CE_WEIGHT),
             "-ce1", data, work, "logits")


def _compare(a: list[float], b: list[float]) -> dict:
    """``a`` against ``b`` by the protocol's noise rule: margin of the means, Welch's p, and
    a tie where the margin is below the larger seed SD."""
    return compare(a, b)


def part_d_figures(res: dict, part_a: dict) -> dict:
    """Per student and method: the papers' weighting (mean, SD), against the same method's
    part A mixing and against part A's ``dist``; then the protocol's two decisions, the
    second over part A's means (``part_a``: :func:`part_a_decision`) and part D's."""
    import statistics

    setup, runs, a = res.get("part_d_setup"), res.get("part_d", {}), res.get("part_a", {})
    if not setup:
        return {}
    seeds = setup["seeds"]

    def accs(table, key, cid):
        return [table[f"{key}/s{s}"][cid]["val_accuracy"] for s in seeds
                if cid in table.get(f"{key}/s{s}", {})]
    out = {"students": {}, "seeds": seeds, "ce_weight": setup["ce_weight"]}
    complete = True
    for cid, arch in setup["students"].items():
        row = {}
        for m in setup["methods"]:
            d, mix, dist = accs(runs, f"{m}-ce1", cid), accs(a, m, cid), accs(a, "dist", cid)
            r = {"accuracies": d, "mean": statistics.fmean(d) if d else None,
                 "sd": statistics.stdev(d) if len(d) > 1 else None,
                 "mixing_mean": statistics.fmean(mix) if mix else None}
            if len(d) == len(mix) == len(dist) == len(seeds):
                r["against_mixing"] = _compare(d, mix)
                r["against_dist"] = _compare(d, dist)
            else:
                complete = False
            row[m] = r
        out["students"][cid] = {"arch": arch, "methods": row}
    out["complete"] = complete
    if not (complete and part_a.get("complete")):
        return {**out, "complete": False}
    rows = list(out["students"].values())
    out["papers_weighting_wins"] = [
        m for m in setup["methods"]
        if all(r["methods"][m]["against_mixing"]["verdict"] == "better" for r in rows)]
    # decision 2: every part A method (not "none") and every part D entry, mean over students
    means = {**part_a["mean_over_students"],
             **{f"{m}-ce1": statistics.fmean(r["methods"][m]["mean"] for r in rows)
                for m in setup["methods"]}}
    best = max(means, key=means.get)
    beats = best.endswith("-ce1") and all(
        r["methods"][best.removesuffix("-ce1")]["against_dist"]["verdict"] == "better"
        for r in rows)
    out.update(mean_over_students=means, best=best, best_beats_dist_on_both=beats,
               distill_default=best if beats else "dist")
    return out


def part_d_lines(d: dict) -> list[str]:
    if not d:
        return ["", "## Part D (the papers' cross-entropy weight)", "", "Not started."]
    lines = ["", "## Part D: the papers' cross-entropy weight", "",
             f"DIST and DKD trained as their papers weigh them ({d['ce_weight']:g} x CE + the "
             "method's loss) against kdnas' mixing in part A (0.1 x CE + 0.9 x the loss), the "
             "same students, recipe, seeds and batches; and against part A's `dist` (the "
             "current default). A margin below the larger seed SD is a tie.", "",
             "| student | method | seeds done | papers' weighting | SD | part A mixing | "
             "margin (p) | verdict | against dist (p) | verdict |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in d["students"].values():
        for m, v in r["methods"].items():
            cmp = [v.get("against_mixing"), v.get("against_dist")]
            cells = []
            for c in cmp:
                cells += (["-", "-"] if c is None else
                          [f"{100 * c['margin']:+.2f} ({c['welch_p']:.3f})", c["verdict"]])
            lines.append(f"| {r['arch']} | {m} | {len(v['accuracies'])} | {pct(v['mean'])} | "
                         f"{pct(v['sd'])} | {pct(v['mixing_mean'])} | " + " | ".join(cells)
                         + " |")
    if d.get("complete"):
        means = ", ".join(f"{m} {100 * v:.2f}" for m, v in sorted(
            d["mean_over_students"].items(), key=lambda kv: -kv[1]))
        wins = d["papers_weighting_wins"]
        lines += ["", f"Mean over both students: {means}.",
                  "Decision 1 (the papers' weighting beats the mixing on both students): "
                  + (", ".join(f"`{m}`" for m in wins) if wins else "no method") + ".",
                  f"Decision 2: the best mean over both students is `{d['best']}`"
                  + (", a part D entry that beats part A's `dist` on both students"
                     if d["best_beats_dist_on_both"] else
                     ", not a part D entry that beats part A's `dist` on both students")
                  + f": the final-student default is **`{d['distill_default']}`**."]
    return lines


def part_a_figures(res: dict) -> dict:
    """Per student and method: mean and SD over the seeds; margin over FitNets, Welch's p,
    and the protocol's noise rule (a margin below the larger SD is a tie)."""
    import statistics

    setup, runs = res.get("part_a_setup"), res.get("part_a", {})
    if not setup:
        return {}
    out = {}
    for cid, arch in setup["students"].items():
        accs = {m: [runs[f"{m}/s{s}"][cid]["val_accuracy"] for s in setup["seeds"]
                    if cid in runs.get(f"{m}/s{s}", {})] for m in setup["methods"]}
        row = {}
        for m, a in accs.items():
            row[m] = {"accuracies": a, "mean": statistics.fmean(a) if a else None,
                      "sd": statistics.stdev(a) if len(a) > 1 else None}
            f = accs.get("fitnets", [])
            if m != "fitnets" and len(a) == len(f) == len(setup["seeds"]):
                c = _compare(a, f)
                row[m].update(margin_over_fitnets=c["margin"], welch_p=c["welch_p"],
                              verdict=c["verdict"])
        out[cid] = {"arch": arch, "methods": row}
    return out


def part_a_decision(full: dict, seeds: int) -> dict:
    """The protocol's part A rule: ``kdnas distill``'s default becomes the distillation method
    (``none``, the floor, is not one) with the best mean over both students if it beats
    FitNets on both beyond the noise rule; otherwise FitNets stays. ``complete`` is False
    while any run is missing (the rule is not applied then); ``student`` is the better
    student under the chosen method (the one part C distils)."""
    import statistics

    rows = list(full.values())
    complete = bool(rows) and all(len(v["accuracies"]) == seeds
                                  for r in rows for v in r["methods"].values())
    if not complete:
        return {"complete": False}
    means = {m: statistics.fmean(r["methods"][m]["mean"] for r in rows)
             for m in rows[0]["methods"] if m != "none"}
    best = max(means, key=means.get)
    wins = best != "fitnets" and all(r["methods"][best]["verdict"] == "better" for r in rows)
    method = best if wins else "fitnets"
    cid = max(full, key=lambda k: full[k]["methods"][method]["mean"])
    return {"complete": True, "mean_over_students": means, "best": best,
            "best_beats_fitnets_on_both": wins, "method": method,
            "student": {"id": cid, "arch": full[cid]["arch"]}}


def part_c_figures(res: dict) -> dict:
    """Early teacher against the final one, same student, method and seeds: means, SDs, the
    margin with Welch's p, the noise rule's verdict, and the per-seed (paired) differences."""
    import statistics

    setup = res.get("part_c_setup")
    if not setup:
        return {}
    cid, method = setup["student"]["id"], setup["method"]
    a, c = res.get("part_a", {}), res.get("part_c", {})
    pairs = [(c[f"early-{method}/s{s}"][cid]["val_accuracy"],
              a[f"{method}/s{s}"][cid]["val_accuracy"])
             for s in setup["seeds"] if cid in c.get(f"early-{method}/s{s}", {})]
    early, final = [e for e, _ in pairs], [f for _, f in pairs]
    out = {**setup, "early_accuracies": early, "final_accuracies": final,
           "paired_differences": [e - f for e, f in pairs]}
    if len(pairs) == len(setup["seeds"]):
        out.update(early_mean=statistics.fmean(early), final_mean=statistics.fmean(final),
                   early_sd=statistics.stdev(early), final_sd=statistics.stdev(final),
                   **_compare(early, final))
    # the same student without a teacher (part A's "none", same seeds), for scale
    none = [a[f"none/s{s}"][cid]["val_accuracy"] for s in setup["seeds"]
            if cid in a.get(f"none/s{s}", {})]
    if len(none) == len(setup["seeds"]):
        out["no_teacher_mean"] = statistics.fmean(none)
    return out


def figures(res: dict) -> dict:
    if res.get("candidates"):
        s = af.summarise(res)
        res["summary"] = s
        arms = s["arms"]
        res["methods"] = {
            "brief_tau_pooled": {k.split("/")[0].removeprefix("brief-"): v["tau_pooled"]
                                 for k, v in arms.items()},
            "brief_tau_within": {k.split("/")[0].removeprefix("brief-"): v["tau_within"]
                                 for k, v in arms.items()},
            "brief_complete": {k.split("/")[0].removeprefix("brief-"): v["candidates"]
                               for k, v in arms.items()},
            "truth_seed_tau": s["truth_seed_tau"],
            "full_recipe": part_a_figures(res),
            "protocol": "docs/evidence/distill_methods.md"}
        if res.get("part_a_setup"):
            res["methods"]["distill_decision"] = part_a_decision(
                res["methods"]["full_recipe"], len(res["part_a_setup"]["seeds"]))
        if res.get("part_c_setup"):
            res["methods"]["capacity_gap"] = part_c_figures(res)
        if res.get("part_d_setup"):
            res["methods"]["papers_weighting"] = part_d_figures(
                res, res["methods"].get("distill_decision", {}))
    return res


def write_markdown(path: Path, res: dict) -> None:
    s, m = res["summary"], res["methods"]

    def f2(v):
        return "-" if v is None else f"{v:.2f}"
    fams = sorted(s["truth_range_by_family"])
    lines = ["# Which distillation method ranks candidates (part B)", "",
             "Protocol: [docs/evidence/distill_methods.md](../docs/evidence/distill_methods.md)"
             " (committed before the runs). Raw results: `reports/distill_methods.json`.", "",
             f"{len(res['candidates'])} candidates of the across-families table (3.2-4.0M MACs,"
             " 6 per family), each trained with the brief recipe (400 steps, seed 2) once per "
             "method; Kendall tau-b of the brief accuracy against the ground truth (3,200 "
             "steps of FitNets, seeds 0 and 1). The truth's own seed tau: "
             f"{f2(s['truth_seed_tau'])} (the ceiling). Decision rule: a method replaces "
             "FitNets for ranking only if its pooled tau exceeds FitNets' by more than 0.1.", "",
             "| method | candidates | tau pooled | " + " | ".join(f"tau within {f}"
                                                              for f in fams) + " |",
             "| --- | --- | --- | " + " | ".join("---" for _ in fams) + " |"]
    for name, tau in m["brief_tau_pooled"].items():
        lines.append(f"| {name} | {m['brief_complete'][name]} | {f2(tau)} | " + " | ".join(
            f2(m["brief_tau_within"][name].get(f)) for f in fams) + " |")
    t_mean, _ = af.truth(res)
    table = af.run_table(res)
    lines += ["", "Brief accuracy (%) of each candidate under each method:", "",
              "| candidate | family | truth | " + " | ".join(
                  k.split("/")[0].removeprefix("brief-") for k in table) + " |",
              "| --- | --- | --- | " + " | ".join("---" for _ in table) + " |"]
    for c in res["candidates"]:
        tv = t_mean.get(c["id"])
        lines.append(f"| {c['arch']} | {c['space']} | "
                     + ("-" if tv is None or tv != tv else f"{100 * tv:.1f}") + " | "
                     + " | ".join("-" if (v := table[k].get(c["id"])) is None or v != v
                                  else f"{100 * v:.1f}" for k in table) + " |")
    lines += part_a_lines(m.get("full_recipe") or {}, m.get("distill_decision") or {})
    lines += part_c_lines(m.get("capacity_gap") or {})
    lines += part_d_lines(m.get("papers_weighting") or {})
    path.write_text("\n".join(lines) + "\n")


def pct(x: float | None) -> str:
    """An accuracy in percent for the report's tables; "-" where there is none yet."""
    return "-" if x is None else f"{100 * x:.2f}"


def part_c_lines(gap: dict) -> list[str]:
    if not gap:
        return ["", "## Part C (the capacity gap)", "", "Not started (it runs after part A)."]

    e, f = gap["early_teacher"], gap["final_teacher"]
    lines = ["", "## Part C: the capacity gap (early teacher against the final one)", "",
             f"Student {gap['student']['arch']}, method `{gap['method']}`, the full recipe, "
             f"seeds {', '.join(map(str, gap['seeds']))} (the final teacher's runs are part "
             f"A's). Early teacher: the kept teacher's run trained again with the same seed, "
             f"as it was at {100 * e['fraction']:g}% of its steps: {pct(e['val_accuracy'])}% "
             f"validation (digest {e['digest']}); final teacher {pct(f['val_accuracy'])}% "
             f"(the same run trained again to the end: {pct(f.get('rerun_val_accuracy'))}%).",
             "", "| teacher | " + " | ".join(f"seed {s}" for s in gap["seeds"])
             + " | mean | SD |", "| --- | " + " | ".join("---" for _ in gap["seeds"])
             + " | --- | --- |"]
    for name, key in (("early", "early"), ("final", "final")):
        accs = gap[f"{key}_accuracies"]
        cells = [pct(a) for a in accs] + ["-"] * (len(gap["seeds"]) - len(accs))
        lines.append(f"| {name} | " + " | ".join(cells)
                     + f" | {pct(gap.get(f'{key}_mean'))} | {pct(gap.get(f'{key}_sd'))} |")
    if "margin" in gap:
        lines += ["", f"Margin early - final: {100 * gap['margin']:+.2f} points (Welch p "
                  f"{gap['welch_p']:.3f}); per seed "
                  + ", ".join(f"{100 * d:+.2f}" for d in gap["paired_differences"])
                  + f". Verdict by the noise rule: **{gap['verdict']}**."]
    if "no_teacher_mean" in gap and "early_mean" in gap:
        lines += ["", f"For scale: the same student trained without a teacher (part A's "
                  f"`none`, same seeds) reaches {pct(gap['no_teacher_mean'])}%; the early "
                  f"teacher's students end at {pct(gap['early_mean'])}%, near the early "
                  f"teacher's own {pct(e['val_accuracy'])}%."]
    return lines


def part_a_lines(full: dict, decision: dict | None = None) -> list[str]:
    if not full:
        return ["", "## Part A (full recipe)", "", "Not started."]
    lines = ["", "## Part A: the final student (full recipe, 3,200 steps, seeds 10-12)", "",
             "Validation accuracy (10,000 images), mean and SD over the seeds done; the "
             "margin over FitNets with Welch's p; a margin below the larger SD is a tie."]
    for r in full.values():
        lines += ["", f"**{r['arch']}**", "",
                  "| method | seeds done | mean | SD | margin over fitnets | Welch p | verdict |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for m, v in r["methods"].items():
            p = v.get("welch_p")
            lines.append(f"| {m} | {len(v['accuracies'])} | {pct(v['mean'])} | {pct(v['sd'])} | "
                         + ("-" if "margin_over_fitnets" not in v else
                            f"{100 * v['margin_over_fitnets']:+.2f}") + " | "
                         + ("-" if p is None else f"{p:.3f}") + f" | {v.get('verdict', '-')} |")
    if decision and decision.get("complete"):
        means = ", ".join(f"{m} {100 * v:.2f}" for m, v in sorted(
            decision["mean_over_students"].items(), key=lambda kv: -kv[1]))
        lines += ["", f"Mean over both students: {means}. The protocol's rule: the best, "
                  f"`{decision['best']}`, " + ("beats" if decision["best_beats_fitnets_on_both"]
                                                else "does not beat")
                  + " FitNets on both students beyond the noise rule, so `kdnas distill` "
                  f"trains the final student with **`{decision['method']}`**."]
    elif decision is not None:
        lines += ["", "Not every run is done: no decision yet."]
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_setup_args(ap)
    ap.set_defaults(out=ROOT / "reports" / "distill_methods.json")
    ap.add_argument("--part", choices=("A", "B", "C", "D"), default="B")
    ap.add_argument("--table", type=Path, default=TABLE, help="the across-families results")
    ap.add_argument("--methods", nargs="+", default=list(PART_B_METHODS))
    ap.add_argument("--steps", type=int, default=None, help="brief steps (default 400)")
    ap.add_argument("--summarise", action="store_true")
    args = ap.parse_args(argv)
    table = json.loads(args.table.read_text())

    results = Results(args.out, lambda d: figures(from_table(d, table)),
                      lambda new: write_markdown(args.out.with_suffix(".md"), new))
    if args.summarise:
        results.update(lambda d: d)
        return

    from kdnas.distill.candidate import init_seed
    from kdnas.search.costs import train_context

    cfg, teacher, data, base = prepared(args, study="methods",
                                        budget_macs=table["setup"]["band_macs"][1],
                                        steps=args.steps, seed=af.PROXY_SEED)
    check_teacher(table, teacher.digest, Path(cfg.teacher))
    if base.steps != table["setup"]["brief_steps"] and not args.data:
        raise SystemExit(f"the table's brief recipe is {table['setup']['brief_steps']} steps")
    results.update(lambda d: {**d, "setup": {"data": cfg.data, "teacher_digest": teacher.digest,
                                             "brief_steps": base.steps, "seed": af.PROXY_SEED,
                                             "methods": list(args.methods), "reused": REUSED}})
    work = args.work / "methods"
    ctx = dataclasses.replace(train_context(cfg, teacher, data),
                              cache_root=work / "teacher_cache")
    if args.part == "A":
        return run_part_a(args, table, ctx, base, data, work, results)
    if args.part == "C":
        return run_part_c(args, cfg, table, base, data, teacher, work, results)
    if args.part == "D":
        return run_part_d(args, table, ctx, base, data, work, results)
    for method in args.methods:  # method by method, so each finished method has its tau
        key = f"brief-{method}/s{af.PROXY_SEED}"
        for i, c in enumerate(table["candidates"]):
            if c["id"] not in results.runs().get(key, {}):
                run_one(ctx, dataclasses.replace(base, kd=method), c, spec_of(c, data),
                        init_seed(af.PROXY_SEED, 1000 + i), work, key, results)


if __name__ == "__main__":
    main()
