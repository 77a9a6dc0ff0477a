"""What every experiment needs, once: where the data and the kept teacher are, the results
file (one lock, read / update / put), the truth recipe and its loop (a run claimed by one
process, trained by :func:`kdnas.distill.candidate.train_candidate`, recorded as it ends),
candidates drawn in a MACs band as the sampler draws them, and the noise rule (Welch's test,
a margin against the seeds' SD).

Experiments are modules of this package, run as ``python -m benchmarks.NAME``; they import
this module and the product's public names, never each other's private ones.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks import headlines

ROOT = Path(__file__).resolve().parents[1]
ARCHIVE = Path(os.environ.get("KDNAS_CIFAR10_JPG",
                              ROOT.parent / "shared" / "datasets" / "cifar10-jpg.tar.gz"))
TRUTH_FACTOR = 8  # the ground truth: this many times the brief steps, from scratch


# ---- the results file ----------------------------------------------------------------------

class Results:
    """An experiment's JSON results file, shared by the processes that run it: every change is
    a read-modify-write under one lock (``update``), after which ``figures(res) -> res``
    recomputes what is derived from the raw runs and ``page(res)`` rewrites the page."""

    def __init__(self, path: Path, figures: Callable[[dict], dict] = lambda d: d,
                 page: Callable[[dict], None] | None = None) -> None:
        self.path, self.figures, self.page = Path(path), figures, page

    def read(self) -> dict:
        return json.loads(self.path.read_text()) if self.path.exists() else {}

    def update(self, change: Callable[[dict], dict]) -> dict:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            new = self.figures(change(self.read()))
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(new, indent=1))
            tmp.replace(self.path)
        if self.page is not None:
            self.page(new)
        headlines.refresh(self.path)
        return new

    def runs(self, field: str = "runs") -> dict:
        return self.read().get(field, {})

    def put(self, key: str, value: dict, field: str = "runs") -> dict:
        """Merge ``value`` (candidate id -> result) into ``field[key]``."""
        def change(disk: dict) -> dict:
            runs = disk.setdefault(field, {})
            runs[key] = {**runs.get(key, {}), **value}
            return disk
        return self.update(change)

    def drop(self, cid: str, field: str = "runs") -> dict:
        """Forget every run of candidate ``cid`` in ``field``."""
        def change(disk: dict) -> dict:
            for r in disk.get(field, {}).values():
                r.pop(cid, None)
            return disk
        return self.update(change)


def update_results(path: Path, update: Callable[[dict], dict]) -> dict:
    """``Results(path).update(update)``: one locked read-modify-write of a results file."""
    return Results(path).update(update)


@contextlib.contextmanager
def held(path: Path):
    """True while this process holds ``path``'s lock, False if another process does: the
    processes of one experiment never train the same run (the lock goes with its process)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


# ---- the truth recipe and loop -------------------------------------------------------------

def truth_recipe(base, seed: int, factor: int = TRUTH_FACTOR):
    """The ground truth's recipe: ``factor`` x the brief steps from scratch, with its own seed
    (initialisation and data order), a learning curve of five points."""
    return dataclasses.replace(base, steps=factor * base.steps, seed=seed,
                               eval_every=factor * base.steps // 5)


def result(out, seconds: float) -> dict:
    """What a run records: accuracy, steps in all, seconds and its learning curve."""
    return {"val_accuracy": out.val_accuracy, "steps": out.total_steps,
            "seconds": round(seconds, 1), "curve": out.result.points}


def progress(label: str, every: float = 60.0):
    """A progress callback that prints a line at most every ``every`` seconds, and the last."""
    last = [time.perf_counter()]

    def show(step: int, total: int, loss: float) -> None:
        if time.perf_counter() - last[0] > every or step == total:
            last[0] = time.perf_counter()
            print(f"  {label}: step {step}/{total} loss {loss:.3f}", flush=True)
    return show


def run_one(ctx, recipe, c: dict, spec: dict, init: int, work: Path, key: str,
            results: Results, field: str = "runs") -> bool:
    """Train candidate ``c`` (its ``spec``) from scratch with ``recipe`` as run ``key``,
    unless the results have it or another process is training it; checkpointed every epoch
    in ``work``, so an interrupted run resumes. True when this process trained it."""
    from kdnas.distill.candidate import train_candidate

    name = f"{key.replace('/', '-')}-{c['id']}"
    with held(work / "claims" / f"{name}.lock") as mine:
        if not mine:
            print(f"{c['arch']} {key}: another process trains it", flush=True)
            return False
        if c["id"] in results.runs(field).get(key, {}):
            return False
        t0 = time.perf_counter()
        out = train_candidate(ctx, spec, recipe, init=init,
                              checkpoint=work / "ckpt" / c["id"] / f"{key.replace('/', '-')}.pt",
                              progress=progress(f"{c['arch']} {key}"))
        results.put(key, {c["id"]: result(out, time.perf_counter() - t0)}, field)
    print(f"{c['arch']} {key}: {100 * out.val_accuracy:.2f}%", flush=True)
    return True


def drop_caches(root: Path, what: str) -> None:
    """A finished phase's teacher caches are read by no later run: up to 22 GB each."""
    if Path(root).exists():
        shutil.rmtree(root, ignore_errors=True)
        print(f"removed the teacher caches of the {what}")


# ---- candidates ----------------------------------------------------------------------------

def spec_of(c: dict, data) -> dict:
    """A recorded candidate's spec: its own, or sampled again from its params."""
    if "spec" in c:
        return c["spec"]
    import optuna

    from search_spaces import get_space

    return get_space(c["space"]).sample(optuna.trial.FixedTrial(c["params"]),
                                        in_channels=data.in_channels,
                                        num_classes=data.num_classes,
                                        input_size=data.input_size)


# ---- the noise rule ------------------------------------------------------------------------

def welch_p(a: list[float], b: list[float]) -> float | None:
    """Two-sided p-value of Welch's t-test between two arms' seeds: how often seed noise alone
    would part them this far (None where it is undefined)."""
    from scipy.stats import ttest_ind

    p = float(ttest_ind(a, b, equal_var=False).pvalue) if min(len(a), len(b)) > 1 else None
    return None if p is None or np.isnan(p) else p


def keep_trials(record, out: Path, name: str) -> Path:
    """An evidence search's trials kept with its results, as the study's ``trials.csv`` has
    them (``searches/NAME.csv`` beside the results file ``out``), so that "the pick is the
    best of N trials" can be checked from the repository without the study's database."""
    from kdnas.report import trials_frame

    path = Path(out).parent / "searches" / f"{name}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    trials_frame(record).to_csv(path, index=False)
    return path


def compare(a: list[float], b: list[float]) -> dict:
    """``a`` against ``b`` by the noise rule: margin of the means, Welch's p, and a tie where
    the margin is below the larger seed SD."""
    margin = statistics.fmean(a) - statistics.fmean(b)
    noise = max(statistics.stdev(a), statistics.stdev(b))
    return {"margin": margin, "welch_p": welch_p(a, b),
            "verdict": "tie" if abs(margin) < noise else "better" if margin > 0 else "worse"}


# ---- data and teacher ----------------------------------------------------------------------

def add_setup_args(ap: argparse.ArgumentParser, out: str = "search_quality.json") -> None:
    """The data, teacher and folders that the experiments share."""
    ap.add_argument("--data", help="a kdnas data spec (default: CIFAR-10 from the shared "
                    "archive, extracted into --work)")
    ap.add_argument("--per-class", type=int, help="a seeded subset of the CIFAR-10 archive")
    ap.add_argument("--work", type=Path, default=ROOT / ".bench" / "search_quality")
    ap.add_argument("--teacher-arch", default="resnet14")
    ap.add_argument("--teacher-epochs", type=float, default=10)
    ap.add_argument("--val-fraction", type=float, default=0.2, help="share of the training "
                    "images held out to rank on (default 0.2: 10,000 of CIFAR-10's 50,000)")
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / out)


def data_and_teacher(args) -> tuple[str, Path]:
    """The data spec, and the teacher kdnas trains on it once (kept in --work)."""
    from kdnas.bench.workload import make_subset
    from kdnas.teacher.train import train_teacher

    args.work.mkdir(parents=True, exist_ok=True)
    spec = args.data or "imagefolder:" + str(make_subset(
        ARCHIVE, args.work / "data", args.per_class, args.per_class and args.per_class // 4))
    teacher_path = args.work / f"teacher-{args.teacher_arch}.pt"
    kept = kept_teacher(args)
    if not teacher_path.exists() and kept and kept.exists():
        shutil.copyfile(kept, teacher_path)
        print(f"teacher: {kept.relative_to(ROOT)} (the one the recorded results used)")
    if not teacher_path.exists():
        print(f"training the teacher ({args.teacher_arch}, {args.teacher_epochs} epochs)")
        train_teacher(spec, args.teacher_arch, epochs=args.teacher_epochs, out=teacher_path,
                      val_fraction=args.val_fraction)
    if kept and not kept.exists():
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(teacher_path, kept)
    return spec, teacher_path


def kept_teacher(args) -> Path | None:
    """Where the teacher of the default study (all of the CIFAR-10 archive) is kept in the
    repository: every recorded result depends on it, and a new checkout has no --work, so
    without it the next run would train another teacher (over an hour on a CPU)."""
    if args.data or args.per_class:
        return None
    tag = f"{args.teacher_epochs:g}ep-val{args.val_fraction:g}"
    return ROOT / "benchmarks" / "teachers" / f"cifar10-{args.teacher_arch}-{tag}.pt"


def check_teacher(res: dict, digest: str, path: Path) -> None:
    """Refuse to add runs distilled from another teacher than the recorded ones (a --work
    folder lost and its teacher trained again differently, or another --teacher-arch)."""
    recorded = res.get("setup", {}).get("teacher_digest")
    if recorded and recorded != digest:
        raise SystemExit(
            f"the results in this file were distilled from a teacher with digest {recorded}; "
            f"{path} has digest {digest}. Put the recorded teacher back in --work, or write "
            "a new study with --out (and a new --work).")


def prepared(args, *, study: str, budget_macs: float, steps: int | None, seed: int,
             kd: str = "feature"):
    """The experiment's search config, teacher, data and brief recipe, prepared as a search
    prepares them: ``(cfg, teacher, data, base)``."""
    from kdnas.core.settings import SearchConfig
    from kdnas.teacher.prepare import prepare

    spec, teacher_path = data_and_teacher(args)
    cfg = SearchConfig(study=study, teacher=str(teacher_path), data=spec,
                       budget=f"{budget_macs / 1e6:.6g}MMACs", steps=steps, latency=False,
                       kd=kd, noise_check=False, cache_limit_gb=64, seed=seed,
                       references=("none",),  # the experiments train what they name
                       workdir=str(args.work / "runs"), reports=str(args.work / "reports"))
    cfg, teacher, data, _ = prepare(cfg)
    return cfg, teacher, data, cfg.train_config(len(data.train_y))
