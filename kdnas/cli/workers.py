"""``kdnas search --workers N``: N trial processes on this machine share one study.

Worker 0 is the command itself; workers 1..N-1 are the same command started again with a
hidden ``--worker-index``, each with its share of the CPU threads and its own sampler seed,
its output in the study folder's ``workers/``. With several CUDA GPUs visible and ``--device``
auto or cuda, each worker gets one GPU of its own (worker k the k-th, round robin), through
``CUDA_VISIBLE_DEVICES``. The study's storage (SQLite with a lock
timeout, or the ``--storage`` given) is what they share; the study, not a worker, counts the
trained candidates, so all stop together at ``--trials``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch


def threads_per_worker(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // workers)


def gpu_for(worker: int, device: str) -> str | None:
    """The one GPU (an entry of ``CUDA_VISIBLE_DEVICES``) worker ``worker`` trains on, when
    several are visible and ``device`` names none in particular; else None."""
    count = torch.cuda.device_count() if device in ("auto", "cuda") else 0
    if count < 2:
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [v.strip() for v in visible.split(",")] if visible else [str(i) for i in range(count)]
    return ids[worker % min(count, len(ids))]


def start_helpers(argv: list[str], workers: int, log_dir: Path, device: str = "auto"
                  ) -> list[subprocess.Popen]:
    """Start workers 1..``workers``-1 of this command; sets this process's thread share."""
    threads = threads_per_worker(workers)
    torch.set_num_threads(threads)
    base = _without_workers(argv)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    log_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    for k in range(1, workers):
        gpu = gpu_for(k, device)
        with open(log_dir / f"worker-{k}.log", "ab") as out:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "kdnas", *base, "--worker-index", str(k)],
                stdout=out, stderr=subprocess.STDOUT,
                env=env if gpu is None else dict(env, CUDA_VISIBLE_DEVICES=gpu)))
    return procs


def wait_helpers(procs: list[subprocess.Popen]) -> list[int]:
    """Wait for the helper workers (an interrupt reaches them too: they stop cleanly)."""
    codes = []
    for p in procs:
        while True:
            try:
                codes.append(p.wait())
                break
            except KeyboardInterrupt:  # a second Ctrl-C while they finish: keep waiting
                continue
    return codes


def _without_workers(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--workers", "--worker-index"):
            skip = True
            continue
        if a.startswith(("--workers=", "--worker-index=")):
            continue
        out.append(a)
    return out
