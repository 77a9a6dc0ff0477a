"""Student search spaces.

A space samples a *spec* (a plain JSON-able dict) from an Optuna trial and builds the same
``nn.Module`` from the same spec every time. Each built model states its feature taps as
data (:class:`TapInfo`), so the distiller can hook stage outputs without knowing the family.

Spaces know nothing of Optuna storage or training.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Protocol

from torch import nn


@dataclass(frozen=True)
class TapInfo:
    """One stage output: the module whose output is tapped, its channels and total stride."""

    module: str
    channels: int
    stride: int


class Space(Protocol):
    name: str

    def sample(self, trial: Any, *, in_channels: int, num_classes: int,
               input_size: int) -> dict: ...

    def build(self, spec: dict) -> nn.Module: ...

    def taps(self, spec: dict) -> list[TapInfo]: ...

    def smallest(self, *, in_channels: int, num_classes: int, input_size: int) -> dict: ...


def spec_id(spec: dict) -> str:
    """A stable short id of a spec (8 hex digits of the sha1 of its canonical JSON)."""
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def get_space(name: str) -> Space:
    from search_spaces.resnet import ResNetSpace

    spaces = {"resnet": ResNetSpace()}
    if name not in spaces:
        from kdnas.errors import KdnasError

        raise KdnasError(f"unknown search space {name!r}: choose one of {sorted(spaces)}")
    return spaces[name]


def describe(spec: dict) -> str:
    """A short human label of a spec, for tables and plots."""
    if spec.get("space") == "resnet":
        from search_spaces.resnet import describe as resnet_describe

        return resnet_describe(spec)
    return f"{spec.get('space', '?')} {spec_id(spec)}"


def build(spec: dict) -> nn.Module:
    """Build the module a spec describes, whatever its space."""
    return get_space(spec["space"]).build(spec)


__all__ = ["Space", "TapInfo", "build", "describe", "get_space", "spec_id"]
