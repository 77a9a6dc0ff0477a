"""The claim at the user's 50M-MAC budget under a teacher as strong as users have.

Protocol: docs/evidence/claim_budget.md (committed before its runs). Stages, each resumable:

    python -m benchmarks.claim_budget teacher     # stage 0: resnet56, 30 epochs, one core
    python -m benchmarks.claim_budget run         # stages 1-4, then the page; twice at once
                                                  # shares the distillations (one a core)
    python -m benchmarks.claim_budget page        # the page and headlines from the results

Stage 1 is ``kdnas search`` itself (its CLI, every default as shipped: ``--workers auto``
included), timed; its study's database is copied into the repository after it
(``benchmarks/claim_budget/``), so a new checkout distils from the same trials. Stages 2-4
distil with ``kdnas distill``'s library call and its defaults (its method and schedule), each
run checkpointed every epoch in the study folder and recorded as it ends with its recipe,
data digest, device and threads; the pick's seed-0 run also writes its exports (fp32 ONNX
and int8), the journey's last step.

The teacher's training state is kept in the repository (``benchmarks/teachers/``, a hidden
``.partial`` file beside the checkpoint it becomes), because a new checkout keeps nothing
else: commit it when a session stops and the next one goes on from its last epoch. Its time
is counted as this process's CPU seconds per epoch (``OMP_NUM_THREADS=1``: one core), so a
pause (SIGSTOP, while a benchmark needs the machine quiet) or a restart costs nothing in the
recorded figure; an epoch cut short by a stop is trained again and counted once.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import dataclasses
import json
import shutil
import statistics
import sys

import numpy as np

from benchmarks.common import ARCHIVE, ROOT, Results, held, keep_trials, welch_p

OUT = ROOT / "reports" / "claim_budget.json"
WORK = ROOT / ".bench" / "claim_budget"
TEACHER = {"arch": "resnet56", "epochs": 30, "val_fraction": 0.1, "split_seed": 0, "seed": 0,
           "lr": 0.1, "batch_size": 128}
TEACHER_PATH = ROOT / "benchmarks" / "teachers" / "cifar10-resnet56-30ep-val0.1.pt"
KEPT = ROOT / "benchmarks" / "claim_budget"  # the study's database, kept in the repository


@dataclasses.dataclass(frozen=True)
class Protocol:
    """docs/evidence/claim_budget.md in figures (a tiny run changes them for its test)."""
    study: str = "claim-budget-50m"
    budget: str = "50MFLOPs"
    trials: int = 30
    epochs: float = 10
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    next_best: int = 2  # the search's next students by brief accuracy, for the ranking
    steps: int | None = None  # the brief recipe's (None: as shipped)
    bootstrap: int = 10_000
    exports: bool = True  # the pick's seed-0 run writes the shipped files (the journey)


def device_record() -> dict:
    """The device and threads as measured, not as written."""
    import torch

    from kdnas.bench.run import cpu_name
    return {"device": "cpu", "cpu": cpu_name(), "threads": torch.get_num_threads(),
            "cores_usable": len(os.sched_getaffinity(0)), "torch": torch.__version__}


def data_spec() -> str:
    """CIFAR-10 from the shared archive, extracted once into the work folder."""
    from kdnas.bench.workload import make_subset
    return "imagefolder:" + str(make_subset(ARCHIVE, WORK / "data", None, None))


def stage_teacher(results: Results) -> None:
    from kdnas.data import load_data
    from kdnas.distill import evaluate
    from kdnas.teacher.load import load_teacher
    from kdnas.teacher.train import train_teacher

    if TEACHER_PATH.exists() and "teacher" in results.read():
        print(f"teacher: {TEACHER_PATH.relative_to(ROOT)} is trained: "
              f"{results.read()['teacher']['test_accuracy']:.2%} test")
        return
    spec = data_spec()
    steps_per_epoch = -(-int(50000 * (1 - TEACHER["val_fraction"])) // TEACHER["batch_size"])
    mark = [time.process_time(), time.perf_counter()]

    def epoch_done(step: int, total: int, loss: float) -> None:
        if step % steps_per_epoch and step != total:
            return
        epoch = -(-step // steps_per_epoch)
        cpu, wall = time.process_time() - mark[0], time.perf_counter() - mark[1]
        mark[:] = [time.process_time(), time.perf_counter()]
        results.put("epochs", {str(epoch): {"cpu_s": round(cpu, 1), "wall_s": round(wall, 1),
                                            "loss": round(loss, 4)}}, field="teacher_progress")
        print(f"teacher: epoch {epoch}/{TEACHER['epochs']} (step {step}/{total}) loss "
              f"{loss:.3f}, {cpu:.0f} CPU s", flush=True)

    print(f"teacher: {TEACHER['arch']}, {TEACHER['epochs']} epochs, {device_record()}")
    path, val = train_teacher(spec, TEACHER["arch"], epochs=TEACHER["epochs"], out=TEACHER_PATH,
                              lr=TEACHER["lr"], batch_size=TEACHER["batch_size"],
                              val_fraction=TEACHER["val_fraction"],
                              split_seed=TEACHER["split_seed"], seed=TEACHER["seed"],
                              device="cpu", progress=epoch_done)
    teacher = load_teacher(path)
    test = load_data(spec, val_fraction=TEACHER["val_fraction"], seed=TEACHER["split_seed"])
    acc = evaluate(teacher.module, test, "test", device="cpu")
    epochs = results.runs("teacher_progress").get("epochs", {})

    def done(disk: dict) -> dict:
        disk["teacher"] = {**TEACHER, "path": str(path.relative_to(ROOT)),
                           "val_accuracy": val, "test_accuracy": acc,
                           "cpu_minutes": round(sum(e["cpu_s"] for e in epochs.values()) / 60, 1),
                           "data_digest": test.digest(), **device_record()}
        return disk
    results.update(done)
    print(f"teacher: {acc:.2%} test accuracy ({val:.2%} validation)")


def search_argv(teacher: Path, spec: str, proto: Protocol, work: Path) -> list[str]:
    """``kdnas search`` as the protocol runs it: every other setting as shipped."""
    argv = ["search", "--teacher", str(teacher), "--data", spec, "--budget", proto.budget,
            "--trials", str(proto.trials), "--seed", "0", "--study", proto.study,
            "--workdir", str(work / "runs"), "--reports", str(work / "reports")]
    return argv + (["--steps", str(proto.steps)] if proto.steps else [])


def stage_search(results: Results, teacher: Path, spec: str, proto: Protocol, work: Path):
    """Stage 1: the search, resumed where it stopped; its wall time summed over the runs
    that trained something (a run that finds the study complete adds nothing)."""
    from kdnas.cli import main as kdnas
    from kdnas.core.settings import SearchConfig
    from kdnas.search.storage import load_record, open_study, stored_config

    cfg = SearchConfig(study=proto.study, workdir=str(work / "runs"), teacher=str(teacher),
                       data=spec)
    db, kept = cfg.study_dir / "study.db", KEPT / f"{proto.study}.db"
    if not db.exists() and kept.exists():  # a new checkout: the kept trials
        db.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(kept, db)
    before = _trained(cfg)
    if before < proto.trials:
        t0 = time.perf_counter()
        code = kdnas(search_argv(teacher, spec, proto, work))
        seconds = time.perf_counter() - t0
        if code != 0:
            raise SystemExit(f"kdnas search ended with status {code}: run the same command "
                             "to resume it")
        done = results.runs("search").get("runs", {})
        results.put("runs", {f"s{len(done)}": {
            "seconds": round(seconds, 1), "trained_before": before,
            "trained_after": _trained(cfg), **device_record()}}, field="search")
    study = open_study(cfg, create=False)
    record = load_record(study)
    cfg = dataclasses.replace(stored_config(study), workdir=cfg.workdir)  # as distil reads it
    KEPT.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(db, kept)
    keep_trials(record, OUT, proto.study)
    return cfg, record


def _trained(cfg) -> int:
    from kdnas.search.storage import load_record, open_study

    if not (cfg.study_dir / "study.db").exists():
        return 0
    return sum(t.trained for t in load_record(open_study(cfg, create=False)).trials)


def students(record, proto: Protocol) -> dict:
    """The six of the ranking: the references, the pick, the next best by brief accuracy."""
    from kdnas.report import pick_trial

    pick = pick_trial(record, "best")
    trained = sorted((t for t in record.trials if t.trained and t.within_budget
                      and t.number != pick), key=lambda t: -t.val_accuracy)
    out = {f"trial-{pick}": {"trial": pick, "role": "pick"}}
    for t in trained[:proto.next_best]:
        out[f"trial-{t.number}"] = {"trial": t.number, "role": "next"}
    for name, ref in record.references.items():
        if ref.get("val_accuracy") is not None:
            out[f"ref-{name}"] = {"reference": name, "role": "reference"}
    return out


def brief_accuracy(record, who: dict) -> float | None:
    if "trial" in who:
        return record.trained_trial(who["trial"]).val_accuracy
    return record.references[who["reference"]].get("val_accuracy")


def distill_one(results: Results, cfg, record, teacher, data, key: str, who: dict,
                seed: int, proto: Protocol, work: Path, journey: bool = False) -> None:
    """One full distillation, unless recorded or another process has it."""
    from kdnas.cli.progress import StepBar
    from kdnas.ship.export import Int8Options
    from kdnas.ship.final import EXPORT_FORMATS, distill_reference, distill_trial

    run = f"{key}/s{seed}"
    if run in results.runs():
        return
    with held(work / "locks" / f"{run.replace('/', '-')}.lock") as mine:
        if not mine:
            print(f"{run}: another process distils it", flush=True)
            return
        print(f"distilling {run} ({proto.epochs:g} epochs)", flush=True)
        opts = dict(epochs=proto.epochs, seed=seed, progress=StepBar(f"  {run}", every_s=120),
                    out_dir=work / "distilled" / run,
                    formats=EXPORT_FORMATS if journey and proto.exports else (),
                    int8=Int8Options() if journey and proto.exports else None)
        t0 = time.perf_counter()
        if "trial" in who:
            info = distill_trial(record, cfg, who["trial"], teacher, data, **opts)
        else:
            info = distill_reference(cfg, who["reference"], teacher, data, **opts)
        seconds = time.perf_counter() - t0
    results.put(run, {"test_accuracy": info["test_accuracy"],
                      "val_accuracy": info["val_accuracy"], "macs": info["macs"],
                      "epochs": proto.epochs, "seed": seed, "seconds": round(seconds, 1),
                      "recipe": info["recipe"], "data_digest": data.digest(),
                      "teacher_digest": teacher.digest, "journey": journey,
                      "int8": info.get("int8"), **device_record()})


def stage_distill(results: Results, cfg, record, proto: Protocol, work: Path) -> None:
    """Stages 2-4: the references and the pick at seed 0, the opponent by validation, the
    pick and the opponent at every seed, the next best at seed 0."""
    from kdnas.teacher.prepare import prepare

    cfg, teacher, data, _ = prepare(cfg)
    who = students(record, proto)
    pick = next(k for k, w in who.items() if w["role"] == "pick")
    refs = [k for k, w in who.items() if w["role"] == "reference"]
    for key in [pick, *refs]:
        distill_one(results, cfg, record, teacher, data, key, who[key], 0, proto, work,
                    journey=key == pick)
    done = results.runs()
    if not all(f"{k}/s0" in done for k in refs):
        return  # another process finishes them; the opponent waits for all
    opponent = max(refs, key=lambda k: done[f"{k}/s0"]["val_accuracy"])
    for seed in proto.seeds[1:]:
        for key in (pick, opponent):
            distill_one(results, cfg, record, teacher, data, key, who[key], seed, proto, work)
    for key, w in who.items():
        if w["role"] == "next":
            distill_one(results, cfg, record, teacher, data, key, w, 0, proto, work)


def kendall_with_interval(brief: list[float], full: list[float], resamples: int,
                          seed: int = 0) -> dict:
    """Kendall tau of the brief against the full accuracies, with a 95% bootstrap interval
    over the students (resamples that leave fewer than three distinct students are drawn
    again)."""
    from scipy.stats import kendalltau

    tau = float(kendalltau(brief, full).statistic)
    rng, n, taus = np.random.default_rng(seed), len(brief), []
    for _ in range(20 * resamples):  # a draw of tied accuracies has no tau: drawn again
        if len(taus) == resamples:
            break
        idx = rng.integers(0, n, n)
        if len(set(idx.tolist())) < 3:
            continue
        t = kendalltau([brief[i] for i in idx], [full[i] for i in idx]).statistic
        if not np.isnan(t):
            taus.append(float(t))
    if np.isnan(tau) or len(taus) < resamples:  # every accuracy tied: no order to compare
        return {"tau": None, "interval": None, "students": n, "holds": False}
    lo, hi = np.percentile(taus, [2.5, 97.5])
    return {"tau": tau, "interval": [float(lo), float(hi)], "students": n,
            "holds": bool(lo > 0)}


def figures(res: dict) -> dict:
    """The ``claim_budget`` section, from the raw runs and the search's record kept in
    ``setup`` (the protocol's verdict rule)."""
    setup, runs = res.get("setup"), res.get("runs", {})
    if not setup:
        return res
    seeds, who = setup["seeds"], setup["students"]

    def accs(key):
        return [runs[f"{key}/s{s}"]["test_accuracy"] for s in seeds if f"{key}/s{s}" in runs]
    pick = next(k for k, w in who.items() if w["role"] == "pick")
    refs = [k for k, w in who.items() if w["role"] == "reference"]
    seed0 = {k: runs[f"{k}/s0"] for k in who if f"{k}/s0" in runs}
    opponent = max(refs, key=lambda k: seed0[k]["val_accuracy"]) \
        if all(k in seed0 for k in refs) else None
    c = {"budget_macs": setup["budget_macs"], "teacher": res.get("teacher"),
         "found_arch": who[pick]["arch"], "found_macs": who[pick]["macs"],
         "found": {"trial": who[pick]["trial"], "accuracies": accs(pick)},
         "opponent": opponent and who[opponent]["reference"],
         "opponent_runs": {"accuracies": accs(opponent) if opponent else []},
         "references": {who[k]["reference"]: {"macs": who[k]["macs"],
                                              "seed0": seed0.get(k)} for k in refs},
         "epochs": setup["epochs"], "seeds": seeds}
    f, o = c["found"]["accuracies"], c["opponent_runs"]["accuracies"]
    if opponent and len(f) == len(o) == len(seeds):
        margin = statistics.fmean(f) - statistics.fmean(o)
        p = welch_p(f, o)
        spread = max(max(f) - min(f), max(o) - min(o))
        share = who[pick]["macs"] / who[opponent]["macs"]
        if margin >= 0.01 and p is not None and p < 0.01:
            verdict = "beats"
        elif margin >= 0 and share <= 0.6:
            verdict = "holds"
        elif abs(margin) <= spread:
            verdict = "tie"
        else:
            verdict = "reference better" if margin < 0 else "ahead beyond the spread"
        c.update(margin=margin, welch_p=p, spread=spread, macs_share=share, verdict=verdict)
    else:
        c["verdict"] = "in progress"
    ranked = [k for k in who if k in seed0]
    if len(ranked) == len(who) and len(who) >= 3:
        c["ranking"] = kendall_with_interval([who[k]["brief_val_accuracy"] for k in ranked],
                                             [seed0[k]["test_accuracy"] for k in ranked],
                                             setup["bootstrap"])
    journey = {"teacher_minutes": (res.get("teacher") or {}).get("cpu_minutes"),
               "search_minutes": round(sum(r["seconds"] for r in res.get("search", {})
                                           .get("runs", {}).values()) / 60, 1)}
    pick0 = runs.get(f"{pick}/s0")
    if pick0:
        journey["distill_and_export_minutes"] = round(pick0["seconds"] / 60, 1)
    c["journey"] = journey
    res["claim_budget"] = c
    return res


def save_setup(results: Results, cfg, record, proto: Protocol, argv: list[str]) -> None:
    from search_spaces import describe

    who = students(record, proto)
    for w in who.values():
        rec = record.trained_trial(w["trial"]) if "trial" in w else None
        ref = record.references.get(w.get("reference"), {})
        w["arch"] = describe(rec.spec) if rec else w["reference"]
        w["macs"] = (rec.cost if rec else ref.get("cost", {})).get("macs")
        w["brief_val_accuracy"] = brief_accuracy(record, w)

    def change(disk: dict) -> dict:
        disk["setup"] = {**dataclasses.asdict(proto), "seeds": list(proto.seeds),
                         "budget_macs": cfg.budget_value.limit, "students": who,
                         "argv": " ".join(argv)}
        return disk
    results.update(change)


def write_page(res: dict) -> None:
    c = res.get("claim_budget")
    lines = ["# The claim at the user's 50M-MAC budget, under a teacher as strong as users "
             "have", "", "Protocol: [docs/evidence/claim_budget.md]"
             "(../docs/evidence/claim_budget.md). Raw results: `reports/claim_budget.json`; "
             "the search's trials: `reports/searches/claim-budget-50m.csv`.", ""]
    t = res.get("teacher")
    done = res.get("teacher_progress", {}).get("epochs", {})
    if t:
        lines.append(f"Teacher: {t['arch']}, {t['epochs']} epochs, {100 * t['test_accuracy']:.2f}%"
                     f" test (target at least 90%: "
                     f"{'met' if t['test_accuracy'] >= 0.9 else 'not met'}), "
                     f"{t['cpu_minutes']:.0f} CPU minutes on one core of {t['cpu']}.")
    else:
        cpu = sum(e["cpu_s"] for e in done.values()) / 60
        lines.append(f"Teacher: training, {len(done)} of {TEACHER['epochs']} epochs done "
                     f"({cpu:.0f} CPU minutes so far, one core). No other stage has run.")
    if c:
        f, o = c["found"]["accuracies"], c["opponent_runs"]["accuracies"]
        lines += ["", f"Found: trial {c['found']['trial']}, {c['found_arch']} "
                  f"({c['found_macs'] / 1e6:.2f}M MACs); test accuracy per seed "
                  f"{', '.join(f'{100 * v:.2f}%' for v in f) or '-'}.",
                  f"Opponent (by seed-0 validation accuracy): {c['opponent'] or 'not yet'}; "
                  f"{', '.join(f'{100 * v:.2f}%' for v in o) or '-'}.",
                  f"Verdict: {c['verdict']}"
                  + (f" (margin {100 * c['margin']:+.2f} points, Welch p "
                     f"{c['welch_p']:.3g}, larger seed spread {100 * c['spread']:.2f} "
                     f"points)" if "margin" in c and c["welch_p"] is not None else "") + "."]
        if c.get("ranking", {}).get("tau") is not None:
            r = c["ranking"]
            lines.append(f"Ranking: Kendall tau {r['tau']:.2f} over {r['students']} students, "
                         f"95% interval [{r['interval'][0]:.2f}, {r['interval'][1]:.2f}]"
                         + ("" if r["holds"] else ": includes 0, no evidence the ranker "
                            "holds") + ".")
        lines.append(f"Journey (minutes): {json.dumps(c['journey'])}.")
    OUT.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stage", choices=["teacher", "run", "page"])
    ap.add_argument("--tiny", action="store_true", help="a tiny run on digits (its test): "
                    "a 1-epoch resnet8 teacher, 3 trials of 5 steps, 0.2-epoch distillations, "
                    "2 seeds, written under --work only")
    ap.add_argument("--work", type=Path, default=WORK)
    args = ap.parse_args(argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    if args.tiny:
        return _tiny(args.work, argv)
    results = Results(OUT, figures=figures, page=write_page)
    if args.stage == "teacher":
        stage_teacher(results)
    elif args.stage == "page":
        results.update(lambda d: d)
    else:
        stage_teacher(results)
        proto = Protocol()
        cfg, record = stage_search(results, TEACHER_PATH, data_spec(), proto, WORK)
        save_setup(results, cfg, record, proto, argv)
        stage_distill(results, cfg, record, proto, WORK)


def _tiny(work: Path, argv: list[str]) -> None:
    """The whole chain on digits in seconds: what the test runs."""
    from kdnas.teacher.train import train_teacher

    global OUT, KEPT
    kept = OUT, KEPT
    OUT, KEPT = work / "claim_budget.json", work / "kept"
    try:
        work.mkdir(parents=True, exist_ok=True)
        teacher = work / "teacher.pt"
        if not teacher.exists():
            train_teacher("digits", "resnet8", epochs=1, out=teacher)
        results = Results(OUT, figures=figures, page=write_page)
        proto = Protocol(budget="0.8MFLOPs", trials=3, epochs=0.2, seeds=(0, 1),
                         next_best=1, steps=5, bootstrap=200,
                         exports=False)  # a 2-step student's logits fail the export check
        cfg, record = stage_search(results, teacher, "digits", proto, work)
        save_setup(results, cfg, record, proto, argv)
        stage_distill(results, cfg, record, proto, work)
    finally:
        OUT, KEPT = kept


if __name__ == "__main__":
    main()
