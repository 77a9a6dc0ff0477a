"""``kdnas teacher train``: train a teacher from the resnet space's presets and save a kdnas
checkpoint that records its architecture, classes, input size, normalisation and data."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import torch

from kdnas.core.errors import KdnasError
from kdnas.core.settings import TrainConfig
from kdnas.cost import count_macs
from kdnas.data import load_data
from kdnas.distill import evaluate, fit
from kdnas.teacher import save_checkpoint
from search_spaces.resnet import PRESETS, ResNetSpace


def train_teacher(data_spec: str, arch: str, *, epochs: float, out: Path, lr: float = 0.1,
                  batch_size: int = 128, val_fraction: float = 0.1, split_seed: int = 0,
                  seed: int = 0, device: str = "auto", keep_early: tuple[float, ...] = (),
                  progress: Callable[[int, int, float], None] | None = None
                  ) -> tuple[Path, float]:
    """Train ``arch`` on ``data_spec`` and write the checkpoint to ``out``; returns the path
    and the validation accuracy.

    The training state is saved after every epoch beside ``out`` (``resume_path``); the same
    call after an interruption goes on from there and ends where an uninterrupted run would.
    ``keep_early``: fractions of the run (0.25: a quarter of its steps) at which the teacher
    so far is written too (:func:`early_path`), a kdnas checkpoint with its own validation
    accuracy: an earlier, weaker teacher of the same run. Measured for the capacity gap
    (reports/distill_methods.md, part C): a student distilled from the resnet14 teacher at
    0.25 ends near that teacher's 52.7%, 24 points below one distilled from the final teacher.
    """
    if any(not 0 < f < 1 for f in keep_early):
        raise KdnasError(f"--keep-early takes fractions of the run between 0 and 1, got "
                         f"{', '.join(f'{f:g}' for f in keep_early)}")
    if arch not in PRESETS:
        raise KdnasError(f"unknown teacher architecture {arch!r}: choose one of "
                         f"{', '.join(PRESETS)}")
    data = load_data(data_spec, val_fraction=val_fraction, seed=split_seed)
    spec = ResNetSpace().preset(arch, in_channels=data.in_channels,
                                num_classes=data.num_classes, input_size=data.input_size)
    torch.manual_seed(seed)
    model = ResNetSpace().build(spec)
    resume = resume_path(out, arch)
    meta = {"split": {"val_fraction": val_fraction, "seed": split_seed}, "arch": arch,
            "epochs": epochs, "macs": count_macs(model, data.input_shape)}

    def write(path: Path, net: torch.nn.Module, acc: float, **more) -> None:
        save_checkpoint(path, net, spec=spec, classes=data.classes,
                        input_shape=data.input_shape, mean=data.mean, std=data.std,
                        data=data_spec, val_accuracy=acc, extra={**meta, **more})

    pending = sorted(f for f in keep_early if not early_path(out, f).exists())

    def step_done(step: int, total: int, loss: float) -> None:
        while pending and step >= pending[0] * total:  # a copy, so training goes on as is
            f = pending.pop(0)
            early = copy.deepcopy(model).cpu().eval()
            write(early_path(out, f), early, evaluate(early, data, device="cpu"),
                  early={"fraction": f, "step": step, "of_steps": total})
        if progress is not None:
            progress(step, total, loss)

    result = fit(model, data, TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size,
                                          kd="none", seed=seed, device=device),
                 checkpoint=resume, progress=step_done)
    write(out, model, result.val_accuracy)
    resume.unlink(missing_ok=True)
    return Path(out), result.val_accuracy


def early_path(out: Path, fraction: float) -> Path:
    """Where ``train_teacher(keep_early=...)`` writes the teacher at ``fraction`` of its run:
    ``teachers/r56.pt`` -> ``teachers/r56-at25pct.pt``."""
    out = Path(out)
    return out.with_name(f"{out.stem}-at{100 * fraction:g}pct{out.suffix}")


def resume_path(out: Path, arch: str) -> Path:
    """Where an unfinished ``train_teacher`` keeps its state between epochs."""
    out = Path(out)
    return out.with_name(f".{out.name}.{arch}.partial")
