"""Faults at scale: several workers on one study, killed with SIGKILL at random moments and
replaced, until the study reaches its count; then every invariant a user relies on is checked.

    python -m benchmarks.chaos                 # 4 workers, 20 kills, 24 trials on digits
    python -m benchmarks.chaos --kills 5 --trials 8

Writes reports/chaos.json and reports/chaos.md: kills, retries, the wall time against an
undisturbed run of the same study, and each invariant. SQLite on this machine; the same
driver takes a PostgreSQL URL (--storage) where one is reachable.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[1]


def search_argv(teacher: Path, work: Path, study: str, trials: int, steps: int,
                storage: str | None) -> list[str]:
    return ["search", "--teacher", str(teacher), "--data", "digits", "--val-fraction", "0.2",
            "--budget", "0.5MFLOPs", "--study", study, "--workdir", str(work / "runs"),
            "--reports", str(work / "reports"), "--no-latency", "--no-noise-check",
            "--trials", str(trials), "--steps", str(steps),
            *(["--storage", storage] if storage else [])]


def _start(argv: list[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with open(log, "a") as out:
        return subprocess.Popen([sys.executable, "-m", "kdnas", *argv], stdout=out,
                                stderr=subprocess.STDOUT, cwd=ROOT, env=env)


def _training_pids(url: str, study: str) -> set[int]:
    """The pids of this host's workers whose trial is training now."""
    import socket

    try:
        s = optuna.load_study(study_name=study, storage=url)
    except Exception:  # not made yet
        return set()
    host, pids = socket.gethostname(), set()
    for t in s.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        h, _, pid = str(t.user_attrs.get("worker", "")).rpartition(":")
        if h == host and pid.isdigit() and t.user_attrs.get("training"):
            pids.add(int(pid))
    return pids


def run_workers(argv: list[str], work: Path, workers: int, kills: int, seed: int,
                timeout: float, url: str, study: str, say=print,
                every: tuple[float, float] = (1.0, 4.0)) -> dict:
    """``workers`` processes of ``argv``; while they run, every 1-4 s (seeded) a worker that
    is training a trial (looked up in the study ``study`` at ``url``; ``every``: the range of
    seconds between two looks) is killed with SIGKILL
    and a replacement started, ``kills`` times; then wait for all to finish. Returns the kills
    made, the wall seconds and the exit codes."""
    rng = random.Random(seed)
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    live = [_start(argv, logs / f"w{i}.log") for i in range(workers)]
    started, made, codes = workers, [], []
    while time.perf_counter() - t0 < timeout:
        time.sleep(rng.uniform(*every))
        for p in [p for p in live if p.poll() is not None]:
            codes.append(p.returncode)
            live.remove(p)
        if not live:
            break
        busy = _training_pids(url, study) if len(made) < kills else set()
        training = [p for p in live if p.pid in busy]
        if training:
            victim = rng.choice(training)
            victim.send_signal(signal.SIGKILL)
            victim.wait()  # reaped: a zombie would still look alive to the others
            live.remove(victim)
            made.append({"at_s": round(time.perf_counter() - t0, 1), "pid": victim.pid})
            live.append(_start(argv, logs / f"w{started}.log"))
            started += 1
            say(f"kill {len(made)}/{kills}: pid {victim.pid}, replaced")
    for p in live:  # past the timeout: stop what is left, it is reported
        if p.poll() is None:
            p.kill()
            p.wait()
            codes.append("killed at the timeout")
        else:
            codes.append(p.returncode)
    return {"kills": made, "wall_seconds": time.perf_counter() - t0, "exit_codes": codes,
            "processes": started}


def check_study(url: str, study_name: str, trials: int, study_dir: Path) -> dict:
    """The invariants after the run, each True when it holds, with the figures behind it."""
    from kdnas.search.storage import load_record
    from kdnas.report.frames import front_frame, trials_frame

    study = optuna.load_study(study_name=study_name, storage=url)
    all_trials = study.get_trials(deepcopy=False)
    trained = [t for t in all_trials if t.user_attrs.get("trained")]
    killed = [t for t in all_trials if t.state == TrialState.FAIL
              and "died" in str(t.user_attrs.get("error", ""))]
    specs = [t.user_attrs["spec_id"] for t in trained]
    retried = {t.user_attrs.get("retry_of") for t in all_trials} - {None}
    # a killed candidate: trained again, or given up after its retries, with the reason
    killed_specs = {t.user_attrs.get("spec_id") for t in killed} - {None}
    unresolved = sorted(s for s in killed_specs if s not in specs
                        and not any(t.number in retried for t in killed
                                    if t.user_attrs.get("spec_id") == s))
    record = load_record(study)
    best = {t.number for t in study.best_trials if t.user_attrs.get("trained")}
    front = set(front_frame(trials_frame(record)).trial.astype(int)) if trained else set()
    caches = [c for c in (study_dir / "teacher_cache").iterdir() if c.is_dir()] \
        if (study_dir / "teacher_cache").exists() else []
    return {
        "trained": len(trained), "killed_trials": len(killed), "retries": len(retried),
        "checks": {
            "reached its count": len(trained) >= trials,
            "no candidate trained twice": len(specs) == len(set(specs)),
            "no trial left RUNNING": not any(t.state == TrialState.RUNNING
                                             for t in all_trials),
            "every killed candidate trained again or given up with its reason":
                not unresolved,
            "the front is Optuna's best_trials": front == best,
            "the teacher cache is complete, no half-written one left": bool(caches) and all(
                (c / "COMPLETE").exists() for c in caches),
        }}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=ROOT / ".bench" / "chaos")
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "chaos.json")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--storage", help="a database URL (default: SQLite in --work)")
    args = ap.parse_args(argv)
    import shutil

    from kdnas.teacher.train import train_teacher

    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    teacher = args.work / "teacher.pt"
    train_teacher("digits", "resnet14", epochs=15, out=teacher, val_fraction=0.2)
    res = {"setup": vars(args) | {"work": str(args.work), "out": str(args.out)}}
    for name, kills in (("undisturbed", 0), ("chaos", args.kills)):
        work = args.work / name
        url = args.storage or f"sqlite:///{work / 'runs' / name / 'study.db'}"
        run = run_workers(search_argv(teacher, work, name, args.trials, args.steps,
                                      args.storage), work, args.workers, kills, args.seed,
                          timeout=3600, url=url, study=name)
        res[name] = {**run, **check_study(url, name, args.trials, work / "runs" / name)}
        print(f"{name}: {res[name]['wall_seconds']:.0f} s, {len(run['kills'])} kills, "
              f"{res[name]['retries']} retries, checks {res[name]['checks']}")
    args.out.write_text(json.dumps(res, indent=1))
    c, u = res["chaos"], res["undisturbed"]
    lines = ["# Faults at scale: workers killed at random", "",
             f"{args.workers} workers on one SQLite study of {args.trials} digits candidates "
             f"({args.steps} steps each); the driver kills a random worker with SIGKILL every "
             f"1-4 s, always one that is training a trial ({len(c['kills'])} kills, seed "
             f"{args.seed}), and starts a replacement. "
             f"Raw figures: `{args.out.name}`.", "",
             "| run | wall s | processes | kills | trials killed | retries | trained |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in (("undisturbed", u), ("chaos", c)):
        lines.append(f"| {name} | {r['wall_seconds']:.0f} | {r['processes']} | "
                     f"{len(r['kills'])} | {r['killed_trials']} | {r['retries']} | "
                     f"{r['trained']} |")
    lines += ["", "| invariant after the chaos run | holds |", "| --- | --- |"]
    lines += [f"| {k} | {'yes' if v else '**no**'} |" for k, v in c["checks"].items()]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
