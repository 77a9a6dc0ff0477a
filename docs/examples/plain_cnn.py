"""A complete user-defined search space: plain CNNs of conv-BN-ReLU stages.

    kdnas search --space docs/examples/plain_cnn.py:PlainCNN --teacher t.pt --budget 1MFLOPs
"""

from __future__ import annotations

from torch import nn

from search_spaces import TapInfo  # optional: only needed to declare taps


class PlainCNN:
    def sample(self, trial, *, in_channels, num_classes):
        depth = trial.suggest_int("depth", 1, 3)
        widths = [trial.suggest_categorical(f"width{i}", [8, 16, 32, 64]) for i in range(depth)]
        return {"in_channels": in_channels, "num_classes": num_classes, "widths": widths}

    def build(self, spec):
        layers, c = [], spec["in_channels"]
        for i, w in enumerate(spec["widths"]):
            stage = [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
            if i > 0:  # every stage after the first halves the resolution
                stage.insert(0, nn.MaxPool2d(2))
            layers.append(nn.Sequential(*stage))
            c = w
        return nn.Sequential(nn.Sequential(*layers), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(c, spec["num_classes"]))

    def taps(self, spec):
        """Optional: stage outputs for feature distillation (detected when left out)."""
        return [TapInfo(f"0.{i}", w, 2**i) for i, w in enumerate(spec["widths"])]

    def smallest(self, *, in_channels, num_classes, input_size):
        """Optional: the cheapest candidate, so an impossible budget is refused up front."""
        return {"in_channels": in_channels, "num_classes": num_classes, "widths": [8]}
