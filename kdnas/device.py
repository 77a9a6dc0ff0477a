"""Where training runs (``--device auto|cpu|cuda|cuda:N``) and what that changes.

On a CPU nothing changes: float32, channels_last, the loss read back every step. On CUDA the
data and the teacher's outputs live on the device, the loss is read back every
:func:`sync_every` steps instead of every step, so the host does not wait for the device, and
a family's students train in bf16 autocast (parameters, BatchNorm statistics and the losses
float32) only where that was measured faster at equal accuracy (:data:`BF16_FAMILIES`);
float32 elsewhere; and in the contiguous (NCHW) layout only where that was measured faster
than channels_last (:data:`NCHW_FAMILIES`), channels_last elsewhere.
"""

from __future__ import annotations

import contextlib
import os
import time

import torch

from kdnas.core.errors import KdnasError
from kdnas.core.settings import WORKERS_PER_GPU


def resolve(text: str | torch.device | None) -> torch.device:
    """``auto`` (or None): the first CUDA device when one is visible, else the CPU;
    ``cpu``, ``cuda`` or ``cuda:N``: that device, which must exist."""
    if isinstance(text, torch.device):
        return text
    t = (text or "auto").strip().lower()
    if t == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(t)
    except (RuntimeError, ValueError):
        raise KdnasError(f"unknown device {text!r}: use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type != "cuda":
        raise KdnasError(f"device {text!r} is not supported: use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise KdnasError(f"--device {text}: no CUDA device is visible to this process (torch "
                         f"{torch.__version__}, CUDA build {torch.version.cuda or 'none'}); "
                         "use --device cpu, or check the driver and CUDA_VISIBLE_DEVICES")
    index = 0 if dev.index is None else dev.index
    if index >= torch.cuda.device_count():
        raise KdnasError(f"--device {text}: only {torch.cuda.device_count()} CUDA device(s) "
                         f"are visible (cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    return torch.device("cuda", index)


def describe(dev: torch.device) -> str:
    """``cpu``, or ``cuda:0 (NVIDIA H100 80GB HBM3)``: what reports state beside a figure."""
    if dev.type == "cuda":
        return f"{dev} ({torch.cuda.get_device_name(dev)})"
    return str(dev)


# Families whose students train faster in bf16 autocast than in float32 on a GPU, at equal
# accuracy: none measured so. The one measurement: resnet20 at batch 128 on an H200, 400 steps
# in 4.07 s under bf16 autocast against 3.43 s in float32 (students this small are bound by
# kernel launches, not arithmetic). The GPU benchmark times each family both ways.
BF16_FAMILIES: frozenset[str] = frozenset()


# Families whose students train faster in the contiguous (NCHW) layout than in channels_last
# on a GPU: none measured so. A CPU always trains channels_last (about 2.4x faster there).
# The one hint: a plain float32 channels_last loop of mobilenetv2_half on an H200 did not
# finish 430 steps in about 25 s (resnet20: 3.4 s), as if its depthwise convolutions took
# slow kernels in that layout. The GPU benchmark times each family in both layouts.
NCHW_FAMILIES: frozenset[str] = frozenset()


def channels_last_for(family: str | None, dev: torch.device) -> bool:
    """False for a family in :data:`NCHW_FAMILIES` on CUDA; True otherwise, always on a CPU."""
    return not (dev.type == "cuda" and family in NCHW_FAMILIES)


def precision_for(family: str | None) -> str:
    """``bf16`` for a family in :data:`BF16_FAMILIES` (on CUDA only), else ``fp32``."""
    return "bf16" if family in BF16_FAMILIES else "fp32"


def autocast(dev: torch.device, precision: str = "fp32"):
    """bf16 autocast on CUDA when ``precision`` is ``bf16``; otherwise, and always on a CPU
    (float32 is what its kernels are fast at), nothing."""
    if dev.type == "cuda" and precision == "bf16":  # no cast cache inside a graph's capture
        return torch.autocast("cuda", dtype=torch.bfloat16,
                              cache_enabled=not torch.cuda.is_current_stream_capturing())
    return contextlib.nullcontext()


def sync_every(dev: torch.device) -> int:
    """Steps between reading the loss back: every step on a CPU (it costs nothing there),
    every 50 on a GPU (each read makes the host wait for the device)."""
    return 1 if dev.type == "cpu" else 50


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (``taskset``, a container's
    cpuset), bounded by a cgroup CPU quota (``docker --cpus 1.5``: 1), not ``os.cpu_count()``,
    which counts the machine's."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # a platform without affinity
        cores = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        cores = min(cores, max(1, int(quota)))
    return max(1, cores)


def _cgroup_quota() -> float | None:
    """The CPU quota in cores of this process's cgroup (v2 ``cpu.max``, v1 ``cfs_quota_us``),
    or None when there is none."""
    try:
        text = open("/sys/fs/cgroup/cpu.max").read().split()
        if text and text[0] != "max":
            return int(text[0]) / int(text[1])
        return None
    except (OSError, ValueError, IndexError):
        pass
    try:
        quota = int(open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read())
        period = int(open("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def busy_cores(seconds: float = 0.3) -> float:
    """How many of this process's usable cores other work keeps busy now: the non-idle share
    of those cores' time in /proc/stat over ``seconds`` (this process waits meanwhile), times
    their count. 0.0 where /proc/stat cannot be read."""
    try:
        cpus = {f"cpu{i}" for i in os.sched_getaffinity(0)}
    except (AttributeError, OSError):
        cpus = None

    def sample() -> tuple[int, int]:
        idle = total = 0
        with open("/proc/stat") as f:
            for line in f:
                name, *fields = line.split()
                if not name.startswith("cpu") or name == "cpu" or (cpus and name not in cpus):
                    continue
                ticks = [int(v) for v in fields[:8]]
                idle += ticks[3] + ticks[4]  # idle and iowait
                total += sum(ticks)
        return idle, total

    try:
        i0, t0 = sample()
        time.sleep(seconds)
        i1, t1 = sample()
    except (OSError, ValueError, IndexError):
        return 0.0
    if t1 <= t0:
        return 0.0
    return max(0.0, 1 - (i1 - i0) / (t1 - t0)) * (len(cpus) if cpus else os.cpu_count() or 1)


def free_cores() -> int:
    """Usable cores that other work does not keep busy now (at least 1): what a job that
    starts now should use as threads, or as one-thread workers, rather than fight for the
    others (measured: a 2-thread search beside a busy process slowed 15-40x, where its share
    of the machine says 2x; reports/BENCHMARKS.md, cpu)."""
    usable = usable_cores()
    return max(1, min(usable, usable - round(busy_cores())))


# memory a CPU worker of a search may take (its own copy of the data, teacher and student,
# the teacher cache read memory-mapped): the most workers the free memory takes is
# MemAvailable / this
CPU_WORKER_MEMORY = 2 << 30


def resolve_workers(text: str | int, device: str, trials: int | None = None,
                    free: int | None = None) -> int:
    """``--workers``: a count, or ``auto``: on a CPU, one one-thread worker per free usable
    core (``free``, else :func:`free_cores`), at most ``trials`` and what the free memory
    takes; on CUDA,
    WORKERS_PER_GPU trial processes sharing each GPU the search may use, at most one per
    usable core.

    On a CPU, one thread per candidate and as many candidates at once as cores: the students
    a search trains are small and many-op, so a second thread gains little per step (on 2
    cores, ShuffleNetV2 0.5x 1.27x, resnet8 1.93x) and loses most when it is descheduled;
    ``kdnas bench`` measures this default against one candidate at a time with every core as
    a thread (``cpu.trials_per_hour_vs_one_at_a_time``) and beside a busy process
    (``cpu.contended_slowdown``).

    WORKERS_PER_GPU (4) is provisional: one process kept an H200's SMs busy 0-26% of the time
    on students of a few million MACs (launch-bound), and several jobs sharing one GPU are
    reported at 3-4x one job's throughput. kdnas' own figure is the GPU benchmark's (``kdnas
    bench --device cuda`` trains the same candidates with 1 and with this many workers), and
    this number follows it."""
    t = str(text).strip().lower()
    if t != "auto":
        try:
            n = int(t)
        except ValueError:
            raise KdnasError(f"--workers {text!r}: give a number of processes or auto") \
                from None
        if n < 1:
            raise KdnasError(f"--workers must be at least 1, got {n}")
        return n
    if resolve(device).type != "cuda":
        n = min(free or free_cores(), max(1, _available_memory() // CPU_WORKER_MEMORY))
        return max(1, min(n, trials) if trials else n)
    gpus = max(1, shared_gpus(device))  # cuda:N: that one
    return max(1, min(WORKERS_PER_GPU * gpus, usable_cores()))


def _available_memory() -> int:
    """MemAvailable in bytes (/proc/meminfo); a large number where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 1 << 40


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """Each of ``workers`` processes' share of ``cores`` (default: the cores this process may
    use)."""
    return max(1, (cores or usable_cores()) // workers)


def plan_workers(text: str | int, device: str, trials: int | None = None) -> tuple[int, int]:
    """``--workers`` for a search: the processes and each one's threads, decided once. On a
    CPU the threads are the free cores' share (a busy core is left to its owner), set in this
    process now; on a GPU the usable cores' share. ``OMP_NUM_THREADS=N`` set by the user (a
    scheduler, a CI runner, a shell sharing the machine) caps a CPU search at N cores in all,
    its workers' threads together: it sets one job's threads, so one more worker beside it
    would take a core it was not given."""
    free = None
    if resolve(device).type == "cpu":  # OMP_NUM_THREADS, where set, caps the cores it takes
        free = min(free_cores(), omp_threads() or usable_cores())
    workers = resolve_workers(text, device, trials=trials, free=free)
    threads = threads_per_worker(workers, free)
    torch.set_num_threads(threads)
    return workers, threads


def cpu_threads() -> int:
    """Threads for one job alone on a CPU (``kdnas distill``, ``kdnas teacher train``): the
    free usable cores (:func:`free_cores`); ``OMP_NUM_THREADS`` when the user set it."""
    return omp_threads() or free_cores()


def omp_threads() -> int | None:
    """``OMP_NUM_THREADS`` where the user set it to a positive count."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(env) if env.isdigit() and int(env) > 0 else None


def shared_gpus(device: str) -> int:
    """The CUDA GPUs a search's workers are spread over: every visible one when ``device``
    (the setting's text) names none in particular (auto, cuda); none otherwise."""
    return torch.cuda.device_count() if device in ("auto", "cuda") else 0
