"""``kdnas search --workers N``: N trial processes on this machine share one study (``auto``,
the default: :func:`kdnas.device.resolve_workers`).

Worker 0 is the command itself; workers 1..N-1 are the same command started again with a
hidden ``--worker-index``, each with its share of the CPU threads and its own sampler seed,
its output in the study folder's ``workers/``. With several CUDA GPUs visible and ``--device``
auto or cuda, each worker gets one GPU of its own (worker k the k-th, round robin), through
``CUDA_VISIBLE_DEVICES``. The study's storage (SQLite with a lock
timeout, or the ``--storage`` given) is what they share; the study, not a worker, counts the
trained candidates, so all stop together at ``--trials``. A helper stopped by a hung trial
is started again (:class:`Helpers`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from kdnas.search.watchdog import HUNG_EXIT

# torch (through kdnas.device) is imported where it is used: ``--help`` stays fast


def gpu_for(worker: int, device: str) -> str | None:
    """The one GPU (an entry of ``CUDA_VISIBLE_DEVICES``) worker ``worker`` trains on, when
    several are visible and ``device`` names none in particular; else None."""
    from kdnas.device import shared_gpus

    count = shared_gpus(device)
    if count < 2:
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [v.strip() for v in visible.split(",")] if visible else [str(i) for i in range(count)]
    return ids[worker % min(count, len(ids))]


RESTARTS = 3  # times a helper stopped by a hung trial is started again


class Helpers:
    """Workers 1..N-1 of this command (``start``), each its own process logging to
    ``workers/worker-K.log``; this process takes its share of the CPU threads.

    A helper stopped by a hung trial (exit status HUNG_EXIT: the trial is recorded as failed,
    and a hung thread cannot be stopped, so the process ends) is started again, at most
    RESTARTS times each, so the study keeps its N workers: at each of worker 0's events
    (``revive``) and while waiting for the helpers at the end (``wait``; a restarted helper
    finds the study at its count and ends at once, or trains what is missing)."""

    def __init__(self, say: Callable[[str], None] = print) -> None:
        self.procs: dict[int, subprocess.Popen] = {}
        self.restarts: dict[int, int] = {}
        self.say = say

    def start(self, argv: list[str], workers: int, log_dir: Path, device: str = "auto",
              threads: int | None = None) -> None:
        import torch

        from kdnas.device import threads_per_worker

        threads = threads or threads_per_worker(workers)
        torch.set_num_threads(threads)
        self.base, self.log_dir, self.device = _without_workers(argv), log_dir, device
        self.env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        log_dir.mkdir(parents=True, exist_ok=True)
        for k in range(1, workers):
            self._spawn(k)

    def command(self, k: int) -> list[str]:
        return [sys.executable, "-m", "kdnas", *self.base, "--worker-index", str(k)]

    def _spawn(self, k: int) -> None:
        gpu = gpu_for(k, self.device)
        with open(self.log_dir / f"worker-{k}.log", "ab") as out:
            self.procs[k] = subprocess.Popen(
                self.command(k), stdout=out, stderr=subprocess.STDOUT,
                env=self.env if gpu is None else dict(self.env, CUDA_VISIBLE_DEVICES=gpu))

    def _restart_if_hung(self, k: int, code: int | None) -> bool:
        if code != HUNG_EXIT or self.restarts.get(k, 0) >= RESTARTS:
            return False
        self.restarts[k] = self.restarts.get(k, 0) + 1
        self.say(f"worker {k} stopped on a hung trial (recorded as failed): started again "
                 f"({self.restarts[k]} of at most {RESTARTS} times)")
        self._spawn(k)
        return True

    def revive(self) -> list[int]:
        """Start again each helper stopped by a hung trial; the workers restarted."""
        return [k for k, p in list(self.procs.items()) if self._restart_if_hung(k, p.poll())]

    def wait(self) -> list[int]:
        """Each helper's exit status, once all have ended (an interrupt reaches them too: they
        stop cleanly; one stopped by a hung trial is started again first)."""
        codes = {}
        for k in list(self.procs):
            while True:
                try:
                    code = self.procs[k].wait()
                except KeyboardInterrupt:  # a second Ctrl-C while they finish: keep waiting
                    continue
                if not self._restart_if_hung(k, code):
                    codes[k] = code
                    break
        return [codes[k] for k in sorted(codes)]


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
