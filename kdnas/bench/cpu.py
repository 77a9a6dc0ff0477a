"""``kdnas bench``'s CPU figures (key ``cpu``): how candidates are trained at once on this CPU
by default, against one at a time with every core a thread, alone and beside a busy process;
and how far the trial-time estimates told to the user are from what the trials took.

Like for like: the same students (of each family, in a MACs band, drawn with a fixed seed),
the same recipe (the search's default method, its teacher cache written before any timing),
the same steps and initialisations, trained by :func:`kdnas.distill.candidate.train_candidate`
in worker processes that take the next student from one queue (as a study's workers take the
next trial):

- ``one_at_a_time``: one process with every usable core a thread (kdnas' default before);
- ``auto``: the processes and threads ``kdnas search --workers auto`` plans now
  (:func:`kdnas.device.plan_workers`);
- each again beside a busy process (a training loop at torch's default threads, as another
  PyTorch job or a second kdnas would run), the plan made after it started, as a user's is.

Each worker tells each student its training time before it trains, by the search's rule
(:func:`kdnas.search.trial.scaled_estimate` of a step-time probe), and records what it took.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np

# a busy neighbour: a small convolutional net trained in a loop at torch's default threads
BUSY = """
import torch
m = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(),
                        torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1),
                        torch.nn.Flatten(), torch.nn.Linear(32, 10))
opt = torch.optim.SGD(m.parameters(), lr=0.01)
x, y = torch.randn(64, 3, 32, 32), torch.zeros(64, dtype=torch.long)
print("busy", torch.get_num_threads(), flush=True)
while True:
    opt.zero_grad()
    torch.nn.functional.cross_entropy(m(x), y).backward()
    opt.step()
"""


@dataclass(frozen=True)
class CpuLoad:
    per_family: int = 2  # students of each family
    lo: float = 5e6  # their MACs band
    hi: float = 25e6
    steps: int = 60  # of the brief recipe's batches, per student
    # the default before, beside the busy process too (a figure for the page, no target;
    # the slowest setting: the quick form leaves it out)
    one_at_a_time_busy: bool = True

    @classmethod
    def quick(cls) -> CpuLoad:
        return cls(per_family=1, lo=0.5e6, hi=4e6, steps=3, one_at_a_time_busy=False)


def students(data, load: CpuLoad) -> list[dict]:
    """The students: ``per_family`` of each family in the band, seeded."""
    from kdnas.bench.workload import FAMILIES, draw_in_band

    out = []
    for name, space, fixed in FAMILIES:
        if name == "resnet_bottleneck":
            continue
        out += draw_in_band(space, data, load.lo, load.hi, load.per_family,
                            np.random.RandomState(0), fixed=fixed)
    return out


def _worker(cfg, steps: int, threads: int, jobs, results) -> None:
    """One worker process: trains the students it takes from ``jobs`` with ``threads``."""
    import torch

    torch.set_num_threads(threads)
    from kdnas.distill.candidate import init_seed, train_candidate
    from kdnas.distill.timing import time_step
    from kdnas.search.costs import train_context
    from kdnas.search.trial import scaled_estimate
    from kdnas.teacher.prepare import prepare
    from search_spaces import get_space

    cfg, teacher, data, _ = prepare(cfg)
    ctx = train_context(cfg, teacher, data)
    tcfg = dataclasses.replace(cfg.train_config(len(data.train_y)), steps=steps, eval_every=0)
    took: list[float] = []
    while (job := jobs.get()) is not None:
        i, spec = job
        raw = time_step(get_space(spec["space"]).build(spec), data.input_shape, tcfg) \
            * tcfg.steps / 1e3
        estimate = scaled_estimate(raw, took)
        t0 = time.perf_counter()
        out = train_candidate(ctx, spec, tcfg, init=init_seed(cfg.seed, i))
        seconds = time.perf_counter() - t0
        took.append(out.result.seconds / raw)
        results.put({"student": i, "estimate": estimate, "seconds": seconds,
                     "train_seconds": out.result.seconds, "threads": threads,
                     "val_accuracy": out.val_accuracy})


def _train_all(cfg, specs: list[dict], steps: int, workers: int, threads: int) -> dict:
    """``specs`` trained by ``workers`` processes of ``threads`` threads; wall time and runs."""
    ctx = mp.get_context("spawn")
    jobs, results = ctx.Queue(), ctx.Queue()
    for job in enumerate(specs):
        jobs.put(job)
    for _ in range(workers):
        jobs.put(None)
    t0 = time.perf_counter()
    procs = [ctx.Process(target=_worker, args=(cfg, steps, threads, jobs, results))
             for _ in range(workers)]
    for p in procs:
        p.start()
    runs = [results.get() for _ in specs]
    for p in procs:
        p.join()
    wall = time.perf_counter() - t0
    if any(p.exitcode for p in procs):
        raise RuntimeError("a benchmark worker failed")
    return {"workers": workers, "threads": threads, "wall_seconds": wall,
            "runs": sorted(runs, key=lambda r: r["student"])}


def _plan(cfg, count: int) -> tuple[int, int]:
    """The plan ``kdnas search --workers auto`` makes now, for a study of ``count`` trials."""
    import torch

    from kdnas.device import plan_workers

    before = torch.get_num_threads()
    try:
        return plan_workers("auto", cfg.device, count)
    finally:
        torch.set_num_threads(before)


def _busy() -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", BUSY], stdout=subprocess.PIPE, text=True)
    proc.stdout.readline()  # it is training
    time.sleep(2.0)  # and has been for a while when the plan looks at the machine
    return proc


def run_cpu(cfg, data, load: CpuLoad, log=print) -> dict:
    """The CPU figures: ``cfg`` a search config whose teacher cache is written here first."""
    import torch

    from kdnas.device import omp_threads, usable_cores
    from kdnas.distill.candidate import init_seed, train_candidate
    from kdnas.search.costs import train_context
    from kdnas.teacher.prepare import prepare

    specs = [c["spec"] for c in students(data, load)]
    cfg, teacher, data, _ = prepare(cfg)
    tcfg = dataclasses.replace(cfg.train_config(len(data.train_y)), steps=load.steps,
                               eval_every=0)
    train_candidate(train_context(cfg, teacher, data), specs[0], tcfg,  # the cache, untimed
                    init=init_seed(cfg.seed, 0))
    cores = min(usable_cores(), omp_threads() or usable_cores())  # as a search takes them
    log(f"  {len(specs)} students of {load.steps} steps: one at a time with {cores} threads")
    one = _train_all(cfg, specs, load.steps, 1, cores)
    workers, threads = _plan(cfg, len(specs))
    log(f"  as planned: {workers} worker(s) of {threads} thread(s)")
    auto = _train_all(cfg, specs, load.steps, workers, threads)
    busy = _busy()
    try:
        b_workers, b_threads = _plan(cfg, len(specs))
        log(f"  beside a busy process: {b_workers} worker(s) of {b_threads} thread(s)"
            + (f"; then one at a time with {cores} threads" if load.one_at_a_time_busy
               else ""))
        auto_busy = _train_all(cfg, specs, load.steps, b_workers, b_threads)
        one_busy = _train_all(cfg, specs, load.steps, 1, cores) \
            if load.one_at_a_time_busy else None
    finally:
        busy.kill()
        busy.wait()
    return cpu_figures(one, auto, auto_busy, one_busy,
                       {"usable_cores": cores, "torch_default_threads": torch.get_num_threads(),
                        "load": dataclasses.asdict(load), "students": [
                            {"space": s["space"], "arch": _arch(s)} for s in specs]})


def _arch(spec: dict) -> str:
    from search_spaces import describe

    return describe(spec)


def estimate_error(runs: list[dict]) -> float:
    """Median |told / took - 1| of the students' training times."""
    return statistics.median(abs(r["estimate"] / r["train_seconds"] - 1) for r in runs)


def cpu_figures(one: dict, auto: dict, auto_busy: dict, one_busy: dict | None,
                setup: dict) -> dict:
    alone, contended = estimate_error(auto["runs"]), estimate_error(auto_busy["runs"])
    runs = {"one_at_a_time": one, "auto": auto, "auto_busy": auto_busy}
    if one_busy is not None:
        runs["one_at_a_time_busy"] = one_busy
    return {
        "trials_per_hour_vs_one_at_a_time": one["wall_seconds"] / auto["wall_seconds"],
        "contended_slowdown": auto_busy["wall_seconds"] / auto["wall_seconds"],
        "contended_slowdown_one_at_a_time": None if one_busy is None else
        one_busy["wall_seconds"] / one["wall_seconds"],
        "estimate_error_median": max(alone, contended),
        "estimate_error": {"alone": alone, "contended": contended,
                           "one_at_a_time": estimate_error(one["runs"])},
        "runs": runs, **setup}
