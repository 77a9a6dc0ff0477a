"""Budgets and costs as plain values: parsing ``50MFLOPs``, the gate's arithmetic, formatting.

Units: one multiply-accumulate (MAC) is one "FLOP" in the convention of fvcore, torchvision's
published GFLOPS and most NAS papers. So a budget of ``50MFLOPs`` and ``50MMACs`` are the same
50 million multiply-accumulates at batch 1. Reports print MACs and FLOPs = 2 x MACs beside them.
Counting and measuring (which need torch) live in :mod:`kdnas.cost`.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from kdnas.core.errors import KdnasError

BUDGET_HELP = ("cost limit at batch 1: 50MFLOPs or 50MMACs (the same thing: multiply-"
               "accumulates, the fvcore/torchvision convention; FLOPs = MACs here), 1.5GFLOPs, "
               "0.5Mparams, or 5ms (measured latency)")

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
        """Relative amount over budget: <= 0 when within budget (Optuna's constraint sign).

        A MACs count that left out ops doing such work (:attr:`Cost.uncounted_ops`) is too
        low to trust: it is never within a MACs budget (at least 1.0 over)."""
        value = cost.value(self.metric)
        if value is None:
            raise KdnasError(f"budget on {self.metric} but that cost was not measured")
        if self.refusal(cost):
            return max(value / self.limit - 1.0, 1.0)
        return value / self.limit - 1.0

    def refusal(self, cost: Cost) -> str | None:
        """Why the gate refuses a candidate whatever its count, or None."""
        if self.metric == "macs" and cost.uncounted_ops:
            return f"MACs not countable: no formula for {', '.join(cost.uncounted_ops)}"
        return None

    def fits(self, cost: Cost) -> bool:
        return self.excess(cost) <= 0.0

    def describe(self) -> str:
        return self.show(self.limit)

    def show(self, value: float) -> str:
        """A value of this budget's metric in words, e.g. ``12.3M MACs (24.6M FLOPs)``."""
        if self.metric == "macs":
            return f"{fmt_count(value)} MACs ({fmt_count(2 * value)} FLOPs)"
        if self.metric == "params":
            return f"{fmt_count(value)} params"
        return f"{value:.3g} ms latency"


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
    uncounted_ops: tuple[str, ...] = ()  # ops doing MACs that the counter has no formula for
    # one training step at the recipe's batch on the training device, measured before
    # training (kdnas.distill.timing.time_step): MACs do not predict training time
    train_step_ms: float | None = None

    @property
    def flops(self) -> int:
        return 2 * self.macs

    def value(self, metric: str) -> float | None:
        return getattr(self, metric)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["flops"] = self.flops
        d["uncounted_ops"] = list(self.uncounted_ops)
        return d
