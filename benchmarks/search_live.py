"""Search against search, live: `kdnas search --space resnet` against `--space all` at the
same wall time on CIFAR-10, each pick's ground truth trained after. The protocol is the live
confirmation of docs/evidence/search_replay.md, committed before the runs.

    python -m benchmarks.search_live          # both searches at once (one core each), then
                                              # the picks' truth; resumes where it stopped

A search that was stopped before its wall time (this script interrupted) is run again from
scratch: a resumed search would have had more than its time. Raw results under ``live`` in
reports/search_replay.json, and a section of reports/search_replay.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import across_families as af
from benchmarks.common import (
    ROOT,
    Results,
    add_setup_args,
    data_and_teacher,
    keep_trials,
    run_one,
    truth_recipe,
    update_results,
)

OUT = ROOT / "reports" / "search_replay.json"
ARMS = ("resnet", "all")
B_UNITS = 24  # W = 24B, B the table's mean rung-1x seconds
TIE = 0.0046  # the table's truth seed spread


def wall_seconds(table: dict) -> float:
    first = table["runs"][f"rung{af.RUNG_FACTORS[0]}x/s{af.PROXY_SEED}"]
    return B_UNITS * sum(r["seconds"] for r in first.values()) / len(first)


def run_searches(arms, spec: str, teacher: Path, work: Path, wall: float, budget: str) -> dict:
    """Start every arm's search at once, one core each; stop each at ``wall`` seconds."""
    procs = {}
    for arm in arms:
        folder = work / arm
        shutil.rmtree(folder, ignore_errors=True)  # a search cut short runs again in full
        folder.mkdir(parents=True)
        cmd = [str(Path(sys.executable).with_name("kdnas")), "search", "--study", f"live-{arm}",
               "--teacher", str(teacher), "--data", spec, "--budget", budget,
               "--space", arm, "--trials", "1000", "--workdir", str(folder / "runs"),
               "--reports", str(folder / "reports")]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        log = open(folder / "search.log", "w")
        procs[arm] = (subprocess.Popen(["timeout", "-s", "INT", "-k", "300", f"{wall:.0f}",
                                        *cmd], stdout=log, stderr=subprocess.STDOUT, env=env),
                      time.time(), log)
        print(f"{arm}: {' '.join(cmd)}", flush=True)
    out = {}
    for arm, (p, t0, log) in procs.items():
        rc = p.wait()
        log.close()
        out[arm] = {"rc": rc, "seconds": round(time.time() - t0, 1)}
        print(f"{arm}: stopped after {out[arm]['seconds']} s (rc {rc})", flush=True)
    return out


def read_pick(arm: str, work: Path) -> dict:
    from kdnas.core.settings import SearchConfig
    from kdnas.report import pick_trial
    from kdnas.search.storage import load_record, open_study
    from search_spaces import describe

    cfg = SearchConfig(study=f"live-{arm}", workdir=str(work / arm / "runs"))
    record = load_record(open_study(cfg, create=False))
    keep_trials(record, OUT, cfg.study)
    best = pick_trial(record, "best")
    rec = record.trained_trial(best)
    trained = [t for t in record.trials if t.trained]
    families = {}
    for t in trained:
        families[t.spec.get("space", "?")] = families.get(t.spec.get("space", "?"), 0) + 1
    return {"trials_trained": len(trained), "families": families, "pick_trial": best,
            "pick": describe(rec.spec), "pick_spec": rec.spec,
            "pick_brief": rec.val_accuracy, "pick_macs": rec.cost["macs"]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_setup_args(ap)
    ap.add_argument("--table", type=Path, default=ROOT / "reports" / "across_families.json")
    ap.add_argument("--summarise", action="store_true")
    args = ap.parse_args(argv)
    table = json.loads(args.table.read_text())
    work = args.work / "live"

    def save(update):
        new = update_results(OUT, lambda d: {**d, "live": summarise(update(d.get("live", {})))})
        write_section(ROOT / "reports" / "search_replay.md", new["live"])
        return new["live"]  # its headline, across.live: benchmarks/headlines.py
    if args.summarise:
        save(lambda d: d)
        return
    spec, teacher_path = data_and_teacher(args)
    wall = wall_seconds(table)
    budget = f"{table['setup']['band_macs'][1] / 1e6:.6g}MMACs"
    live = json.loads(OUT.read_text()).get("live", {}) if OUT.exists() else {}
    todo = [a for a in ARMS if "pick" not in live.get("arms", {}).get(a, {})]
    if todo:
        ran = run_searches(todo, spec, teacher_path, work, wall, budget)
        picks = {a: {**ran[a], **read_pick(a, work)} for a in todo}
        save(lambda d: {**d, "wall_seconds": wall, "budget": budget, "data": spec,
                        "arms": {**d.get("arms", {}), **picks}})

    from kdnas.core.settings import SearchConfig
    from kdnas.distill.candidate import init_seed
    from kdnas.search.costs import train_context
    from kdnas.teacher.prepare import prepare

    cfg = SearchConfig(study="live-truth", teacher=str(teacher_path), data=spec, budget=budget,
                       latency=False, noise_check=False, kd="feature", seed=af.PROXY_SEED,
                       workdir=str(work / "truth"), reports=str(work / "truth"))
    cfg, teacher, data, _ = prepare(cfg)
    base = cfg.train_config(len(data.train_y))
    ctx = dataclasses.replace(train_context(cfg, teacher, data), cache_root=None)

    class LiveRuns(Results):  # the runs of the ``live`` section of the shared file
        def read(self) -> dict:
            return super().read().get("live", {})

        def update(self, change):
            return save(change)

    runs = LiveRuns(OUT)
    arms = json.loads(OUT.read_text())["live"]["arms"]
    for s in af.TRUTH_SEEDS:
        recipe = truth_recipe(base, s)
        for k, arm in enumerate(ARMS):
            a = arms[arm]
            c = {"id": f"{arm}-trial{a['pick_trial']}", "arch": a["pick"],
                 "spec": a["pick_spec"]}
            if c["id"] not in runs.runs().get(f"truth/s{s}", {}):
                run_one(ctx, recipe, c, c["spec"], init_seed(s, 2000 + k), work,
                        f"truth/s{s}", runs)


def summarise(live: dict) -> dict:
    runs = live.get("runs", {})
    for arm, a in live.get("arms", {}).items():
        cid = f"{arm}-trial{a.get('pick_trial')}"
        accs = [runs[f"truth/s{s}"][cid]["val_accuracy"] for s in af.TRUTH_SEEDS
                if cid in runs.get(f"truth/s{s}", {})]
        a["pick_truth"] = sum(accs) / len(accs) if len(accs) == len(af.TRUTH_SEEDS) else None
    arms = live.get("arms", {})
    if all(arms.get(a, {}).get("pick_truth") is not None for a in ARMS):
        margin = arms["all"]["pick_truth"] - arms["resnet"]["pick_truth"]
        live["margin_all_minus_resnet"] = margin
        live["verdict"] = ("tie" if abs(margin) < TIE else
                           "all better" if margin > 0 else "resnet better (contradicts the replay)")
    return live


def write_section(path: Path, live: dict) -> None:
    text = path.read_text() if path.exists() else ""
    text = text.split("\n## Live confirmation")[0].rstrip() + "\n"
    lines = ["", "## Live confirmation", "",
             "Protocol: the live confirmation of docs/evidence/search_replay.md (committed "
             f"before its runs). Both searches ran at once, one core each, stopped at "
             f"{live.get('wall_seconds', 0):.0f} s (24B); budget {live.get('budget')}.", "",
             "| arm | trials trained | families drawn | pick | MACs | brief | truth (2 seeds) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for arm, a in live.get("arms", {}).items():
        truth = a.get("pick_truth")
        lines.append(f"| --space {arm} | {a.get('trials_trained')} | "
                     + ", ".join(f"{f} {n}" for f, n in a.get("families", {}).items())
                     + f" | {a.get('pick')} | {a.get('pick_macs', 0) / 1e6:.2f}M | "
                     f"{100 * a.get('pick_brief', 0):.2f}% | "
                     + ("pending" if truth is None else f"{100 * truth:.2f}%") + " |")
    if "verdict" in live:
        lines += ["", f"Margin (all - resnet): {100 * live['margin_all_minus_resnet']:+.2f} "
                  f"points; the tie rule is {100 * TIE:.2f} points: **{live['verdict']}**."]
    path.write_text(text + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
