"""``kdnas teacher train``: train a teacher from the resnet space's presets and save a kdnas
checkpoint that records its architecture, classes, input size, normalisation and data."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from kdnas.core.errors import KdnasError
from kdnas.core.settings import TrainConfig
from kdnas.cost import count_macs
from kdnas.data import load_data
from kdnas.distill import fit
from kdnas.teacher import save_checkpoint
from search_spaces.resnet import PRESETS, ResNetSpace


def train_teacher(data_spec: str, arch: str, *, epochs: float, out: Path, lr: float = 0.1,
                  batch_size: int = 128, val_fraction: float = 0.1, split_seed: int = 0,
                  seed: int = 0, device: str = "auto",
                  progress: Callable[[int, int, float], None] | None = None
                  ) -> tuple[Path, float]:
    """Train ``arch`` on ``data_spec`` and write the checkpoint to ``out``; returns the path
    and the validation accuracy.

    The training state is saved after every epoch beside ``out`` (``resume_path``); the same
    call after an interruption goes on from there and ends where an uninterrupted run would.
    """
    if arch not in PRESETS:
        raise KdnasError(f"unknown teacher architecture {arch!r}: choose one of "
                         f"{', '.join(PRESETS)}")
    data = load_data(data_spec, val_fraction=val_fraction, seed=split_seed)
    spec = ResNetSpace().preset(arch, in_channels=data.in_channels,
                                num_classes=data.num_classes, input_size=data.input_size)
    torch.manual_seed(seed)
    model = ResNetSpace().build(spec)
    resume = resume_path(out, arch)
    result = fit(model, data, TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size,
                                          kd="none", seed=seed, device=device),
                 checkpoint=resume, progress=progress)
    save_checkpoint(out, model, spec=spec, classes=data.classes,
                    input_shape=data.input_shape, mean=data.mean, std=data.std,
                    data=data_spec, val_accuracy=result.val_accuracy,
                    extra={"split": {"val_fraction": val_fraction, "seed": split_seed},
                           "arch": arch, "epochs": epochs,
                           "macs": count_macs(model, data.input_shape)})
    resume.unlink(missing_ok=True)
    return Path(out), result.val_accuracy


def resume_path(out: Path, arch: str) -> Path:
    """Where an unfinished ``train_teacher`` keeps its state between epochs."""
    out = Path(out)
    return out.with_name(f".{out.name}.{arch}.partial")
