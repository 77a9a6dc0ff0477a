"""Distillation losses on the logits alone, each a small module with its formula and paper:
Hinton KD, decoupled KD (DKD), DIST, and logit standardisation (LS) as an option on top of KD
and DKD. They read only the teacher's logits, which the teacher cache already holds, so none
costs a teacher pass or a feature map. Every module is called as ``loss(student_logits,
teacher_logits, labels)`` (KD and DIST ignore the labels) and returns a scalar."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdnas.core.kd_methods import KDMethod


def standardise(z: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Logit standardisation (Sun et al., CVPR 2024, "Logit standardization in knowledge
    distillation"): the z-score of each sample's logits, ``(z - mean(z)) / (std(z) + eps)``
    (std with Bessel's correction, as the paper's code), so the student matches the teacher's
    logit *relations* and not their range."""
    return (z - z.mean(1, keepdim=True)) / (z.std(1, keepdim=True) + eps)


class KDLoss(nn.Module):
    """Hinton et al. (2015): ``T^2 * KL(softmax(t/T) || softmax(s/T))``, mean over the batch;
    with ``standardised``, both logits are first standardised (:func:`standardise`)."""

    def __init__(self, temperature: float = 4.0, standardised: bool = False) -> None:
        super().__init__()
        self.temperature, self.standardised = temperature, standardised

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                labels: torch.Tensor | None = None):
        s, t = student_logits, teacher_logits
        if self.standardised:
            s, t = standardise(s), standardise(t)
        temp = self.temperature
        log_p_s = F.log_softmax(s / temp, dim=1)
        log_p_t = F.log_softmax(t / temp, dim=1)
        return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * temp * temp


class DKDLoss(nn.Module):
    """Decoupled KD (Zhao et al., CVPR 2022, "Decoupled knowledge distillation")::

        b(z) = [p_y, 1 - p_y]                      (target vs the rest, p = softmax(z/T))
        q(z) = softmax over the non-target classes of z/T
        TCKD = KL(b(t) || b(s)),  NCKD = KL(q(t) || q(s))
        L = T^2 * (alpha * TCKD + beta * NCKD),    mean over the batch

    Hinton KD equals ``TCKD + (1 - p_y(t)) * NCKD``: the teacher's confidence suppresses the
    non-target term, which DKD weights freely. The paper's CIFAR setting: alpha 1, beta 8,
    T 4, the loss ramped in over the first 20 of 240 epochs (``KDMethod.ramp``)."""

    def __init__(self, temperature: float = 4.0, alpha: float = 1.0, beta: float = 8.0,
                 standardised: bool = False) -> None:
        super().__init__()
        self.temperature, self.alpha, self.beta = temperature, alpha, beta
        self.standardised = standardised

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                labels: torch.Tensor):
        s, t = student_logits, teacher_logits
        if self.standardised:
            s, t = standardise(s), standardise(t)
        temp = self.temperature
        s, t = s / temp, t / temp
        target = F.one_hot(labels, s.shape[1]).bool()
        log_b_s, log_b_t = _binary_log_probs(s, target), _binary_log_probs(t, target)
        tckd = F.kl_div(log_b_s, log_b_t, reduction="batchmean", log_target=True)
        # the target class removed: -inf before the softmax, and its term left out of the sum
        gone = torch.finfo(s.dtype).min
        log_q_s = F.log_softmax(s.masked_fill(target, gone), dim=1)
        log_q_t = F.log_softmax(t.masked_fill(target, gone), dim=1)
        terms = log_q_t.exp() * (log_q_t - log_q_s)
        nckd = terms.masked_fill(target, 0.0).sum(1).mean()
        return (self.alpha * tckd + self.beta * nckd) * temp * temp


def _binary_log_probs(z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """log [p_y, 1 - p_y] of softmax(z) per sample, computed stably (b x 2)."""
    log_p = F.log_softmax(z, dim=1)
    log_py = log_p[target]
    log_rest = torch.logsumexp(log_p.masked_fill(target, float("-inf")), dim=1)
    return torch.stack([log_py, log_rest], dim=1)


def _pearson_loss(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``1 - mean_i pearson(a_i, b_i)`` over the rows."""
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    r = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)
    return 1 - r.mean()


class DISTLoss(nn.Module):
    """DIST (Huang et al., NeurIPS 2022, "Knowledge distillation from a stronger teacher"):
    match the *relations* of the predictions rather than the predictions::

        Y_s = softmax(s/T), Y_t = softmax(t/T)          (b x classes)
        inter = 1 - mean_i pearson(Y_s[i, :], Y_t[i, :])   (each sample's class ranking)
        intra = 1 - mean_c pearson(Y_s[:, c], Y_t[:, c])   (each class over the batch)
        L = T^2 * (beta * inter + gamma * intra)

    The paper's CIFAR setting: T 4, beta = gamma = 2 (given here as weight 2 in the table)."""

    def __init__(self, temperature: float = 4.0, beta: float = 1.0, gamma: float = 1.0
                 ) -> None:
        super().__init__()
        self.temperature, self.beta, self.gamma = temperature, beta, gamma

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                labels: torch.Tensor | None = None):
        temp = self.temperature
        y_s = F.softmax(student_logits / temp, dim=1)
        y_t = F.softmax(teacher_logits / temp, dim=1)
        inter, intra = _pearson_loss(y_s, y_t), _pearson_loss(y_s.t(), y_t.t())
        return temp * temp * (self.beta * inter + self.gamma * intra)


class _Weighted(nn.Module):
    """A logit loss times its method's weight, ramped in linearly over the first ``ramp``
    share of the steps (DKD's warm-up)."""

    def __init__(self, loss: nn.Module, weight: float, ramp: float) -> None:
        super().__init__()
        self.loss, self.weight, self.ramp = loss, weight, ramp

    def scale(self, step: int, total: int) -> float:
        """The weight at ``step`` of ``total``: the method's, times the ramp's share."""
        if self.ramp > 0:
            return self.weight * min(1.0, (step + 1) / max(1.0, self.ramp * total))
        return self.weight

    def forward(self, s, t, labels, step: int = 0, total: int = 1, scale=None):
        """The loss at ``step`` of ``total``, or times ``scale`` (a float, or a 0-dim tensor
        on the device that a CUDA graph's step fills: :mod:`kdnas.distill.graph_step`)."""
        scale = self.scale(step, total) if scale is None else scale
        value = self.loss(s, t, labels)
        if isinstance(scale, torch.Tensor):
            return value * scale
        return value if scale == 1.0 else value * scale


def logit_loss(method: KDMethod, temperature: float) -> nn.Module:
    """The logit loss of a ``--kd`` method (``KDMethod.logits``), at the method's own
    temperature where it names one, else the recipe's; called as ``loss(s, t, labels, step,
    total)``."""
    temp = method.temperature or temperature
    if method.logits == "dkd":
        base = DKDLoss(temp, standardised=method.standardised)
    elif method.logits == "dist":
        base = DISTLoss(temp)
    else:
        base = KDLoss(temp, standardised=method.standardised)
    return _Weighted(base, method.logit_weight, method.ramp)
