"""``kdnas bench --device cuda``: the figures a GPU user needs, measured on their GPU.

A kdnas search on the whole CIFAR-10 training set (the JPEG archive), 5 epochs a trial, a
50M-MAC budget, FitNets distillation over ResNets (pinned: the figures recorded so far were
measured so; the search's defaults are ``--kd dkd-ls`` over every family), as ``kdnas search
--device cuda`` runs it. Reported:
seconds per trained trial (median, and where they went), trials per hour, the projected time
of 100 trials against the goal of 15 minutes on one H100, and the GPU's utilisation sampled
while the trials train (``nvidia-smi``, every half second). The figures go under ``gpu`` in
``benchmarks.json`` beside the CPU figures of an earlier ``kdnas bench``, and into their own
section of ``BENCHMARKS.md``. On a CPU the same code runs (the tests use it so that it cannot
rot) and says that no GPU was measured.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

GOAL_TRIALS, GOAL_MINUTES = 100, 15.0


@dataclass(frozen=True)
class GpuWorkload:
    per_class: int | None = None  # training images a class: None = all 5,000 (50,000)
    test_per_class: int | None = None
    budget_macs: float = 50e6
    epochs: float = 5
    trials: int = 6

    @classmethod
    def quick(cls) -> GpuWorkload:  # the test's: every code path, on a CPU, in seconds
        return cls(per_class=12, test_per_class=4, budget_macs=5e6, epochs=1, trials=2)


class UtilisationSampler:
    """The GPU's utilisation (%) every ``every`` seconds from ``nvidia-smi`` in a thread;
    nothing (and no error) where there is no ``nvidia-smi`` or no CUDA device."""

    def __init__(self, dev: torch.device, every: float = 0.5):
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._cmd = None
        if dev.type == "cuda" and shutil.which("nvidia-smi"):
            self._cmd = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,"
                         "nounits", "-i", str(dev.index or 0)]
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)

    def _run(self, every: float) -> None:
        while self._cmd and not self._stop.wait(every):
            try:
                out = subprocess.run(self._cmd, capture_output=True, text=True, timeout=5)
                self.samples.append(float(out.stdout.split()[0]))
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                return

    def __enter__(self) -> UtilisationSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def summary(self) -> dict | None:
        if not self.samples:
            return None
        return {"mean_percent": statistics.fmean(self.samples),
                "median_percent": statistics.median(self.samples),
                "samples": len(self.samples)}


def run_gpu(work: Path, device: str, load: GpuWorkload, archive: Path,
            teacher_path: Path | None = None, log=print) -> dict:
    """Train ``load.trials`` candidates with kdnas on ``device``; the figures as a dict."""
    from kdnas.bench.workload import make_subset, make_teacher
    from kdnas.core.settings import SearchConfig
    from kdnas.device import describe, resolve
    from kdnas.report.frames import time_per_trial
    from kdnas.search.loop import run_search
    from kdnas.teacher.prepare import prepare
    from kdnas.search.storage import load_record

    dev = resolve(device)
    name = f"cifar10-{load.per_class or 'all'}-{load.test_per_class or 'all'}"
    root = make_subset(archive, work / name, load.per_class, load.test_per_class)
    teacher_path = teacher_path or make_teacher(root, "resnet56", work / "teacher-resnet56.pt")
    cfg = SearchConfig(study="bench-gpu", teacher=str(teacher_path), data=f"imagefolder:{root}",
                       budget=f"{load.budget_macs / 1e6:g}MMACs", trials=load.trials,
                       epochs=load.epochs, noise_check=False, latency=False, space="resnet",
                       kd="feature",
                       device=str(dev), workdir=str(work / "runs"), reports=str(work / "reports"))
    shutil.rmtree(cfg.study_dir, ignore_errors=True)
    log(f"GPU benchmark on {describe(dev)}: {load.trials} trials of {load.epochs:g} epochs")
    t0 = time.perf_counter()
    cfg, teacher, data, _ = prepare(cfg)
    with UtilisationSampler(dev) as util:
        out = run_search(cfg, teacher, data)
    wall = time.perf_counter() - t0
    record = load_record(out.study)
    trained = [t for t in record.trials if t.trained]
    per = time_per_trial(record) or {"median_seconds": float("nan"), "shares": {}}
    median = per["median_seconds"]
    return {
        "device": describe(dev), "trained": len(trained), "train_images": len(data.train_y),
        "epochs": load.epochs, "budget_macs": load.budget_macs, "wall_seconds": wall,
        "trial_seconds_median": median, "trial_macs": [t.cost["macs"] for t in trained],
        "trial_seconds": [t.time.get("total") for t in trained],
        "val_accuracy": [t.val_accuracy for t in trained],
        "trials_per_hour": 3600 / median if median == median and median > 0 else None,
        f"minutes_for_{GOAL_TRIALS}_trials": GOAL_TRIALS * median / 60,
        "goal_minutes": GOAL_MINUTES, "shares": per["shares"],
        "utilisation": util.summary(),
    }


def gpu_lines(gpu: dict | None) -> list[str]:
    """The GPU section of BENCHMARKS.md."""
    lines = ["## On a GPU", ""]
    if not gpu or not gpu.get("device", "").startswith("cuda"):
        return lines + ["Not measured: no GPU was visible to the runs behind this page. On a "
                        "machine with one, `kdnas bench --device cuda` trains "
                        f"{GpuWorkload.trials} candidates of a {GpuWorkload.budget_macs / 1e6:g}"
                        f"M-MAC budget for {GpuWorkload.epochs:g} epochs of CIFAR-10 each and "
                        "adds the time per trial, trials per hour and the GPU's utilisation "
                        "here (the goal: 100 such trials in 15 minutes on one H100).", ""]
    u = gpu.get("utilisation")
    minutes = gpu[f"minutes_for_{GOAL_TRIALS}_trials"]
    shares = ", ".join(f"{k} {100 * v:.0f}%" for k, v in sorted(
        gpu["shares"].items(), key=lambda kv: -kv[1]) if v >= 0.005)
    return lines + [
        f"Device {gpu['device']}. {gpu['trained']} trials, each {gpu['epochs']:g} epochs of "
        f"{gpu['train_images']} CIFAR-10 images, budget {gpu['budget_macs'] / 1e6:g}M MACs "
        f"(students of {min(gpu['trial_macs']) / 1e6:.1f}-{max(gpu['trial_macs']) / 1e6:.1f}"
        "M MACs), FitNets distillation, ResNets.", "",
        "| figure | value |", "| --- | --- |",
        f"| seconds per trial (median) | {gpu['trial_seconds_median']:.1f} |",
        f"| trials per hour | {gpu['trials_per_hour']:.0f} |",
        f"| {GOAL_TRIALS} trials | {minutes:.1f} min (goal: {GOAL_MINUTES:g} min, "
        f"{'met' if minutes <= GOAL_MINUTES else '**not met**'}) |",
        "| GPU utilisation while training | " + (
            f"{u['mean_percent']:.0f}% mean, {u['median_percent']:.0f}% median "
            f"({u['samples']} samples)" if u else "not sampled (no nvidia-smi)") + " |",
        "", f"Where a trial's time went: {shares}.", ""]
