"""The cost model: count a module's MACs and params and measure its latency.

Units: one multiply-accumulate (MAC) is one "FLOP" in the convention of fvcore, torchvision's
published GFLOPS and most NAS papers (see :mod:`kdnas.core.budget`, which also holds the budget
and its gate). MACs are counted by torch's own flop counter, which knows attention; a model
with an op that does such work but that no formula covers is refused, not under-counted.
"""

from __future__ import annotations

import logging
import statistics

import torch
from torch import nn
from torch.utils import flop_counter
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from kdnas.core.budget import Cost
from kdnas.core.errors import KdnasError

log = logging.getLogger(__name__)

def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# names of aten ops that do multiply-accumulate work: if one runs and the counter has no
# formula for it, the count is too low and is not trusted
_HEAVY = ("conv", "mm", "matmul", "linear", "attention", "einsum", "bilinear", "lstm", "gru",
          "rnn", "fft", "tensordot", "addbmm")


@flop_counter.register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu)
def _sdpa_cpu_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
    """Attention on the CPU (torch's own formula, which covers the CUDA kernels only)."""
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


class _OpLog(TorchDispatchMode):
    """Records every aten op that runs."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def count_ops(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, tuple[str, ...]]:
    """Multiply-accumulates of one eval-mode forward pass at batch 1, and the ops that do
    such work but were not counted (empty when the count is complete).

    Counted by torch's own ``FlopCounterMode`` (matmuls, convolutions, attention); its FLOPs
    are 2 x MACs. Batch norm, pooling and elementwise ops are not counted, as in torchvision's
    published figures. The pass runs with gradients enabled so that fused inference kernels
    (such as multi-head attention's fast path) decompose into ops the counter knows.
    """
    was_training = model.training
    model.eval()
    log_ops = _OpLog()
    counter = FlopCounterMode(display=False)
    try:
        with counter, log_ops:
            model(torch.zeros(1, *input_shape))
    finally:
        model.train(was_training)
    known = {str(k) for k in counter.flop_registry}
    uncounted = sorted(op for op in log_ops.ops if op not in known
                       and any(h in op.split(".", 1)[-1] for h in _HEAVY))
    return counter.get_total_flops() // 2, tuple(uncounted)


def macs_lower_bound(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """The MACs of the model's convolution and linear modules alone, from one plain batch-1
    forward with hooks: never more than :func:`count_ops`' count (every other op only adds),
    and several times cheaper. A candidate whose bound exceeds a MACs budget is over it
    without the full count (the search's sampler rejects most draws this way)."""
    total = 0

    def hook(m: nn.Module, args, out) -> None:
        nonlocal total
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            k = m.weight[0].numel()  # in_channels / groups x kernel elements
            total += out.numel() * k
        elif isinstance(out, torch.Tensor):
            total += out.numel() * m.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates at batch 1 (see :func:`count_ops`); a user error if some op that
    does such work could not be counted, naming it."""
    macs, uncounted = count_ops(model, input_shape)
    if uncounted:
        raise KdnasError(uncounted_message(uncounted))
    return macs


def uncounted_message(ops: tuple[str, ...]) -> str:
    return (f"cannot count the MACs of this model: no formula for {', '.join(ops)}, so its "
            "count would be too low. Use layers torch's flop counter knows (convolutions, "
            "linear layers, matmuls, attention), or a params or latency budget")


def measure_latency(model: nn.Module, input_shape: tuple[int, ...], *, batch: int = 1,
                    threads: int | None = None, warmup: int = 5, repeats: int = 30,
                    channels_last: bool = True, device: str | torch.device = "cpu",
                    runtime: str = "torch") -> tuple[float, float, str]:
    """Median and p90 wall time (ms) of an eval-mode float32 forward pass on ``device``.

    On a CPU, timed with ``torch.utils.benchmark``, which runs at ``threads`` threads for
    the measurement without changing the process-wide setting; on CUDA, with CUDA events
    around each pass after a warm-up (the model is moved there for the measurement and
    back). Returns ``(median_ms, p90_ms, setting)`` where ``setting`` states the device (by
    name on CUDA), threads and batch. ``runtime`` ``onnxruntime`` or ``onnxruntime-int8``:
    the module exported to ONNX (and quantized) and timed on ONNX Runtime's CPU provider
    (:func:`kdnas.ort.runtime_latency`).
    """
    if runtime != "torch":
        from kdnas.ort import runtime_latency

        return runtime_latency(model, input_shape, int8=runtime == "onnxruntime-int8",
                               batch=batch, threads=threads or 1)
    device = torch.device(device)
    if device.type == "cuda":
        return _cuda_latency(model, input_shape, batch, warmup, repeats, channels_last, device)
    threads = threads or torch.get_num_threads()
    was_training = model.training
    model.eval()
    x = torch.randn(batch, *input_shape)
    if channels_last and x.dim() == 4:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    timer = _benchmark().Timer("model(x)", globals={"model": model, "x": x},
                            num_threads=threads)
    try:
        with torch.inference_mode():
            timer.timeit(warmup)
            times = sorted(timer.timeit(1).mean * 1e3 for _ in range(repeats))
    finally:
        model.train(was_training)
    return statistics.median(times), _p90(times), f"cpu, {threads} threads, batch {batch}"


def _p90(times: list[float]) -> float:
    return times[min(len(times) - 1, int(round(0.9 * (len(times) - 1))))]


def _cuda_latency(model: nn.Module, input_shape, batch: int, warmup: int, repeats: int,
                  channels_last: bool, device: torch.device) -> tuple[float, float, str]:
    was_training, home = model.training, next(model.parameters(), torch.empty(0)).device
    fmt = torch.channels_last if channels_last and len(input_shape) == 3 else \
        torch.contiguous_format
    model.eval().to(device=device, memory_format=fmt)
    x = torch.randn(batch, *input_shape, device=device).contiguous(memory_format=fmt)
    times = []
    try:
        with torch.inference_mode():
            for _ in range(max(1, warmup)):
                model(x)
            for _ in range(repeats):
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                model(x)
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
    finally:
        model.to(home).train(was_training)
    times.sort()
    return (statistics.median(times), _p90(times),
            f"{device} ({torch.cuda.get_device_name(device)}), fp32, batch {batch}")


def _benchmark():
    """``torch.utils.benchmark``, imported without the CUDA notice it logs on a CPU machine."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        from torch.utils import benchmark
    finally:
        logger.setLevel(level)
    return benchmark


def measure_cost(model: nn.Module, input_shape: tuple[int, ...], *, latency: bool = True,
                 latency_threads: int | None = None, latency_batch: int = 1,
                 latency_device: str | torch.device = "cpu", latency_runtime: str = "torch"
                 ) -> Cost:
    """MACs and params, and latency when asked. Ops whose MACs were not counted are kept in
    the cost, and a MACs budget refuses such a candidate (see :class:`Budget`)."""
    macs, uncounted = count_ops(model, input_shape)
    params = count_params(model)
    if not latency:
        return Cost(macs, params, uncounted_ops=uncounted)
    p50, p90, setting = measure_latency(model, input_shape, batch=latency_batch,
                                        threads=latency_threads, device=latency_device,
                                        runtime=latency_runtime)
    return Cost(macs, params, p50, p90, setting, uncounted_ops=uncounted)
