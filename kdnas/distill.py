"""Distillation: losses, feature taps and the brief trainer.

The trainer reads straight down: for each batch, run the teacher (no grad) and the student,
each with forward hooks on its stage taps, add cross-entropy, Hinton KD on the logits and
FitNets hints between stages of equal resolution, and step SGD on a warmup+cosine schedule.
Nothing here knows which search space the student came from: it only needs its taps.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from kdnas.errors import KdnasError
from search_spaces import TapInfo

log = logging.getLogger(__name__)

KD_METHODS = ("feature", "logit", "none")


class KDLoss(nn.Module):
    """Hinton et al. (2015): ``T^2 * KL(softmax(t/T) || softmax(s/T))``, mean over the batch."""

    def __init__(self, temperature: float = 4.0) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor):
        t = self.temperature
        log_p_s = F.log_softmax(student_logits / t, dim=1)
        log_p_t = F.log_softmax(teacher_logits / t, dim=1)
        return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * t * t


def match_taps(student: list[TapInfo], teacher: list[TapInfo]) -> list[tuple[int, int]]:
    """Pair each student stage with the teacher stage of the same stride (resolution).

    A student stage with no teacher stage at its stride is paired with the nearest one (in
    log2 stride); its feature map is then resized to the teacher's.
    """
    if not teacher:
        return []
    pairs = []
    for i, s in enumerate(student):
        j = min(range(len(teacher)),
                key=lambda j: (abs(math.log2(teacher[j].stride) - math.log2(s.stride)), -j))
        pairs.append((i, j))
    return pairs


class HintLoss(nn.Module):
    """FitNets hints (Romero et al. 2015) at every matched stage pair::

        L = 1/P * sum_p mean((BN(conv1x1(s_p)) resized to t_p's size - t_p)^2)

    The 1x1-conv + BN connectors are trained with the student and dropped afterwards.
    """

    def __init__(self, student: list[TapInfo], teacher: list[TapInfo]) -> None:
        super().__init__()
        self.pairs = match_taps(student, teacher)
        self.connectors = nn.ModuleList(
            nn.Sequential(nn.Conv2d(student[i].channels, teacher[j].channels, 1, bias=False),
                          nn.BatchNorm2d(teacher[j].channels))
            for i, j in self.pairs)

    def forward(self, s_feats: list[torch.Tensor], t_feats: list[torch.Tensor]):
        total = s_feats[0].new_zeros(())
        for (i, j), conn in zip(self.pairs, self.connectors, strict=True):
            s, t = conn(s_feats[i]), t_feats[j]
            if s.shape[-2:] != t.shape[-2:]:
                if s.shape[-1] > t.shape[-1]:
                    s = F.adaptive_avg_pool2d(s, t.shape[-2:])
                else:
                    s = F.interpolate(s, size=t.shape[-2:], mode="bilinear",
                                      align_corners=False)
            total = total + F.mse_loss(s, t)
        return total / max(1, len(self.pairs))


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


@dataclass(frozen=True)
class TrainConfig:
    """The brief training recipe used to rank candidates (and, longer, to train teachers)."""

    epochs: float = 1.0
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup: float = 0.05
    train_fraction: float = 1.0
    kd: str = "feature"
    temperature: float = 4.0
    kd_alpha: float = 0.9
    hint_weight: float = 1.0
    seed: int = 0
    channels_last: bool = True

    def __post_init__(self) -> None:
        if not self.epochs > 0:
            raise KdnasError(f"epochs must be positive, got {self.epochs}")
        if not 0 < self.train_fraction <= 1:
            raise KdnasError(f"train fraction must be in (0, 1], got {self.train_fraction}")
        if self.kd not in KD_METHODS:
            raise KdnasError(f"unknown distillation method {self.kd!r}: choose one of "
                             f"{', '.join(KD_METHODS)}")
        if not 0 <= self.kd_alpha <= 1:
            raise KdnasError(f"kd_alpha must be in [0, 1], got {self.kd_alpha}")
        if self.batch_size < 1 or self.lr <= 0 or self.temperature <= 0:
            raise KdnasError("batch size, learning rate and temperature must be positive")


@dataclass
class FitResult:
    val_accuracy: float
    seconds: float
    steps: int
    curve: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    warm = max(1, int(cfg.warmup * total))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def evaluate(model: nn.Module, data, split: str = "val", *, batch_size: int = 500,
             channels_last: bool = True) -> float:
    """Top-1 accuracy (0..1) on a split."""
    was_training = model.training
    model.eval()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    correct = total = 0
    for x, y, _ in data.batches(split, batch_size):
        correct += int((model(x).argmax(1) == y).sum())
        total += len(y)
    model.train(was_training)
    return correct / max(1, total)


def fit(student: nn.Module, data, cfg: TrainConfig, *, teacher=None,
        student_taps: list[TapInfo] | None = None,
        progress: Callable[[int, int, float], None] | None = None) -> FitResult:
    """Train ``student`` on the training split; return its validation accuracy.

    ``teacher`` is a :class:`kdnas.teacher.Teacher` or None (cross-entropy alone). With
    ``cfg.kd == "feature"`` the loss is ``(1-a) CE + a KD + w hints``; with ``"logit"`` the
    hints are dropped; with ``"none"`` or no teacher it is CE alone.
    """
    torch.manual_seed(cfg.seed)
    kd_on = teacher is not None and cfg.kd != "none"
    hints_on = kd_on and cfg.kd == "feature" and bool(student_taps) and bool(teacher.taps)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    student.to(memory_format=fmt).train()
    hint = HintLoss(student_taps, teacher.taps).to(memory_format=fmt) if hints_on else None
    kd_loss = KDLoss(cfg.temperature)
    if kd_on:
        teacher.module.to(memory_format=fmt).eval()

    params = list(student.parameters()) + (list(hint.parameters()) if hint else [])
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
                          weight_decay=cfg.weight_decay)
    indices = data.subset_indices(cfg.train_fraction, cfg.seed)
    steps_per_epoch = math.ceil(len(indices) / cfg.batch_size)
    total = max(1, int(round(cfg.epochs * steps_per_epoch)))

    s_taps = FeatureTaps(student, [t.module for t in student_taps]) if hint else None
    t_taps = FeatureTaps(teacher.module, [t.module for t in teacher.taps]) if hint else None
    curve: list[dict] = []
    step, t0 = 0, time.perf_counter()
    try:
        epoch = 0
        while step < total:
            running, seen = 0.0, 0
            for x, y, _ in data.batches("train", cfg.batch_size, indices=indices, shuffle=True,
                                        augment=True, seed=cfg.seed * 1000 + epoch):
                if step >= total:
                    break
                for group in opt.param_groups:
                    group["lr"] = _lr_at(step, total, cfg)
                logits = student(x)
                loss = F.cross_entropy(logits, y)
                if kd_on:
                    with torch.no_grad():
                        t_logits = teacher.module(x)
                    loss = (1 - cfg.kd_alpha) * loss + cfg.kd_alpha * kd_loss(logits, t_logits)
                    if hint is not None:
                        loss = loss + cfg.hint_weight * hint(s_taps.features(),
                                                             t_taps.features())
                        s_taps.clear()
                        t_taps.clear()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if not math.isfinite(loss.item()):
                    log.warning("training diverged (loss %s) at step %d", loss.item(), step)
                    return FitResult(0.0, time.perf_counter() - t0, step, curve)
                running += loss.item() * len(y)
                seen += len(y)
                step += 1
                if progress is not None:
                    progress(step, total, loss.item())
            curve.append({"epoch": epoch + 1, "step": step, "train_loss": running / max(1, seen)})
            epoch += 1
    finally:
        for taps in (s_taps, t_taps):
            if taps is not None:
                taps.close()
    acc = evaluate(student, data, "val", channels_last=cfg.channels_last)
    curve[-1]["val_accuracy"] = acc
    return FitResult(acc, time.perf_counter() - t0, step, curve)
