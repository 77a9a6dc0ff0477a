"""Cost model: MACs, params, latency; budget parsing and the budget gate.

Units: one multiply-accumulate (MAC) is one "FLOP" in the convention of fvcore, torchvision's
published GFLOPS and most NAS papers. So a budget of ``50MFLOPs`` and ``50MMACs`` are the same
50 million multiply-accumulates at batch 1. Reports print MACs and FLOPs = 2 x MACs beside them.
"""

from __future__ import annotations

import logging
import re
import statistics
import time
import warnings
from dataclasses import asdict, dataclass

import torch
from torch import nn

from kdnas.errors import KdnasError

log = logging.getLogger(__name__)

_SCALE = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_UNIT = {"flops": "macs", "flop": "macs", "macs": "macs", "mac": "macs", "params": "params",
         "param": "params", "ms": "latency_ms"}
_BUDGET_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmgt]?)\s*([a-z]+)\s*$",
                        re.IGNORECASE)


@dataclass(frozen=True)
class Budget:
    """An upper bound on one cost metric: ``macs``, ``params`` or ``latency_ms``."""

    metric: str
    limit: float
    text: str = ""

    def __post_init__(self) -> None:
        if self.metric not in ("macs", "params", "latency_ms"):
            raise KdnasError(f"unknown budget metric {self.metric!r}: use macs, params or "
                             "latency_ms")
        if not self.limit > 0:
            raise KdnasError(f"budget must be positive, got {self.limit}")

    def excess(self, cost: Cost) -> float:
        """Relative amount over budget: <= 0 when within budget (Optuna's constraint sign)."""
        value = cost.value(self.metric)
        if value is None:
            raise KdnasError(f"budget on {self.metric} but that cost was not measured")
        return value / self.limit - 1.0

    def fits(self, cost: Cost) -> bool:
        return self.excess(cost) <= 0.0

    def describe(self) -> str:
        if self.metric == "macs":
            return f"{fmt_count(self.limit)} MACs ({fmt_count(2 * self.limit)} FLOPs)"
        if self.metric == "params":
            return f"{fmt_count(self.limit)} params"
        return f"{self.limit:g} ms latency"


def parse_budget(text: str) -> Budget:
    """Parse ``50MFLOPs``, ``50MMACs``, ``1.5GFLOPs``, ``0.5Mparams`` or ``5ms``.

    ``FLOPs`` here means multiply-accumulates (fvcore's and torchvision's convention), so
    ``50MFLOPs == 50MMACs``.
    """
    m = _BUDGET_RE.match(text or "")
    if m:
        number, scale, unit = m.group(1), m.group(2).lower(), m.group(3).lower()
        if unit == "s" and scale == "m":  # "5ms": the "m" was read as a scale
            scale, unit = "", "ms"
        metric = _UNIT.get(unit)
        if metric == "latency_ms" and scale:
            metric = None
        if metric is not None:
            return Budget(metric, float(number) * _SCALE[scale], text.strip())
    raise KdnasError(
        f"cannot read budget {text!r}: write a number, an optional k/M/G scale and a unit, e.g. "
        "50MFLOPs or 50MMACs (the same: multiply-accumulates at batch 1), 1.5GFLOPs, "
        "0.5Mparams, 5ms")


def fmt_count(n: float) -> str:
    """12_300_000 -> '12.3M'."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{suffix}"
    return f"{n:.3g}"


@dataclass(frozen=True)
class Cost:
    """What a candidate costs at batch 1. ``flops`` is 2 x ``macs``, stated for readers."""

    macs: int
    params: int
    latency_ms: float | None = None
    latency_p90_ms: float | None = None
    latency_setting: str | None = None

    @property
    def flops(self) -> int:
        return 2 * self.macs

    def value(self, metric: str) -> float | None:
        return getattr(self, metric)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["flops"] = self.flops
        return d


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass at batch 1, counted by fvcore.

    fvcore counts convolutions, linear layers and matmuls as MACs, and batch norm and
    pooling as one op per element; elementwise ops (ReLU, additions) are not counted.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fvcore.nn import FlopCountAnalysis

    was_training = model.training
    model.eval()
    x = torch.zeros(1, *input_shape)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            analysis = FlopCountAnalysis(model, x)
            analysis.unsupported_ops_warnings(False)
            analysis.uncalled_modules_warnings(False)
            analysis.tracer_warnings("none")
            total = int(analysis.total())
    finally:
        model.train(was_training)
    return total


def measure_latency(model: nn.Module, input_shape: tuple[int, ...], *, batch: int = 1,
                    threads: int | None = None, warmup: int = 5, repeats: int = 30,
                    channels_last: bool = True) -> tuple[float, float, str]:
    """Median and p90 wall time (ms) of an eval-mode forward pass on this CPU.

    Returns ``(median_ms, p90_ms, setting)`` where ``setting`` states device, threads, batch.
    """
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    was_training = model.training
    model.eval()
    x = torch.randn(batch, *input_shape)
    if channels_last and x.dim() == 4:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                model(x)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                model(x)
                times.append((time.perf_counter() - t0) * 1e3)
        used = torch.get_num_threads()
    finally:
        torch.set_num_threads(old_threads)
        model.train(was_training)
    times.sort()
    p90 = times[min(len(times) - 1, int(round(0.9 * (len(times) - 1))))]
    return statistics.median(times), p90, f"cpu, {used} threads, batch {batch}"


def measure_cost(model: nn.Module, input_shape: tuple[int, ...], *, latency: bool = True,
                 latency_threads: int | None = None, latency_batch: int = 1) -> Cost:
    macs = count_macs(model, input_shape)
    params = count_params(model)
    if not latency:
        return Cost(macs, params)
    p50, p90, setting = measure_latency(model, input_shape, batch=latency_batch,
                                        threads=latency_threads)
    return Cost(macs, params, p50, p90, setting)
