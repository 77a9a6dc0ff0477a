"""Feature distillation losses, each a small module with its formula in the docstring: FitNets
(hints through connectors), attention transfer, similarity preserving, probabilistic knowledge
transfer and relational KD (the logit losses are in :mod:`kdnas.distill.logit_losses`).
Stages of student and teacher are paired by resolution (:func:`match_taps`); nothing here
knows the student's family."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from kdnas.core.settings import KDMethod
from kdnas.distill.hint import hint_mse
from search_spaces import TapInfo


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


def _per_sample(f: torch.Tensor) -> torch.Tensor:
    """A (b, ...) map as (b, d), ordering each sample's values as they lie in memory (a view
    for contiguous and channels_last maps). Only for quantities that ignore that order."""
    if f.dim() == 4 and f.is_contiguous(memory_format=torch.channels_last):
        return f.permute(0, 2, 3, 1).reshape(f.shape[0], -1)
    return f.reshape(f.shape[0], -1)


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
                total = total + hint_mse(s, t, conn[0], conn[1])
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
        z = F.normalize(_pooled(f), dim=1)
        k = (z @ z.t() + 1) / 2
        return k / k.sum(1, keepdim=True)

    def forward(self, s_feats, t_feats):
        if not self.pairs:
            return s_feats[0].new_zeros(())
        i, j = self.pairs[0]
        p_s, p_t = self._probs(s_feats[i]), self._probs(t_feats[j])
        return (p_t * torch.log((p_t + self.eps) / (p_s + self.eps))).mean()


def _pooled(f: torch.Tensor) -> torch.Tensor:
    """A stage's map as one embedding per sample (global average pool), in float32."""
    return f.mean((2, 3), dtype=torch.float32) if f.dim() == 4 else f.float()


class RKDLoss(nn.Module):
    """Relational KD (Park et al., CVPR 2019, "Relational knowledge distillation") on the last
    stage's pooled embeddings ``e``::

        psi_D(i, j) = ||e_i - e_j|| / mu,  mu = mean over pairs i != j of ||e_i - e_j||
        psi_A(i, j, k) = <normalize(e_i - e_j), normalize(e_k - e_j)>
        L = huber(psi_D(s), psi_D(t)) + 2 * huber(psi_A(s), psi_A(t))

    (Huber = smooth L1 with beta 1, mean over pairs and over triplets; the paper weighs
    distance 25 and angle 50, so the table's weight is 25.) Relational, so any two families
    pair without a connector.
    """

    angle_weight = 2.0

    def __init__(self, student: list[TapInfo], teacher: list[TapInfo]) -> None:
        super().__init__()
        self.pairs = match_taps(student, teacher)[-1:]

    @staticmethod
    def distances(e: torch.Tensor) -> torch.Tensor:
        d = torch.cdist(e, e)
        off = ~torch.eye(len(e), dtype=torch.bool, device=e.device)
        return d / d[off].mean().clamp_min(1e-12)

    @staticmethod
    def angles(e: torch.Tensor) -> torch.Tensor:
        diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), dim=2)  # [j, i] = e_i - e_j
        return torch.bmm(diff, diff.transpose(1, 2))  # [j, i, k]

    def forward(self, s_feats, t_feats):
        if not self.pairs:
            return s_feats[0].new_zeros(())
        i, j = self.pairs[0]
        s, t = _pooled(s_feats[i]), _pooled(t_feats[j])
        with torch.no_grad():
            d_t, a_t = self.distances(t), self.angles(t)
        dist = F.smooth_l1_loss(self.distances(s), d_t)
        angle = F.smooth_l1_loss(self.angles(s), a_t)
        return dist + self.angle_weight * angle


# the loss module of each feature method of kdnas.core.settings.KD_TABLE
FEATURE_LOSSES: dict[str, type[nn.Module]] = {"fitnets": HintLoss, "at": ATLoss, "sp": SPLoss,
                                              "pkt": PKTLoss, "rkd": RKDLoss}


def feature_loss(method: KDMethod, student: list[TapInfo], teacher: list[TapInfo]
                 ) -> nn.Module:
    """The feature loss module of a feature method's table entry (its ``hints`` module, where
    it borrows another method's)."""
    return FEATURE_LOSSES[method.hints or method.name](student, teacher)
