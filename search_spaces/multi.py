"""Several spaces searched as one: ``--space all`` (every built-in family) or a list such as
``--space resnet,mobilenet,path/to/mine.py:SPACE``.

The family is a parameter of the study (``family``), and each family's own parameters are
conditional on it, named ``<family>.<param>`` so that no two families share a name. A spec is
the member space's own spec (its ``space`` key names the family), so building, taps, reports
and export need nothing new; one budget gate and one front cover every family.
"""

from __future__ import annotations

from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution
from torch import nn

from kdnas.core.errors import KdnasError
from search_spaces.base import TapInfo

FAMILY = "family"


class _Prefixed:
    """A trial as one member space sees it: its parameter names gain the family's prefix."""

    def __init__(self, trial: Any, family: str) -> None:
        self._trial, self._prefix = trial, f"{family}."

    def suggest_categorical(self, name: str, choices):
        return self._trial.suggest_categorical(self._prefix + name, choices)

    def suggest_int(self, name: str, *args, **kwargs):
        return self._trial.suggest_int(self._prefix + name, *args, **kwargs)

    def suggest_float(self, name: str, *args, **kwargs):
        return self._trial.suggest_float(self._prefix + name, *args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._trial, name)


class MultiSpace:
    """The union of ``members`` (name -> space), each of which declares its distributions
    (budget-aware sampling needs them)."""

    def __init__(self, members: dict[str, Any]) -> None:
        missing = [n for n, s in members.items() if not hasattr(s, "distributions")]
        if missing:
            raise KdnasError(f"space(s) {missing} do not declare distributions(), which a "
                             "search over several families needs: add distributions() to "
                             "the space (docs/spaces.md), or search it alone")
        if len(members) < 2:
            raise KdnasError("a list of spaces needs at least two, e.g. --space "
                             "resnet,mobilenet (or --space all)")
        self.members = members
        self.name = ",".join(members)

    def family(self, spec: dict) -> Any:
        return self.members[spec["space"]]

    def distributions(self) -> dict[str, BaseDistribution]:
        out: dict[str, BaseDistribution] = {FAMILY: CategoricalDistribution(list(self.members))}
        for fam, space in self.members.items():
            out.update({f"{fam}.{k}": d for k, d in space.distributions().items()})
        return out

    def sample(self, trial: Any, *, in_channels: int, num_classes: int,
               input_size: int) -> dict:
        fam = trial.suggest_categorical(FAMILY, list(self.members))
        return self.members[fam].sample(_Prefixed(trial, fam), in_channels=in_channels,
                                        num_classes=num_classes, input_size=input_size)

    def params_of(self, spec: dict, input_size: int) -> dict | None:
        """The study's parameters for ``spec`` (its family's, prefixed), or None."""
        fam = spec["space"]
        own = getattr(self.members.get(fam), "params_of", None)
        got = own(spec, input_size) if own is not None else None
        if got is None:
            return None
        return {FAMILY: fam, **{f"{fam}.{k}": v for k, v in got.items()}}

    def build(self, spec: dict) -> nn.Module:
        return self.family(spec).build(spec)

    def taps(self, spec: dict) -> list[TapInfo]:
        return self.family(spec).taps(spec)

    def smallest_each(self, *, in_channels: int, num_classes: int, input_size: int
                      ) -> list[dict]:
        """The cheapest candidate of each family (the search costs them and takes the
        cheapest: which one it is depends on the input size)."""
        return [s.smallest(in_channels=in_channels, num_classes=num_classes,
                           input_size=input_size) for s in self.members.values()]

    def smallest(self, *, in_channels: int, num_classes: int, input_size: int) -> dict:
        return self.smallest_each(in_channels=in_channels, num_classes=num_classes,
                                  input_size=input_size)[0]

    def preset(self, name: str, *, in_channels: int, num_classes: int, input_size: int
               ) -> dict:
        """A reference by preset name, from the first family that has it."""
        for space in self.members.values():
            if name in getattr(space, "presets", {}):
                return space.preset(name, in_channels=in_channels, num_classes=num_classes,
                                    input_size=input_size)
        raise KdnasError(f"no space of {self.name} has a preset {name!r}")


def own_parameters(distributions: dict[str, BaseDistribution], family: str
                   ) -> dict[str, BaseDistribution]:
    """The parameters of one family in a multi-family space's distributions."""
    return {k: d for k, d in distributions.items() if k.startswith(f"{family}.")}
