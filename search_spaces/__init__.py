"""Student search spaces.

A space samples a *spec* (a plain JSON-able dict) from an Optuna trial and builds the same
``nn.Module`` from the same spec every time. Each built model states its feature taps as
data (:class:`TapInfo`), so the distiller can hook stage outputs without knowing the family.

Spaces know nothing of Optuna storage or training.
"""

from __future__ import annotations

from torch import nn

from kdnas.core.errors import KdnasError
from search_spaces import mobilenet, resnet, shufflenet
from search_spaces.base import BuiltinSpace, Space, TapInfo, spec_id
from search_spaces.multi import MultiSpace
from search_spaces.user import load_user_space


# the built-in spaces: name -> (space class, short label of a spec)
_BUILTIN = {"resnet": (resnet.ResNetSpace, resnet.describe),
            "mobilenet": (mobilenet.MobileNetSpace, mobilenet.describe),
            "shufflenet": (shufflenet.ShuffleNetSpace, shufflenet.describe)}
BUILTIN = tuple(_BUILTIN)


def get_space(name: str) -> Space:
    """A built-in space by name, a user's space as ``path/to/file.py:NAME``, or several as
    one: ``all`` (every built-in family) or a comma-separated list of those."""
    if name == "all" or "," in name:
        names = BUILTIN if name == "all" else [n.strip() for n in name.split(",") if n.strip()]
        return MultiSpace({n: get_space(n) for n in dict.fromkeys(names)})
    if name in _BUILTIN:
        return _BUILTIN[name][0]()
    if ":" in name and name.rpartition(":")[0].endswith(".py"):
        return load_user_space(name)
    raise KdnasError(f"unknown search space {name!r}: choose one of {', '.join(BUILTIN)}, "
                     "all (every one of them), a list such as resnet,mobilenet, or give your "
                     "own as path/to/file.py:NAME (see docs/spaces.md)")


def preset_spec(name: str, default_space: str, *, in_channels: int, num_classes: int,
                input_size: int) -> dict:
    """The spec of a hand-designed student: ``resnet8`` (a preset of ``default_space``) or
    ``space:preset`` such as ``mobilenet:mobilenetv2_half``."""
    space_name, _, preset = name.rpartition(":")
    space = get_space(space_name or default_space)
    if not hasattr(space, "preset"):
        raise KdnasError(f"reference {name!r}: space {space.name!r} has no presets")
    return space.preset(preset, in_channels=in_channels, num_classes=num_classes,
                        input_size=input_size)


def describe(spec: dict) -> str:
    """A short human label of a spec, for tables and plots."""
    name = spec.get("space", "?")
    if name in _BUILTIN:
        return _BUILTIN[name][1](spec)
    return f"{name.rpartition(':')[2] or name} {spec_id(spec)}"


def build(spec: dict) -> nn.Module:
    """Build the module a spec describes, whatever its space."""
    return get_space(spec["space"]).build(spec)


__all__ = ["BuiltinSpace", "Space", "TapInfo", "build", "describe", "get_space", "preset_spec",
           "spec_id"]
