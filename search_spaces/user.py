"""User-defined spaces: ``--space path/to/file.py:NAME``.

``NAME`` in that file is a class (instantiated with no arguments) or an object with

* ``build(spec) -> nn.Module``, and either
* ``sample(trial) -> dict`` (optionally also taking ``in_channels``, ``num_classes`` and
  ``input_size`` keywords), using Optuna's ``trial.suggest_*``; or
* ``mutable``: a space in NNI's mutable language (``nni.choice``, ``nni.uniform``, a dict of
  them...), for users who already have one. NNI is an optional extra
  (``pip install kdnas[nni]``) imported only here, only for such a space.

Optional: ``taps(spec) -> list[TapInfo]`` (else stage outputs are detected), ``smallest(...)``
and ``distributions()`` (for the cheapest-candidate check and budget-aware sampling).

kdnas adds ``"space": "path/to/file.py:NAME"`` to every spec so that reports and export can
rebuild it; ``build`` receives the spec with that key. See docs/spaces.md.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import sys
from pathlib import Path
from typing import Any

from torch import nn

from kdnas.core.errors import KdnasError
from search_spaces.base import TapInfo

_LOADED: dict[str, Any] = {}


def _import_file(path: Path):
    key = str(path.resolve())
    if key not in _LOADED:
        name = "kdnas_user_space_" + hashlib.sha1(key.encode()).hexdigest()[:10]
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise KdnasError(f"cannot import {path} as Python")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except ImportError as e:
            del sys.modules[name]
            hint = " (pip install 'kdnas[nni]' for NNI spaces)" if "nni" in str(e) else ""
            raise KdnasError(f"importing {path} failed: {e}{hint}") from None
        _LOADED[key] = module
    return _LOADED[key]


def load_user_space(ref: str):
    path_text, _, attr = ref.rpartition(":")
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise KdnasError(f"space file {path_text!r} does not exist: give --space "
                         "path/to/file.py:NAME")
    module = _import_file(path)
    if not hasattr(module, attr):
        names = [n for n in vars(module) if not n.startswith("_")]
        raise KdnasError(f"{path_text} defines no {attr!r}; it defines {names}")
    obj = getattr(module, attr)
    if inspect.isclass(obj):
        obj = obj()
    if not callable(getattr(obj, "build", None)):
        raise KdnasError(f"space {ref} has no build(spec) method")
    if hasattr(obj, "mutable"):
        return NniSpace(ref, obj)
    if not callable(getattr(obj, "sample", None)):
        raise KdnasError(f"space {ref} needs sample(trial) or an NNI `mutable`")
    return UserSpace(ref, obj)


class UserSpace:
    """Adapter giving a user's object the interface of a built-in space."""

    def __init__(self, ref: str, obj: Any) -> None:
        self.name = ref
        self.obj = obj
        if hasattr(obj, "distributions"):
            self.distributions = obj.distributions

    def _finish(self, spec: Any) -> dict:
        if not isinstance(spec, dict):
            raise KdnasError(f"space {self.name}: sample() must return a dict, got "
                             f"{type(spec).__name__}")
        spec = {**spec, "space": self.name}
        try:
            json.dumps(spec)
        except TypeError as e:
            raise KdnasError(f"space {self.name}: the spec must be JSON-able ({e})") from None
        return spec

    def sample(self, trial: Any, *, in_channels: int, num_classes: int, input_size: int) -> dict:
        kwargs = {"in_channels": in_channels, "num_classes": num_classes,
                  "input_size": input_size}
        params = inspect.signature(self.obj.sample).parameters
        if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            kwargs = {k: v for k, v in kwargs.items() if k in params}
        return self._finish(self.obj.sample(trial, **kwargs))

    def build(self, spec: dict) -> nn.Module:
        model = self.obj.build(spec)
        if not isinstance(model, nn.Module):
            raise KdnasError(f"space {self.name}: build() must return an nn.Module")
        return model

    def taps(self, spec: dict) -> list[TapInfo] | None:
        if hasattr(self.obj, "taps"):
            return list(self.obj.taps(spec))
        return None  # the caller detects them on the built module

    def smallest(self, *, in_channels: int, num_classes: int, input_size: int) -> dict | None:
        if hasattr(self.obj, "smallest"):
            return self._finish(self.obj.smallest(in_channels=in_channels,
                                                  num_classes=num_classes,
                                                  input_size=input_size))
        return None


class NniSpace(UserSpace):
    """A space declared with NNI's mutables, sampled through Optuna.

    Each labelled choice becomes an Optuna parameter of the same label: ``Categorical`` ->
    ``suggest_categorical``, ``Numerical`` (uniform, loguniform, quantised) -> ``suggest_float``;
    the frozen sample is the spec.
    """

    def __init__(self, ref: str, obj: Any) -> None:
        super().__init__(ref, obj)
        try:
            from nni.mutable import Mutable, MutableDict
        except ImportError:
            raise KdnasError(f"space {ref} is declared with NNI, which is not installed: "
                             "pip install 'kdnas[nni]'") from None
        m = obj.mutable
        self.mutable = MutableDict(m) if isinstance(m, dict) else m
        if not isinstance(self.mutable, Mutable):
            raise KdnasError(f"space {ref}: `mutable` must be an NNI mutable or a dict of them")
        self.leaves = self.mutable.simplify()
        self.distributions = self._distributions

    def _distributions(self) -> dict:
        from nni.mutable import Categorical, Numerical
        from optuna.distributions import CategoricalDistribution, FloatDistribution

        out = {}
        for label, leaf in self.leaves.items():
            if isinstance(leaf, Categorical):
                out[label] = CategoricalDistribution(tuple(leaf.values))
            elif isinstance(leaf, Numerical):
                if leaf.low is None or leaf.high is None:
                    raise KdnasError(f"space {self.name}: {label!r} is an unbounded (normal) "
                                     "distribution; use nni.uniform or nni.loguniform")
                step = leaf.quantize if not leaf.log_distributed else None
                out[label] = FloatDistribution(leaf.low, leaf.high, log=leaf.log_distributed,
                                               step=step)
            else:
                raise KdnasError(f"space {self.name}: NNI {type(leaf).__name__} ({label!r}) is "
                                 "not supported; use nni.choice, nni.uniform, nni.loguniform")
        return out

    def sample(self, trial: Any, *, in_channels: int, num_classes: int, input_size: int) -> dict:
        from optuna.distributions import CategoricalDistribution

        values = {}
        for label, d in self._distributions().items():
            if isinstance(d, CategoricalDistribution):
                values[label] = trial.suggest_categorical(label, d.choices)
            else:
                values[label] = trial.suggest_float(label, d.low, d.high, log=d.log, step=d.step)
        spec = self.mutable.freeze(values)
        if isinstance(spec, dict):  # give build() what it needs to fit the data
            spec = {"in_channels": in_channels, "num_classes": num_classes, **spec}
        return self._finish(spec)
