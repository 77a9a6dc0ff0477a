"""ResNet family with basic or bottleneck blocks (He et al. 2016), CIFAR-style by default.

Spec::

    {"space": "resnet", "in_channels": 3, "num_classes": 10, "stem": "cifar",
     "stem_width": 16, "stages": [{"depth": 3, "width": 16}, {"depth": 3, "width": 32},
     {"depth": 3, "width": 64}]}

Stage i > 0 halves the resolution in its first block; shortcuts that change shape use a
1x1 convolution with batch norm. ``"block": "bottleneck"`` uses 1x1-3x3-1x1 blocks whose
output has 4 x ``width`` channels (basic blocks when absent). ``resnet20`` (3 basic blocks a
stage, widths 16/32/64) costs about 41M MACs and 0.27M params at 32x32. The ``imagenet`` stem
(7x7 stride-2 conv and max pool) is chosen for inputs of 64 px and up.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from search_spaces.base import BuiltinSpace, TapInfo

BLOCKS = ("basic", "bottleneck")
DEPTHS = (1, 2, 3, 4, 5, 6, 7, 9)
WIDTHS = (
    (6, 8, 12, 16, 24, 32, 48, 64),
    (12, 16, 24, 32, 48, 64, 96, 128),
    (24, 32, 48, 64, 96, 128, 192, 256),
)


def _cifar(depth: int, widths: tuple[int, int, int], stem: int | None = None) -> dict:
    return {"stem_width": stem or widths[0],
            "stages": [{"depth": depth, "width": w} for w in widths]}


PRESETS: dict[str, dict] = {
    "resnet8": _cifar(1, (16, 32, 64)),
    "resnet14": _cifar(2, (16, 32, 64)),
    "resnet20": _cifar(3, (16, 32, 64)),
    "resnet32": _cifar(5, (16, 32, 64)),
    "resnet44": _cifar(7, (16, 32, 64)),
    "resnet56": _cifar(9, (16, 32, 64)),
    "resnet110": _cifar(18, (16, 32, 64)),
    "resnet8x4": _cifar(1, (64, 128, 256), stem=32),
    "resnet32x4": _cifar(5, (64, 128, 256), stem=32),
}


def _shortcut(c_in: int, c_out: int, stride: int) -> nn.Module:
    """Identity, or a strided 1x1 conv + BN where the shape changes."""
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(c_in, c_out, stride)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand x4; the output has 4 x ``width`` channels."""

    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int) -> None:
        super().__init__()
        c_out = width * self.expansion
        self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(c_in, c_out, stride)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


def _block(spec: dict) -> type[BasicBlock] | type[Bottleneck]:
    return Bottleneck if spec.get("block") == "bottleneck" else BasicBlock


def _out_channels(spec: dict, width: int) -> int:
    return width * _block(spec).expansion


class ResNet(nn.Module):
    def __init__(self, spec: dict) -> None:
        super().__init__()
        self.spec = copy.deepcopy(spec)
        c = spec["stem_width"]
        if spec.get("stem", "cifar") == "imagenet":
            self.stem = nn.Sequential(nn.Conv2d(spec["in_channels"], c, 7, 2, 3, bias=False),
                                      nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                                      nn.MaxPool2d(3, 2, 1))
        else:
            self.stem = nn.Sequential(nn.Conv2d(spec["in_channels"], c, 3, 1, 1, bias=False),
                                      nn.BatchNorm2d(c), nn.ReLU(inplace=True))
        block = _block(spec)
        stages = []
        for i, st in enumerate(spec["stages"]):
            blocks = []
            for j in range(st["depth"]):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(c, st["width"], stride))
                c = st["width"] * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, spec["num_classes"])
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():  # zero-init the last BN of each residual branch
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)
            elif isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.weight)

    def forward(self, x):
        x = self.stages(self.stem(x))
        return self.fc(self.pool(x).flatten(1))


class ResNetSpace(BuiltinSpace):
    """Per-stage depth and width of a 3-stage basic-block ResNet."""

    name = "resnet"
    presets = PRESETS

    def _base(self, in_channels: int, num_classes: int, input_size: int) -> dict:
        return {"space": self.name, "in_channels": int(in_channels),
                "num_classes": int(num_classes),
                "stem": "imagenet" if input_size >= 64 else "cifar"}

    def distributions(self) -> dict:
        """Every parameter :meth:`sample` suggests, for joint (budget-aware) sampling."""
        from optuna.distributions import CategoricalDistribution

        out = {"block": CategoricalDistribution(BLOCKS)}
        for i, widths in enumerate(WIDTHS):
            out[f"depth{i}"] = CategoricalDistribution(DEPTHS)
            out[f"width{i}"] = CategoricalDistribution(widths)
        return out

    def _canonical(self, spec: dict) -> dict:
        return {"block": "basic", **spec}

    def _params_guess(self, spec: dict) -> dict | None:
        if len(spec["stages"]) != len(WIDTHS):
            return None
        out = {"block": spec.get("block", "basic")}
        for i, st in enumerate(spec["stages"]):
            out[f"depth{i}"], out[f"width{i}"] = st["depth"], st["width"]
        return out

    def sample(self, trial: Any, *, in_channels: int, num_classes: int, input_size: int) -> dict:
        spec = self._base(in_channels, num_classes, input_size)
        spec["block"] = trial.suggest_categorical("block", BLOCKS)
        stages = []
        for i, widths in enumerate(WIDTHS):
            depth = trial.suggest_categorical(f"depth{i}", DEPTHS)
            width = trial.suggest_categorical(f"width{i}", widths)
            stages.append({"depth": depth, "width": width})
        spec["stem_width"] = stages[0]["width"]
        spec["stages"] = stages
        return spec

    def build(self, spec: dict) -> nn.Module:
        return ResNet(spec)

    def taps(self, spec: dict) -> list[TapInfo]:
        first = 4 if spec.get("stem", "cifar") == "imagenet" else 1
        return [TapInfo(f"stages.{i}", _out_channels(spec, st["width"]), first * 2**i)
                for i, st in enumerate(spec["stages"])]


def describe(spec: dict) -> str:
    """A short human label, e.g. ``resnet d3-3-3 w16-32-64``."""
    d = "-".join(str(s["depth"]) for s in spec["stages"])
    w = "-".join(str(s["width"]) for s in spec["stages"])
    stem = "" if spec.get("stem", "cifar") == "cifar" else f" {spec['stem']}"
    block = " bottleneck" if spec.get("block") == "bottleneck" else ""
    return f"resnet{stem}{block} d{d} w{w}"
