"""The same kind of space declared in NNI's mutable language (needs `pip install kdnas[nni]`).

    kdnas search --space docs/examples/nni_cnn.py:NniCNN --teacher t.pt --budget 1MFLOPs

kdnas turns each labelled NNI choice into an Optuna parameter and freezes the NNI space with
the sampled values; the frozen dict (plus in_channels and num_classes) is the spec.
"""

from __future__ import annotations

import nni
from torch import nn


class NniCNN:
    mutable = {
        "width": nni.choice("width", [8, 16, 32]),
        "depth": nni.choice("depth", [1, 2, 3]),
        "dropout": nni.uniform("dropout", 0.0, 0.3),
    }

    def build(self, spec):
        layers, c = [], spec["in_channels"]
        for i in range(spec["depth"]):
            w = spec["width"] * 2**i
            layers += [nn.Conv2d(c, w, 3, stride=1 if i == 0 else 2, padding=1, bias=False),
                       nn.BatchNorm2d(w), nn.ReLU()]
            c = w
        return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Dropout(spec["dropout"]), nn.Linear(c, spec["num_classes"]))
