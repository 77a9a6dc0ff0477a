"""Distillation: losses, feature taps and the brief trainer.

The trainer reads straight down: for each batch, run the teacher (no grad) and the student,
each with forward hooks on its stage taps, add cross-entropy, Hinton KD on the logits and
FitNets hints between stages of equal resolution, and step SGD on a warmup+cosine schedule.
Nothing here knows which search space the student came from: it only needs its taps.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from kdnas.errors import KdnasError
from search_spaces import TapInfo

log = logging.getLogger(__name__)

# --kd: feature losses add to logit KD; "feature" is FitNets, the default
KD_METHODS = ("feature", "fitnets", "at", "sp", "pkt", "logit", "none")
FEATURE_METHODS = ("fitnets", "at", "sp", "pkt")
# default weight of each feature loss, scaled so that it starts near the size of the KD term
FEATURE_WEIGHTS = {"fitnets": 1.0, "at": 5.0, "sp": 3000.0, "pkt": 30000.0}


def canonical_method(kd: str) -> str:
    return "fitnets" if kd == "feature" else kd


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


def _rows(f: torch.Tensor) -> torch.Tensor:
    """A (b, c, h, w) map as (b*h*w, c) rows: a view when ``f`` is channels_last."""
    return f.permute(0, 2, 3, 1).reshape(-1, f.shape[1])


def _per_sample(f: torch.Tensor) -> torch.Tensor:
    """A (b, ...) map as (b, d), ordering each sample's values as they lie in memory (a view
    for contiguous and channels_last maps). Only for quantities that ignore that order."""
    if f.dim() == 4 and f.is_contiguous(memory_format=torch.channels_last):
        return f.permute(0, 2, 3, 1).reshape(f.shape[0], -1)
    return f.reshape(f.shape[0], -1)


def _block_gram(a: torch.Tensor, b: torch.Tensor, blocks: int) -> torch.Tensor:
    """``a^T b`` for row matrices, summed over ``blocks`` equal row blocks."""
    if blocks <= 1:
        return a.t() @ b
    return torch.bmm(a.view(blocks, -1, a.shape[1]).transpose(1, 2),
                     b.view(blocks, -1, b.shape[1])).sum(0)


class _ClosedFormHint(torch.autograd.Function):
    """``mean((BN(conv1x1(s)) - t)^2)``, BN in training mode, without building BN(conv(s)).

    With rows S (m x c) of s, T (m x k) of t, connector weight W (k x c): z = S W^T has batch
    mean W mu and variance v = diag(W C W^T) (mu, C: mean and covariance of S), so
    BN(z) = a (z - W mu) + beta with a = gamma / sqrt(v + eps), and the squared error summed
    over rows is ``m sum(a^2 v) + m |beta|^2 - 2 sum(a q + beta t1) + |T|^2`` with
    q = diag(W (S - mu)^T T) and t1 = T^T 1. So the forward needs only S^T S, S^T T and the
    sums of S, T and T^2 (matmuls over the maps), and the backward two matmuls,
    ``dS = 1 g_mu^T + S G + T H``: no pass over a connector output, BN statistics or
    squared difference. The small algebra between runs in float64 inside this one autograd
    node (its gradients derived by hand; the tests compare them with autograd's on the
    modules), so its tiny ops cost no graph bookkeeping.
    """

    @staticmethod
    def forward(ctx, s, t, weight, gamma, beta, bn):
        k, eps = t.shape[1], bn.eps
        rows = _rows(s)
        tr = _rows(t).to(rows.dtype).contiguous()  # fp16 cached maps: converted once
        m = rows.shape[0]
        ones = rows.new_ones(m)
        # per-image blocks keep each product in cache: about twice as fast on large maps
        blocks = s.shape[0] if s.shape[2] * s.shape[3] >= 256 else 1
        sss, sst = _block_gram(rows, rows, blocks).double(), _block_gram(rows, tr, blocks).double()
        s1, t1 = (rows.t() @ ones).double(), (tr.t() @ ones).double()
        tt = torch.dot(tr.view(-1), tr.view(-1)).double()
        w, gam, bet = weight.detach().flatten(1).double(), gamma.detach().double(), \
            beta.detach().double()
        mu = s1 / m
        cov = sss / m - torch.outer(mu, mu)
        x = sst - torch.outer(mu, t1)  # (S - mu)^T T
        wc = w @ cov
        v = (wc * w).sum(1)
        r = torch.rsqrt(v + eps)
        a = gam * r
        q = (w * x.t()).sum(1)
        n = m * k
        loss = (m * (a * a * v).sum() + m * (bet * bet).sum()
                - 2 * ((a * q).sum() + (bet * t1).sum()) + tt) / n
        # gradients of the loss (chain rule through a, v, q, C, X, mu; tested in float64)
        g_a = (2 * m * a * v - 2 * q) / n
        g_v = m * a * a / n - g_a * a / (2 * (v + eps))
        g_q = -2 * a / n
        g_w = 2 * g_v[:, None] * wc + g_q[:, None] * x.t()
        g_c = w.t() @ (g_v[:, None] * w)
        g_x = w.t() * g_q[None, :]
        g_mu = -2 * g_c @ mu - g_x @ t1
        ctx.save_for_backward(rows, tr, (2 * g_c / m).to(rows.dtype),
                              (g_mu / m)[None, :].to(rows.dtype), g_x.t().to(rows.dtype))
        ctx.shapes = s.shape
        ctx.small = (g_w.view_as(weight).to(weight.dtype), (g_a * r).to(gamma.dtype),
                     ((2 * m * bet - 2 * t1) / n).to(beta.dtype))
        if bn.track_running_stats and bn.running_mean is not None:  # as nn.BatchNorm2d does
            f = bn.momentum if bn.momentum is not None else 1 / (1 + int(bn.num_batches_tracked))
            bn.running_mean.lerp_((w @ mu).to(bn.running_mean.dtype), f)
            bn.running_var.lerp_((v * m / max(1, m - 1)).to(bn.running_var.dtype), f)
            bn.num_batches_tracked.add_(1)
        return loss.to(s.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        rows, tr, d_s, d_1, d_t = ctx.saved_tensors
        b, c, h, w = ctx.shapes
        g_rows = torch.addmm(d_1 * grad, rows, d_s * grad)  # (m, c), channels_last order
        g_rows.addmm_(tr, d_t * grad)
        g_s = g_rows.view(b, h, w, c).permute(0, 3, 1, 2)
        g_w, g_gamma, g_beta = (x * grad for x in ctx.small)
        return g_s, None, g_w, g_gamma, g_beta, None


def _hint_mse(s: torch.Tensor, t: torch.Tensor, conv: nn.Conv2d, bn: nn.BatchNorm2d):
    """The FitNets term of one stage pair in training, equal to ``mse(bn(conv(s)), t)`` in
    value, gradients and BN running statistics (tested)."""
    return _ClosedFormHint.apply(s, t, conv.weight, bn.weight, bn.bias, bn)


class HintLoss(nn.Module):
    """FitNets hints (Romero et al. 2015) at every matched stage pair::

        L = 1/P * sum_p mean((BN(conv1x1(s_p)) resized to t_p's size - t_p)^2)

    The 1x1-conv + BN connectors are trained with the student and dropped afterwards. In
    training, pairs of equal size take the closed form of :func:`_hint_mse`.
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
            s, t = s_feats[i], t_feats[j]
            if self.training and s.shape[-2:] == t.shape[-2:]:
                total = total + _hint_mse(s, t, conn[0], conn[1])
                continue
            s, t = conn(s), t.to(s.dtype)
            if s.shape[-2:] != t.shape[-2:]:
                if s.shape[-1] > t.shape[-1]:
                    s = F.adaptive_avg_pool2d(s, t.shape[-2:])
                else:
                    s = F.interpolate(s, size=t.shape[-2:], mode="bilinear",
                                      align_corners=False)
            total = total + F.mse_loss(s, t)
        return total / max(1, len(self.pairs))


def _pool_to_smaller(s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool the larger of two feature maps to the other's spatial size."""
    if s.shape[-2:] == t.shape[-2:]:
        return s, t
    if s.shape[-1] > t.shape[-1]:
        return F.adaptive_avg_pool2d(s, t.shape[-2:]), t
    return s, F.adaptive_avg_pool2d(t, s.shape[-2:])


def _energy(f: torch.Tensor) -> torch.Tensor:
    """``sum_c f^2`` per position, accumulated in float32 at least (fp16 cached maps)."""
    dtype = torch.promote_types(f.dtype, torch.float32)
    return torch.linalg.vector_norm(f, dim=1, dtype=dtype).square_()


class _ChannelEnergy(torch.autograd.Function):
    """``sum_c f^2`` at every position of a (b, c, h, w) map: one read forward, one fused
    multiply backward, in the map's own memory layout."""

    @staticmethod
    def forward(ctx, f: torch.Tensor):
        ctx.save_for_backward(f)
        return _energy(f)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        (f,) = ctx.saved_tensors
        return f * (2 * g).unsqueeze(1).to(f.dtype)


class ATLoss(nn.Module):
    """Attention transfer (Zagoruyko & Komodakis 2017) at every matched stage pair::

        a(f) = normalize_l2(mean_c f^2)  (one value per position)
        L = 1/P * sum_p mean_b ||a(s_p) - a(t_p)||^2

    No connector: channel counts may differ. The larger map is pooled to the smaller's size.
    Summing over positions (rather than averaging, as the paper's code does with a weight of
    1000 tuned for 32 px maps) keeps the loss in [0, 4] whatever the resolution.
    """

    def __init__(self, student: list[TapInfo], teacher: list[TapInfo]) -> None:
        super().__init__()
        self.pairs = match_taps(student, teacher)

    @staticmethod
    def attention(f: torch.Tensor) -> torch.Tensor:
        # normalising makes mean_c and sum_c alike
        return F.normalize(_ChannelEnergy.apply(f).flatten(1), dim=1)

    def forward(self, s_feats, t_feats):
        total = s_feats[0].new_zeros(())
        for i, j in self.pairs:
            s, t = _pool_to_smaller(s_feats[i], t_feats[j])
            total = total + (self.attention(s) - self.attention(t)).pow(2).sum(1).mean()
        return total / max(1, len(self.pairs))


class SPLoss(nn.Module):
    """Similarity-preserving KD (Tung & Mori 2019) on the last matched stage::

        G(f) = normalize_rows(F F^T), F = f flattened per sample (b x d)
        L = ||G(s) - G(t)||_F^2 / b^2

    Relational: compares which samples the two nets find alike, so no connector and no
    spatial alignment are needed. Like the reference implementation (RepDistiller) it uses
    the last stage only: the b x b Gram of a 32 px map costs a third of a small student's
    step, and all three CIFAR stages gave resnet8 40.1% against 39.4% for the last alone
    (2 seeds, spread 4.8 points; benchmarks/distill_methods.py).
    """

    def __init__(self, student: list[TapInfo], teacher: list[TapInfo]) -> None:
        super().__init__()
        self.pairs = match_taps(student, teacher)[-1:]

    @staticmethod
    def gram(f: torch.Tensor) -> torch.Tensor:
        flat = _per_sample(f).float()
        return F.normalize(flat @ flat.t(), dim=1)

    def forward(self, s_feats, t_feats):
        total = s_feats[0].new_zeros(())
        for i, j in self.pairs:
            b = s_feats[i].shape[0]
            total = total + (self.gram(s_feats[i]) - self.gram(t_feats[j])).pow(2).sum() / b**2
        return total / max(1, len(self.pairs))


class PKTLoss(nn.Module):
    """Probabilistic knowledge transfer (Passalis & Tefas 2018) on the last stage, pooled::

        K(f) = (cos(f_i, f_j) + 1) / 2,  P(f) = K(f) / row sums
        L = mean_ij P_t log(P_t / P_s)

    Relational, on globally pooled embeddings, so any two families can be paired.
    """

    eps = 1e-7

    def __init__(self, student: list[TapInfo], teacher: list[TapInfo]) -> None:
        super().__init__()
        self.pairs = match_taps(student, teacher)[-1:]

    def _probs(self, f: torch.Tensor) -> torch.Tensor:
        z = F.normalize(f.mean((2, 3), dtype=torch.float32) if f.dim() == 4 else f.float(),
                        dim=1)
        k = (z @ z.t() + 1) / 2
        return k / k.sum(1, keepdim=True)

    def forward(self, s_feats, t_feats):
        if not self.pairs:
            return s_feats[0].new_zeros(())
        i, j = self.pairs[0]
        p_s, p_t = self._probs(s_feats[i]), self._probs(t_feats[j])
        return (p_t * torch.log((p_t + self.eps) / (p_s + self.eps))).mean()


def feature_loss(method: str, student: list[TapInfo], teacher: list[TapInfo]) -> nn.Module:
    """The feature loss module of a ``--kd`` method (FitNets, AT, SP or PKT)."""
    return {"fitnets": HintLoss, "at": ATLoss, "sp": SPLoss,
            "pkt": PKTLoss}[canonical_method(method)](student, teacher)


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
    feature_weight: float | None = None  # None: the method's default (FEATURE_WEIGHTS)
    schedule: str = "cosine"  # or "step": x0.1 at 50% and 75% of the steps
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
        if self.schedule not in ("cosine", "step"):
            raise KdnasError(f"schedule must be cosine or step, got {self.schedule!r}")
        if self.feature_weight is not None and self.feature_weight < 0:
            raise KdnasError(f"feature weight must be >= 0, got {self.feature_weight}")

    @property
    def method(self) -> str:
        return canonical_method(self.kd)

    @property
    def weight(self) -> float:
        """Weight of the feature loss."""
        if self.feature_weight is not None:
            return self.feature_weight
        return FEATURE_WEIGHTS.get(self.method, 0.0)


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
    if cfg.schedule == "step":
        return cfg.lr * (0.1 ** ((progress >= 0.5) + (progress >= 0.75)))
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


class TeacherCache:
    """Teacher logits and stage features for every step of the brief recipe, computed once.

    Every trial of a study trains on the same batches in the same order (data order and
    augmentation depend only on the seed and the epoch), so the teacher's outputs are computed
    during the first trial and read back by every later one instead of running the teacher.
    Each step is one file of fp16 tensors, loaded memory-mapped. A cache becomes usable only
    when the trial that wrote it finished every step (an atomic rename), so an interrupted
    trial leaves nothing half-written behind.
    """

    def __init__(self, root: str | Path, key: str) -> None:
        self.dir = Path(root) / key
        self._tmp: Path | None = None
        self.hits = self.writes = 0

    @property
    def complete(self) -> bool:
        return (self.dir / "COMPLETE").exists()

    def get(self, step: int, *, features: bool = True
            ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits (float32) and, if asked, stage features (fp16, memory-mapped, in the
        teacher's memory layout: the losses read them without a conversion pass)."""
        d = torch.load(self.dir / f"{step:06d}.pt", mmap=True, weights_only=True)
        self.hits += 1
        return d["logits"].float(), list(d["feats"]) if features else []

    def begin(self) -> None:
        self._tmp = self.dir.with_name(f"{self.dir.name}.tmp-{os.getpid()}")
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._tmp.mkdir(parents=True)

    def put(self, step: int, logits: torch.Tensor, feats: list[torch.Tensor]) -> None:
        if self._tmp is None:
            return
        torch.save({"logits": logits.detach().half().contiguous(),
                    "feats": [f.detach().half() for f in feats]},  # layout kept
                   self._tmp / f"{step:06d}.pt")
        self.writes += 1

    def commit(self, steps: int) -> None:
        if self._tmp is None:
            return
        (self._tmp / "COMPLETE").write_text(str(steps))
        try:
            self._tmp.rename(self.dir)  # atomic; fails if another worker got there first
        except OSError:
            shutil.rmtree(self._tmp, ignore_errors=True)
        self._tmp = None

    def abort(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


def _save_checkpoint(path: Path, student, extra, opt, step, epoch, total, curve) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"student": student.state_dict(),
                "extra": extra.state_dict() if extra is not None else {},
                "optimizer": opt.state_dict(), "step": step, "epoch": epoch, "total": total,
                "curve": curve}, tmp)
    tmp.replace(path)


def fit(student: nn.Module, data, cfg: TrainConfig, *, teacher=None,
        student_taps: list[TapInfo] | None = None, cache: TeacherCache | None = None,
        checkpoint: Path | None = None,
        progress: Callable[[int, int, float], None] | None = None) -> FitResult:
    """Train ``student`` on the training split; return its validation accuracy.

    ``teacher`` is a :class:`kdnas.teacher.Teacher` or None (cross-entropy alone). The loss
    is ``(1-a) CE + a T^2 KL`` (Hinton KD) plus ``w * feature loss`` for the feature methods
    (FitNets hints, AT, SP, PKT) when both nets have stage taps (the student's are detected
    when ``student_taps`` is empty); ``kd="none"`` is CE alone.
    With a ``cache``, the teacher's outputs are read from it (or written to it on first use).
    With a ``checkpoint`` path, the state is saved at the end of every epoch and a run that
    finds one resumes after its epoch, ending exactly where an uninterrupted run would.
    """
    torch.manual_seed(cfg.seed)
    kd_on = teacher is not None and cfg.method != "none"
    if kd_on and cfg.method in FEATURE_METHODS and teacher.taps and not student_taps:
        # a space that states no taps: find the student's stage outputs as for teachers
        from kdnas.teacher import find_stage_taps

        student_taps = find_stage_taps(student, data.input_shape)
    feats_on = (kd_on and cfg.method in FEATURE_METHODS and bool(student_taps)
                and bool(teacher.taps))
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    student.to(memory_format=fmt).train()
    extra = (feature_loss(cfg.method, student_taps, teacher.taps).to(memory_format=fmt)
             if feats_on else None)
    kd_loss = KDLoss(cfg.temperature)
    reading = kd_on and cache is not None and cache.complete
    writing = kd_on and cache is not None and not reading
    tap_teacher = kd_on and bool(teacher.taps) and not reading and (feats_on or writing)
    if kd_on and not reading:
        teacher.module.to(memory_format=fmt).eval()

    params = list(student.parameters()) + (list(extra.parameters()) if extra else [])
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
                          weight_decay=cfg.weight_decay)
    indices = data.subset_indices(cfg.train_fraction, cfg.seed)
    steps_per_epoch = math.ceil(len(indices) / cfg.batch_size)
    total = max(1, int(round(cfg.epochs * steps_per_epoch)))

    s_taps = FeatureTaps(student, [t.module for t in student_taps]) if feats_on else None
    t_taps = FeatureTaps(teacher.module, [t.module for t in teacher.taps]) if tap_teacher \
        else None
    curve: list[dict] = []
    step, epoch, t0 = 0, 0, time.perf_counter()
    if checkpoint is not None and Path(checkpoint).exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if state["total"] != total:
            raise KdnasError(f"checkpoint {checkpoint} is for a run of {state['total']} steps, "
                             f"not {total}: remove it or use the same settings")
        student.load_state_dict(state["student"])
        if extra is not None:
            extra.load_state_dict(state["extra"])
        opt.load_state_dict(state["optimizer"])
        step, epoch, curve = state["step"], state["epoch"], state["curve"]
        log.info("resuming from %s after epoch %d (step %d of %d)", checkpoint, epoch, step,
                 total)
        writing = False  # a cache is only written by a run from the start
    if writing:
        cache.begin()
    try:
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
                    if reading:
                        t_logits, t_feats = cache.get(step, features=extra is not None)
                    else:
                        with torch.no_grad():
                            t_logits = teacher.module(x)
                        t_feats = t_taps.features() if t_taps else []
                        if writing:  # train on what later trials will read: fp16 values
                            t_logits, t_feats = t_logits.half(), [f.half() for f in t_feats]
                            cache.put(step, t_logits, t_feats)
                            t_logits = t_logits.float()
                    loss = (1 - cfg.kd_alpha) * loss + cfg.kd_alpha * kd_loss(logits, t_logits)
                    if extra is not None:
                        loss = loss + cfg.weight * extra(s_taps.features(), t_feats)
                    for taps in (s_taps, t_taps):
                        if taps is not None:
                            taps.clear()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                value = loss.item()
                if not math.isfinite(value):
                    log.warning("training diverged (loss %s) at step %d", value, step)
                    return FitResult(0.0, time.perf_counter() - t0, step, curve)
                running += value * len(y)
                seen += len(y)
                step += 1
                if progress is not None:
                    progress(step, total, value)
            curve.append({"epoch": epoch + 1, "step": step, "train_loss": running / max(1, seen)})
            epoch += 1
            if checkpoint is not None:
                _save_checkpoint(Path(checkpoint), student, extra, opt, step, epoch, total,
                                 curve)
        if writing:
            cache.commit(step)
    finally:
        if writing:
            cache.abort()
        for taps in (s_taps, t_taps):
            if taps is not None:
                taps.close()
    acc = evaluate(student, data, "val", channels_last=cfg.channels_last)
    curve[-1]["val_accuracy"] = acc
    return FitResult(acc, time.perf_counter() - t0, step, curve)
