"""ShuffleNetV2 family (Ma et al. 2018): channel split, depthwise convs and channel shuffle.

A family different in kind from ResNets and MobileNets (no expansion, half the channels
pass through each unit untouched), for cross-family distillation.

Spec::

    {"space": "shufflenet", "in_channels": 3, "num_classes": 10, "stem": "cifar",
     "stem_width": 24, "last_width": 1024,
     "stages": [{"width": 116, "depth": 3, "kernel": 3}, {"width": 232, "depth": 7, "kernel": 3},
                {"width": 464, "depth": 3, "kernel": 3}]}

Each stage is one stride-2 down-sampling unit followed by ``depth`` basic units. The
``shufflenetv2`` preset is the CIFAR ShuffleNetV2 1x of the KD literature (3/7/3 units after
the down-sampling ones, 116/232/464 channels, 1024 in the head); ``shufflenetv2_half`` is
the paper's 0.5x (48/96/192 channels, 10.9M MACs on 32x32 inputs, under resnet8's 12.5M).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from search_spaces.base import BuiltinSpace, TapInfo

WIDTHS = {0.25: (24, 48, 96, 512), 0.5: (48, 96, 192, 1024), 1.0: (116, 232, 464, 1024),
          1.5: (176, 352, 704, 1024), 2.0: (244, 488, 976, 2048)}
DEPTHS = (1, 2, 3, 4, 5, 6, 7, 8)
KERNELS = (3, 5)

PRESETS: dict[str, dict] = {
    "shufflenetv2": {"stem_width": 24, "last_width": 1024,
                     "stages": [{"width": w, "depth": d, "kernel": 3}
                                for w, d in zip((116, 232, 464), (3, 7, 3), strict=True)]},
    "shufflenetv2_half": {"stem_width": 24, "last_width": 1024,
                          "stages": [{"width": w, "depth": d, "kernel": 3}
                                     for w, d in zip((48, 96, 192), (3, 7, 3), strict=True)]},
}


def _conv_bn(c_in: int, c_out: int, k: int = 1, stride: int = 1, groups: int = 1,
             relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups,
                                         bias=False), nn.BatchNorm2d(c_out)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def channel_shuffle(x: torch.Tensor, groups: int = 2) -> torch.Tensor:
    """The channels of ``groups`` groups interleaved. A channels_last input is shuffled in
    its own layout and stays channels_last (the NCHW form copies it into NCHW, so that every
    unit's convolutions, batch norms and their gradients convert back and forth); the same
    values either way, and an NCHW input (an export) takes the NCHW form."""
    n, c, h, w = x.shape
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        nhwc = x.permute(0, 2, 3, 1).reshape(n, h, w, groups, c // groups).transpose(3, 4)
        return nhwc.reshape(n, h, w, c).permute(0, 3, 1, 2)
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class BasicUnit(nn.Module):
    def __init__(self, channels: int, kernel: int) -> None:
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(_conv_bn(half, half),
                                    _conv_bn(half, half, kernel, groups=half, relu=False),
                                    _conv_bn(half, half))

    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat([a, self.branch(b)], 1))


class DownUnit(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: int) -> None:
        super().__init__()
        mid = c_out // 2
        self.left = nn.Sequential(_conv_bn(c_in, c_in, kernel, 2, groups=c_in, relu=False),
                                  _conv_bn(c_in, mid))
        self.right = nn.Sequential(_conv_bn(c_in, mid),
                                   _conv_bn(mid, mid, kernel, 2, groups=mid, relu=False),
                                   _conv_bn(mid, c_out - mid))

    def forward(self, x):
        return channel_shuffle(torch.cat([self.left(x), self.right(x)], 1))


class ShuffleNet(nn.Module):
    def __init__(self, spec: dict) -> None:
        super().__init__()
        self.spec = copy.deepcopy(spec)
        c = spec["stem_width"]
        if spec.get("stem", "cifar") == "imagenet":
            self.stem = nn.Sequential(_conv_bn(spec["in_channels"], c, 3, 2),
                                      nn.MaxPool2d(3, 2, 1))
        else:
            self.stem = _conv_bn(spec["in_channels"], c, 3, 1)
        stages = []
        for st in spec["stages"]:
            units: list[nn.Module] = [DownUnit(c, st["width"], st["kernel"])]
            units += [BasicUnit(st["width"], st["kernel"]) for _ in range(st["depth"])]
            c = st["width"]
            stages.append(nn.Sequential(*units))
        self.stages = nn.Sequential(*stages)
        self.head = _conv_bn(c, spec["last_width"])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(spec["last_width"], spec["num_classes"])
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.head(self.stages(self.stem(x)))
        return self.fc(self.pool(x).flatten(1))


class ShuffleNetSpace(BuiltinSpace):
    """Width multiplier, per-stage depth and depthwise kernel size."""

    name = "shufflenet"
    presets = PRESETS

    def _base(self, in_channels: int, num_classes: int, input_size: int) -> dict:
        return {"space": self.name, "in_channels": int(in_channels),
                "num_classes": int(num_classes),
                "stem": "imagenet" if input_size >= 64 else "cifar", "stem_width": 24}

    def distributions(self) -> dict:
        from optuna.distributions import CategoricalDistribution

        out: dict = {"width_mult": CategoricalDistribution(tuple(WIDTHS))}
        for i in range(3):
            out[f"depth{i}"] = CategoricalDistribution(DEPTHS)
            out[f"kernel{i}"] = CategoricalDistribution(KERNELS)
        return out

    def _params_guess(self, spec: dict) -> dict | None:
        widths = [st["width"] for st in spec["stages"]]
        mult = next((m for m, w in WIDTHS.items() if list(w[:3]) == widths), None)
        if mult is None:
            return None
        out: dict = {"width_mult": mult}
        for i, st in enumerate(spec["stages"]):
            out[f"depth{i}"], out[f"kernel{i}"] = st["depth"], st["kernel"]
        return out

    def sample(self, trial: Any, *, in_channels: int, num_classes: int, input_size: int) -> dict:
        spec = self._base(in_channels, num_classes, input_size)
        widths = WIDTHS[trial.suggest_categorical("width_mult", tuple(WIDTHS))]
        spec["stages"] = [{"width": widths[i],
                           "depth": trial.suggest_categorical(f"depth{i}", DEPTHS),
                           "kernel": trial.suggest_categorical(f"kernel{i}", KERNELS)}
                          for i in range(3)]
        spec["last_width"] = widths[3]
        return spec

    def build(self, spec: dict) -> nn.Module:
        return ShuffleNet(spec)

    def taps(self, spec: dict) -> list[TapInfo]:
        first = 4 if spec.get("stem", "cifar") == "imagenet" else 1
        return [TapInfo(f"stages.{i}", st["width"], first * 2 ** (i + 1))
                for i, st in enumerate(spec["stages"])]


def describe(spec: dict) -> str:
    w = "-".join(str(s["width"]) for s in spec["stages"])
    d = "-".join(str(s["depth"]) for s in spec["stages"])
    k = "".join(str(s["kernel"]) for s in spec["stages"])
    return f"shufflenet w{w} d{d} k{k}"
