"""MobileNetV2 family: inverted residual blocks (Sandler et al. 2018).

Spec::

    {"space": "mobilenet", "in_channels": 3, "num_classes": 100, "stem": "cifar",
     "stem_width": 16, "stem_stride": 2, "last_width": 1280,
     "stages": [{"expand": 1, "width": 8, "depth": 1, "stride": 1, "kernel": 3, "se": False},
                ...]}

Each block: 1x1 expansion conv (kept even at expansion 1, as in the CIFAR MobileNetV2 of the
KD literature), k x k depthwise conv, optional squeeze-excitation, 1x1 linear projection, and
a residual connection when the shape allows. The ``mobilenetv2_half`` preset is that CIFAR
variant ("mobile_half": expansion 6, width x0.5, stem stride 2 at 32 px).
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from search_spaces.base import BuiltinSpace, TapInfo

# MobileNetV2's stage table: (expansion at full width, channels, depth, stride)
BASE = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
        (6, 160, 3, 2), (6, 320, 1, 1))
WIDTH_MULTS = (0.25, 0.35, 0.5, 0.75, 1.0, 1.4)
EXPANDS = (1, 3, 6)
KERNELS = (3, 5, 7)
DEPTH_DELTAS = (-1, 0, 1)  # per-stage depth relative to MobileNetV2's


def _table(width_mult: float, expand: int, strides: tuple[int, ...]) -> list[dict]:
    return [{"expand": 1 if i == 0 else expand, "width": max(4, int(c * width_mult)),
             "depth": n, "stride": s, "kernel": 3, "se": False}
            for i, ((_, c, n, _), s) in enumerate(zip(BASE, strides, strict=True))]


def _strides(stem: str) -> tuple[int, ...]:
    # the CIFAR variant keeps stage 1 at the stem's resolution; ImageNet halves it there
    return (1, 1, 2, 2, 1, 2, 1) if stem == "cifar" else (1, 2, 2, 2, 1, 2, 1)


PRESETS: dict[str, dict] = {
    "mobilenetv2_half": {"stem_width": 16, "stem_stride": 2, "last_width": 1280,
                         "stages": _table(0.5, 6, _strides("cifar"))},
    "mobilenetv2": {"stem_width": 32, "stem_stride": 2, "last_width": 1280,
                    "stages": _table(1.0, 6, _strides("cifar"))},
}


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(8, channels // reduction)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)
        self.act = nn.ReLU(inplace=True)
        self.gate = nn.Sigmoid()

    def forward(self, x):
        return x * self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))


class InvertedResidual(nn.Module):
    def __init__(self, c_in: int, c_out: int, *, stride: int, expand: int, kernel: int,
                 se: bool) -> None:
        super().__init__()
        hidden = c_in * expand
        layers: list[nn.Module] = [
            nn.Conv2d(c_in, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, kernel, stride, kernel // 2, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        if se:
            layers.append(SqueezeExcite(hidden))
        layers += [nn.Conv2d(hidden, c_out, 1, bias=False), nn.BatchNorm2d(c_out)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x):
        out = self.conv(x)
        return x + out if self.residual else out


class MobileNet(nn.Module):
    def __init__(self, spec: dict) -> None:
        super().__init__()
        self.spec = copy.deepcopy(spec)
        c = spec["stem_width"]
        self.stem = nn.Sequential(
            nn.Conv2d(spec["in_channels"], c, 3, spec["stem_stride"], 1, bias=False),
            nn.BatchNorm2d(c), nn.ReLU6(inplace=True))
        stages = []
        for st in spec["stages"]:
            blocks = []
            for j in range(st["depth"]):
                blocks.append(InvertedResidual(c, st["width"], stride=st["stride"] if j == 0 else 1,
                                               expand=st["expand"], kernel=st["kernel"],
                                               se=st["se"]))
                c = st["width"]
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        last = spec["last_width"]
        self.head = nn.Sequential(nn.Conv2d(c, last, 1, bias=False), nn.BatchNorm2d(last),
                                  nn.ReLU6(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(last, spec["num_classes"])
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.head(self.stages(self.stem(x)))
        return self.fc(self.pool(x).flatten(1))


class MobileNetSpace(BuiltinSpace):
    """Width multiplier, per-stage depth, expansion and kernel size, and squeeze-excitation."""

    name = "mobilenet"
    presets = PRESETS
    # thin depthwise stages diverge or lag under distillation at the peak 0.1 that suits
    # ResNets (the KD term's logit gradient is T x alpha = 3.6x cross-entropy's); published
    # CIFAR KD recipes train MobileNetV2 at a fifth of the others' rate, and so does the
    # search: reports/mobilenet_collapse.md
    brief_lr_scale = 0.2

    def _base(self, in_channels: int, num_classes: int, input_size: int) -> dict:
        stem = "imagenet" if input_size >= 64 else "cifar"
        return {"space": self.name, "in_channels": int(in_channels),
                "num_classes": int(num_classes), "stem": stem,
                # a stride-2 stem only where the image is large enough to afford it
                "stem_stride": 2 if input_size >= 32 else 1}

    def distributions(self) -> dict:
        from optuna.distributions import CategoricalDistribution

        out: dict = {"width_mult": CategoricalDistribution(WIDTH_MULTS),
                     "se": CategoricalDistribution((False, True))}
        for i in range(1, len(BASE)):
            out[f"depth{i}"] = CategoricalDistribution(DEPTH_DELTAS)
            out[f"expand{i}"] = CategoricalDistribution(EXPANDS)
            out[f"kernel{i}"] = CategoricalDistribution(KERNELS)
        return out

    def _params_guess(self, spec: dict) -> dict | None:
        stages = spec["stages"]
        widths = [st["width"] for st in stages]
        wm = next((m for m in WIDTH_MULTS
                   if [s["width"] for s in _table(m, 1, _strides("cifar"))] == widths), None)
        if wm is None or len(stages) != len(BASE):
            return None
        out: dict = {"width_mult": wm, "se": bool(stages[1].get("se", False))}
        for i, st in enumerate(stages[1:], 1):
            out[f"depth{i}"] = st["depth"] - BASE[i][2]
            out[f"expand{i}"], out[f"kernel{i}"] = st["expand"], st["kernel"]
        return out

    def sample(self, trial: Any, *, in_channels: int, num_classes: int, input_size: int) -> dict:
        spec = self._base(in_channels, num_classes, input_size)
        wm = trial.suggest_categorical("width_mult", WIDTH_MULTS)
        se = trial.suggest_categorical("se", (False, True))
        stages = _table(wm, 1, _strides(spec["stem"]))
        for i, st in enumerate(stages[1:], 1):
            st["depth"] = max(1, BASE[i][2] + trial.suggest_categorical(f"depth{i}",
                                                                        DEPTH_DELTAS))
            st["expand"] = trial.suggest_categorical(f"expand{i}", EXPANDS)
            st["kernel"] = trial.suggest_categorical(f"kernel{i}", KERNELS)
            st["se"] = se
        spec.update({"stem_width": max(8, int(32 * wm)), "stages": stages,
                     "last_width": max(320, int(1280 * min(wm, 1.0)))})
        return spec

    def build(self, spec: dict) -> nn.Module:
        return MobileNet(spec)

    def taps(self, spec: dict) -> list[TapInfo]:
        """The last stage at each resolution."""
        stride = spec["stem_stride"]
        taps: list[TapInfo] = []
        for i, st in enumerate(spec["stages"]):
            stride *= st["stride"]
            tap = TapInfo(f"stages.{i}", st["width"], stride)
            if taps and taps[-1].stride == stride:
                taps[-1] = tap
            else:
                taps.append(tap)
        return taps


def describe(spec: dict) -> str:
    w = "-".join(str(s["width"]) for s in spec["stages"])
    e = "".join(str(s["expand"]) for s in spec["stages"])
    k = "".join(str(s["kernel"]) for s in spec["stages"])
    d = "".join(str(s["depth"]) for s in spec["stages"])
    se = " se" if any(s["se"] for s in spec["stages"]) else ""
    return f"mbv2 w{w} e{e} k{k} d{d}{se}"
