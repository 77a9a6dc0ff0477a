"""The trainer (brief ranking runs, promotions up the rungs and full distillation alike):
it reads straight down. For each batch, run the teacher (no grad, or
read its outputs from the cache) and the student, each with forward hooks on its stage taps;
add cross-entropy, the method's logit loss (Hinton KD, DKD, DIST; Hinton's mixing or the
papers' form) and its feature loss between stages of equal resolution; step SGD on a
warmup+cosine schedule. Nothing here knows which search space the
student came from: it only needs its taps.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from kdnas.core.errors import KdnasError, TrainingDiverged
from kdnas.core.files import atomic_path
from kdnas.core.settings import FEATURE_METHODS, TrainConfig
from kdnas.device import autocast, resolve, sync_every
from kdnas.distill.cache import TeacherCache
from kdnas.distill.evaluation import evaluate, hits, subset_order
from kdnas.distill.graph_step import Stepper, graphs_wanted
from kdnas.distill.hooks import FeatureTaps
from kdnas.distill.layout import PinnedConvs
from kdnas.distill.logit_losses import logit_loss
from kdnas.distill.losses import feature_loss
from search_spaces.stages import find_stage_taps
from search_spaces import TapInfo

log = logging.getLogger(__name__)


PHASES = ("student", "teacher", "data", "curve", "eval", "other")


class _Clock:
    """Seconds by phase: each ``lap(phase)`` charges the time since the previous lap.
    Phases: "student" (forward, losses, backward, step), "teacher" (run or read from the
    cache), "data" (batches, augmentation), "curve" (the learning curve's validation
    points), "eval" (the final validation), "other" (checkpoints, progress)."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}
        self.t = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.spent[phase] = self.spent.get(phase, 0.0) + now - self.t
        self.t = now

    def close(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in self.spent.items()}


@dataclass
class FitResult:
    val_accuracy: float
    seconds: float
    steps: int
    curve: list[dict] = field(default_factory=list)  # per epoch: train loss
    points: list[dict] = field(default_factory=list)  # the learning curve, by steps
    phases: dict[str, float] = field(default_factory=dict)  # seconds by phase: see _Clock
    images: int = 0  # training images seen (an epoch's last batch may be short)
    graphed_steps: int = 0  # steps replayed from a CUDA graph (kdnas.distill.graph_step)

    def to_dict(self) -> dict:
        return asdict(self)


def images_seen(n_images: int, batch_size: int, steps: int) -> int:
    """Training images seen in ``steps`` steps over ``n_images`` images an epoch: every epoch
    is ``ceil(n / batch)`` batches and its last one holds the remainder."""
    per_epoch = max(1, math.ceil(n_images / batch_size))
    full, rest = divmod(steps, per_epoch)
    return full * n_images + rest * batch_size


def _lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    warm = max(1, int(cfg.warmup * total))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    if cfg.schedule == "step":
        return cfg.lr * (0.1 ** ((progress >= 0.5) + (progress >= 0.75)))
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))


def _curve_point(student, data, cfg: TrainConfig, step: int, train_loss: float) -> dict:
    """One point of the learning curve: accuracy on a fixed validation subset."""
    acc = evaluate(student, data, "val", channels_last=cfg.channels_last, limit=cfg.eval_limit,
                   precision=cfg.precision)
    n_val = len(data.val_y) if cfg.eval_limit is None else min(cfg.eval_limit, len(data.val_y))
    return {"step": step, "images": step * cfg.batch_size, "val_subset_accuracy": acc,
            "val_images": n_val, "train_loss": train_loss}


def _final_point(student, data, cfg: TrainConfig, step: int, points: list[dict]) -> dict:
    """The learning curve's last point: accuracy on the whole validation split and, from the
    same evaluation, on the curve's subset, so that its last interval compares the same
    images."""
    right = hits(student, data, "val", channels_last=cfg.channels_last,
                 precision=cfg.precision)
    last = {"step": step, "images": step * cfg.batch_size,
            "val_accuracy": float(right.float().mean()) if len(right) else 0.0}
    if points:
        n = points[-1]["val_images"]
        sub = subset_order(len(right), n)
        last.update(val_subset_accuracy=float((right if sub is None else right[sub])
                                              .float().mean()), val_images=n)
    return last


def _save_checkpoint(path: Path, student, extra, opt, step, epoch, total, curve,
                     points) -> None:
    with atomic_path(path) as tmp:
        torch.save({"student": student.state_dict(),
                    "extra": extra.state_dict() if extra is not None else {},
                    "optimizer": opt.state_dict(), "step": step, "epoch": epoch,
                    "total": total, "curve": curve, "points": points}, tmp)


def _load_checkpoint(path: Path, student, extra, opt, total: int
                     ) -> tuple[int, int, list, list]:
    """Restore a run saved by :func:`_save_checkpoint`; returns ``(step, epoch, curve,
    points)``: where it stopped, its per-step losses and its learning-curve points."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state["total"] != total:
        raise KdnasError(f"checkpoint {path} is for a run of {state['total']} steps, "
                         f"not {total}: remove it or use the same settings")
    student.load_state_dict(state["student"])
    if extra is not None:
        extra.load_state_dict(state["extra"])
    opt.load_state_dict(state["optimizer"])
    log.info("resuming from %s after epoch %d (step %d of %d)", path, state["epoch"],
             state["step"], total)
    return state["step"], state["epoch"], state["curve"], state.get("points", [])


class _TeacherSignal:
    """The teacher's logits and stage features for each step, on the training device: read
    from a complete cache, or computed by running the teacher (and written to the cache on a
    study's first trial). A teacher moved to the device goes back to the CPU at ``close``."""

    def __init__(self, teacher, cache: TeacherCache | None, *, features: bool,
                 device: torch.device) -> None:
        self.teacher, self.cache, self.features, self.device = teacher, cache, features, device
        self.reading = cache is not None and cache.complete
        self.writing = cache is not None and not self.reading
        if self.reading:
            cache.to_device(device)  # on a GPU with room: read from its memory, not disk
        tap = bool(teacher.taps) and not self.reading and (
            features or (self.writing and cache.features))
        self.taps = FeatureTaps(teacher.module, [t.module for t in teacher.taps]) if tap \
            else None
        if not self.reading:
            teacher.module.to(device=device, memory_format=teacher.memory_format).eval()

    def begin(self, resumed: bool) -> None:
        # only a run from the start writes, and only one worker at a time
        self.writing = self.writing and not resumed and self.cache.begin()

    def get(self, step: int, x: torch.Tensor, total: int
            ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if self.reading:
            logits, feats = self.cache.get(step, features=self.features)
            if self.device.type != "cpu":  # no copy when the cache is on the device
                logits = logits.to(self.device, non_blocking=True)
                feats = [f.to(self.device, non_blocking=True) for f in feats]
            return logits, feats
        with torch.no_grad():  # float32: no family was measured faster in bf16 (kdnas.device)
            logits = self.teacher(x).float()
        feats = self.taps.features() if self.taps else []
        if self.taps:
            self.taps.clear()
        if self.writing:  # train on what later trials will read: fp16 values
            logits, feats = logits.half(), [f.half() for f in feats]
            self.writing = self.cache.put(step, logits, feats, total)
            logits = logits.float()
        return logits, feats

    def step(self, step: int, x: torch.Tensor, total: int, feats: list, clock: _Clock
             ) -> torch.Tensor:
        """:meth:`get` for the training loop: the logits; the features into ``feats``."""
        logits, feats[:] = self.get(step, x, total)
        clock.lap("teacher")
        return logits

    def end(self, step: int) -> None:
        if self.writing:
            self.cache.commit(step)

    def close(self) -> None:
        if self.writing:
            self.cache.abort()
        if self.taps is not None:
            self.taps.close()
        if not self.reading and self.device.type != "cpu":
            self.teacher.module.to("cpu")


def _feature_loss(student: nn.Module, data, cfg: TrainConfig, teacher,
                  student_taps: list[TapInfo] | None, dev: torch.device):
    """The student in its training layout on ``dev``, its taps and the feature loss module
    there (None for logit KD, cross-entropy, or when either net has no taps)."""
    if (teacher is not None and cfg.method in FEATURE_METHODS and teacher.taps
            and not student_taps):
        # a space that states no taps: find the student's stage outputs as for teachers
        student_taps = find_stage_taps(student, data.input_shape)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    student.to(device=dev, memory_format=fmt).train()
    if teacher is None or cfg.method not in FEATURE_METHODS or not student_taps \
            or not teacher.taps:
        return student_taps, None
    return student_taps, feature_loss(cfg.entry, student_taps, teacher.taps).to(
        device=dev, memory_format=fmt)


def _finite(value: float, step: int, total: int, cfg: TrainConfig) -> float:
    if not math.isfinite(value):
        raise TrainingDiverged(f"training diverged: loss {value} at step {step + 1} of "
                               f"{total} (learning rate {cfg.lr:g})",
                               "a lower --lr, or a smaller distillation weight, may train")
    return value


def _drain(dev: torch.device, clock: _Clock) -> None:
    """Wait for the steps still queued on a GPU: their time is the student's, not eval's."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        clock.lap("student")


def _stepper(student, cfg: TrainConfig, kd_loss, extra, s_taps, t_feats: list, dev
             ) -> tuple[torch.optim.SGD, Stepper]:
    """The optimizer (student and connectors) and the step that trains with it: replayed from
    a CUDA graph on a GPU, for logit methods (:mod:`kdnas.distill.graph_step`)."""
    params = list(student.parameters()) + (list(extra.parameters()) if extra else [])
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
                          weight_decay=cfg.weight_decay)
    return opt, Stepper(lambda *a: _loss(student, cfg, kd_loss, extra, s_taps, t_feats, *a),
                        opt, dev, graphs=graphs_wanted(dev) and extra is None)


def _loss(student, cfg: TrainConfig, kd_loss: nn.Module, extra, s_taps: FeatureTaps | None,
          t_feats: list, x, y, t_logits: torch.Tensor | None, scale) -> torch.Tensor:
    """One batch's loss: cross-entropy, and with the teacher's logits the method's logit loss
    (Hinton KD, DKD, DIST; :mod:`kdnas.distill.logit_losses`) at its weight ``scale``, and its
    feature loss. The forward pass runs under the recipe's precision
    (:func:`kdnas.device.autocast`); the losses in float32."""
    with autocast(x.device, cfg.precision):
        logits = student(x)
    logits = logits.float()
    loss = F.cross_entropy(logits, y)
    if t_logits is None:
        return loss
    if cfg.ce_weight is None:  # Hinton's mixing
        loss = (1 - cfg.kd_alpha) * loss + cfg.kd_alpha * kd_loss(logits, t_logits, y,
                                                                   scale=scale)
    else:  # the DKD and DIST papers' form
        loss = cfg.ce_weight * loss + kd_loss(logits, t_logits, y, scale=scale)
    if extra is not None:
        s_feats = s_taps.features()
        if x.device.type != "cpu":  # bf16 from autocast or fp16 from the cache
            s_feats, t_feats = [f.float() for f in s_feats], [f.float() for f in t_feats]
        loss = loss + cfg.weight * extra(s_feats, t_feats)
        s_taps.clear()
    return loss


class _LossLog:
    """The training loss, read back from the device every ``every`` steps in one transfer
    (every step on a CPU), checked finite and averaged over the epoch."""

    def __init__(self, every: int, total: int, cfg: TrainConfig) -> None:
        self.every, self.total, self.cfg = every, total, cfg
        self.pending: list[tuple[torch.Tensor, int, int]] = []  # loss, images, step
        self.sum = 0.0
        self.seen = 0
        self.last = float("nan")

    def add(self, loss: torch.Tensor, images: int, step: int) -> bool:
        """Record one step's loss; True when the values were read back (``last`` is new):
        every ``every`` steps, and at the last step."""
        self.pending.append((loss.detach(), images, step))
        return (len(self.pending) >= self.every or step + 1 == self.total) and self.flush()

    def flush(self) -> bool:
        if not self.pending:
            return False
        values = torch.stack([p[0] for p in self.pending]).tolist() if self.every > 1 \
            else [self.pending[0][0].item()]
        for v, (_, n, step) in zip(values, self.pending, strict=True):
            self.last = _finite(v, step, self.total, self.cfg)
            self.sum, self.seen = self.sum + v * n, self.seen + n
        self.pending.clear()
        return True

    def epoch_mean(self) -> float:
        """The mean loss since the last call (reading back what is pending)."""
        self.flush()
        mean = self.sum / max(1, self.seen)
        self.sum, self.seen = 0.0, 0
        return mean

    def mean(self) -> float:
        self.flush()
        return self.sum / max(1, self.seen)


def _load_start(start: dict | None, student: nn.Module, extra: nn.Module | None) -> bool:
    """Begin from a finished run's weights: the student's, and its connectors' if any.
    Returns whether there is a feature loss (connectors)."""
    if start is not None:
        student.load_state_dict(start["student"])
        if extra is not None and start.get("extra"):
            extra.load_state_dict(start["extra"])
    return extra is not None


def _cpu_state(module: nn.Module | None) -> dict:
    return {} if module is None else {k: v.detach().cpu()
                                      for k, v in module.state_dict().items()}


def _on_device(x: torch.Tensor, y: torch.Tensor, dev: torch.device, channels_last: bool
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch on ``dev`` in the recipe's layout (the batches come channels_last; a copy
    re-strides a one-channel batch too, which counts as contiguous either way)."""
    x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
    return (x if channels_last else x.clone(memory_format=torch.contiguous_format)), y


def fit(student: nn.Module, data, cfg: TrainConfig, *, teacher=None,
        student_taps: list[TapInfo] | None = None, cache: TeacherCache | None = None,
        checkpoint: Path | None = None, start: dict | None = None, keep: dict | None = None,
        progress: Callable[[int, int, float], None] | None = None) -> FitResult:
    """Train ``student`` on the training split; return its validation accuracy.

    ``teacher``: a Teacher or None (CE alone). Loss: ``cfg.kd``'s logit loss L as ``(1-a) CE
    + a L`` (Hinton's mixing) or ``c CE + L`` (the papers', ``c = cfg.ce_weight``), plus ``w *
    feature loss`` when both nets have taps (the student's found when ``student_taps`` is []).
    ``cache``: the teacher's outputs, read (or written on first use). ``checkpoint``: saved
    every epoch; a run that finds one resumes where an uninterrupted run would be. ``start``
    (``{"student": state, "extra": state}``): train on from those weights; ``keep`` receives
    the connectors' weights. On ``cfg.device``; the student is returned on the CPU."""
    torch.manual_seed(cfg.seed)
    dev = resolve(cfg.device)
    data = data.on(dev)
    kd_on = teacher is not None and cfg.method != "none"
    student_taps, extra = _feature_loss(student, data, cfg, teacher if kd_on else None,
                                        student_taps, dev)
    feats_on = _load_start(start, student, extra)
    pinned = PinnedConvs(student) if cfg.channels_last else None  # CPU kernels' bug
    kd_loss = logit_loss(cfg.entry, cfg.temperature)
    signal = _TeacherSignal(teacher, cache, features=feats_on, device=dev) if kd_on else None
    indices = data.subset_indices(cfg.train_fraction, cfg.seed)
    total = cfg.total_steps(len(indices))
    s_taps = FeatureTaps(student, [t.module for t in student_taps]) if feats_on else None
    t_feats: list = []  # the teacher's features of this step, read by the loss
    opt, stepper = _stepper(student, cfg, kd_loss, extra, s_taps, t_feats, dev)
    step, epoch, curve, points, t0, clock = 0, 0, [], [], time.perf_counter(), _Clock()
    losses = _LossLog(sync_every(dev), total, cfg)
    if checkpoint is not None and Path(checkpoint).exists():
        step, epoch, curve, points = _load_checkpoint(Path(checkpoint), student, extra, opt,
                                                      total)
    if signal is not None:
        signal.begin(resumed=step > 0)
    clock.lap("other")
    try:
        while step < total:
            for x, y, _ in data.batches("train", cfg.batch_size, indices=indices, shuffle=True,
                                        augment=True, seed=cfg.seed * 1000 + epoch):
                if step >= total:
                    break
                x, y = _on_device(x, y, dev, cfg.channels_last)
                clock.lap("data")
                t_logits = signal.step(step, x, total, t_feats, clock) if signal else None
                loss = stepper(x, y, t_logits, _lr_at(step, total, cfg),
                               kd_loss.scale(step, total))
                read = losses.add(loss, len(y), step)
                step += 1
                clock.lap("student")
                if cfg.eval_every and step % cfg.eval_every == 0 and step < total:
                    points.append(_curve_point(student, data, cfg, step, losses.mean()))
                    clock.lap("curve")
                if progress is not None and read:
                    progress(step, total, losses.last)
                    clock.lap("other")
            curve.append({"epoch": epoch + 1, "step": step, "train_loss": losses.epoch_mean()})
            epoch += 1
            if checkpoint is not None:
                _save_checkpoint(Path(checkpoint), student, extra, opt, step, epoch, total,
                                 curve, points)
            clock.lap("other")
        _drain(dev, clock)
        if signal is not None:
            signal.end(step)
            clock.lap("teacher")
    finally:
        for closing in (signal, s_taps, pinned):
            if closing is not None:
                closing.close()
    points.append(_final_point(student, data, cfg, step, points))
    acc = curve[-1]["val_accuracy"] = points[-1]["val_accuracy"]
    student.to("cpu")
    if keep is not None:
        keep["extra"] = _cpu_state(extra)
    clock.lap("eval")
    seen = images_seen(len(indices), cfg.batch_size, step)
    return FitResult(acc, time.perf_counter() - t0, step, curve, points, clock.close(), seen,
                     stepper.replays)
