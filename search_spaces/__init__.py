"""Student search spaces.

A space samples a *spec* (a plain JSON-able dict) from an Optuna trial and builds the same
``nn.Module`` from the same spec every time. Each built model states its feature taps as
data (:class:`TapInfo`), so the distiller can hook stage outputs without knowing the family.

Spaces know nothing of Optuna storage or training.
"""

from __future__ import annotations

import copy
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


class BuiltinSpace:
    """What the built-in spaces share: named reference specs and the cheapest candidate.

    Subclasses define ``name``, ``presets`` (name -> partial spec), ``_base(in_channels,
    num_classes, input_size)`` (the data-dependent part of a spec), ``distributions()``,
    ``sample``, ``build`` and ``taps``.
    """

    name: str
    presets: dict[str, dict] = {}

    def _base(self, in_channels: int, num_classes: int, input_size: int) -> dict:
        raise NotImplementedError

    def distributions(self) -> dict:
        raise NotImplementedError

    def sample(self, trial: Any, *, in_channels: int, num_classes: int,
               input_size: int) -> dict:
        raise NotImplementedError

    def preset(self, name: str, *, in_channels: int, num_classes: int, input_size: int) -> dict:
        """A reference model (e.g. ``resnet20``) as a spec of this space."""
        if name not in self.presets:
            from kdnas.errors import KdnasError

            raise KdnasError(f"the {self.name} space has no preset {name!r}: "
                             f"{', '.join(self.presets)}")
        spec = self._base(in_channels, num_classes, input_size)
        spec.update(copy.deepcopy(self.presets[name]))
        return spec

    def smallest(self, *, in_channels: int, num_classes: int, input_size: int) -> dict:
        """The cheapest candidate: every numeric choice at its minimum."""
        from optuna.trial import FixedTrial

        params = {k: min(d.choices) for k, d in self.distributions().items()}
        return self.sample(FixedTrial(params), in_channels=in_channels,
                           num_classes=num_classes, input_size=input_size)


def spec_id(spec: dict) -> str:
    """A stable short id of a spec (8 hex digits of the sha1 of its canonical JSON)."""
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(text.encode()).hexdigest()[:8]


BUILTIN = ("resnet", "mobilenet", "shufflenet")


def get_space(name: str) -> Space:
    """A built-in space by name, or a user's space as ``path/to/file.py:NAME``."""
    from kdnas.errors import KdnasError

    if name == "resnet":
        from search_spaces.resnet import ResNetSpace

        return ResNetSpace()
    if name == "mobilenet":
        from search_spaces.mobilenet import MobileNetSpace

        return MobileNetSpace()
    if name == "shufflenet":
        from search_spaces.shufflenet import ShuffleNetSpace

        return ShuffleNetSpace()
    if ":" in name and name.rpartition(":")[0].endswith(".py"):
        from search_spaces.user import load_user_space

        return load_user_space(name)
    raise KdnasError(f"unknown search space {name!r}: choose one of {', '.join(BUILTIN)}, or "
                     "give your own as path/to/file.py:NAME (see docs/spaces.md)")


def describe(spec: dict) -> str:
    """A short human label of a spec, for tables and plots."""
    import importlib

    name = spec.get("space", "?")
    if name in BUILTIN:
        return importlib.import_module(f"search_spaces.{name}").describe(spec)
    return f"{name.rpartition(':')[2] or name} {spec_id(spec)}"


def build(spec: dict) -> nn.Module:
    """Build the module a spec describes, whatever its space."""
    return get_space(spec["space"]).build(spec)


__all__ = ["Space", "TapInfo", "build", "describe", "get_space", "spec_id"]
