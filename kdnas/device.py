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


def resolve_workers(text: str | int, device: str) -> int:
    """``--workers``: a count, or ``auto``: 1 on a CPU (its threads are shared out instead);
    on CUDA, WORKERS_PER_GPU trial processes sharing each GPU the search may use, at most
    one per CPU core.

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
        return 1
    gpus = max(1, shared_gpus(device))  # cuda:N: that one
    return max(1, min(WORKERS_PER_GPU * gpus, os.cpu_count() or 1))


def shared_gpus(device: str) -> int:
    """The CUDA GPUs a search's workers are spread over: every visible one when ``device``
    (the setting's text) names none in particular (auto, cuda); none otherwise."""
    return torch.cuda.device_count() if device in ("auto", "cuda") else 0
