"""Forward hooks that keep stage outputs for one step (cleared every step)."""

from __future__ import annotations

import torch
from torch import nn

from kdnas.core.errors import KdnasError


class FeatureTaps:
    """Forward hooks that keep the outputs of named modules for one step.

    Use as a context manager; read ``.features()`` after a forward pass; ``clear()`` every step.
    """

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            raise KdnasError(f"model has no module(s) {missing} to tap")
        self.names = names
        self._out: dict[str, torch.Tensor] = {}
        self._handles = [modules[n].register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name: str):
        def hook(_m, _inp, out):
            self._out[name] = out
        return hook

    def features(self) -> list[torch.Tensor]:
        return [self._out[n] for n in self.names]

    def clear(self) -> None:
        self._out.clear()

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> FeatureTaps:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
