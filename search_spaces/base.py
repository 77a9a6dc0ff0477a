"""What every space shares: the tap record, the space protocol, the built-in spaces' base
class and the stable id of a spec."""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Protocol

from torch import nn

from kdnas.core.errors import KdnasError


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
    # the search's brief runs train this family at this share of the recipe's peak learning
    # rate (measured per family; 1: as the recipe says)
    brief_lr_scale: float = 1.0

    def _base(self, in_channels: int, num_classes: int, input_size: int) -> dict:
        raise NotImplementedError

    def distributions(self) -> dict:
        raise NotImplementedError

    def sample(self, trial: Any, *, in_channels: int, num_classes: int,
               input_size: int) -> dict:
        raise NotImplementedError

    def params_of(self, spec: dict, input_size: int) -> dict | None:
        """The parameters :meth:`sample` turns into ``spec`` (for ``input_size`` inputs), or
        None where no draw of the space builds it (a preset outside the grid): how a study
        is told a candidate it did not propose, such as a reference."""
        from optuna.trial import FixedTrial

        guess = self._params_guess(spec)
        if guess is None:
            return None
        try:
            again = self.sample(FixedTrial(guess), in_channels=spec["in_channels"],
                                num_classes=spec["num_classes"], input_size=input_size)
        except (ValueError, KeyError):
            return None
        return guess if spec_id(self._canonical(again)) == spec_id(self._canonical(spec)) \
            else None

    def _params_guess(self, spec: dict) -> dict | None:
        return None

    def _canonical(self, spec: dict) -> dict:
        """``spec`` with the keys its builder defaults written out."""
        return spec

    def preset(self, name: str, *, in_channels: int, num_classes: int, input_size: int) -> dict:
        """A reference model (e.g. ``resnet20``) as a spec of this space."""
        if name not in self.presets:
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
