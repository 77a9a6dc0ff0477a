"""The FitNets hint in closed form: ``mse(BN(conv1x1(s)), t)`` from Gram matrices, without
building the connector's output (BatchNorm in channels_last is the slow kernel on a CPU)."""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable


def _rows(f: torch.Tensor) -> torch.Tensor:
    """A (b, c, h, w) map as (b*h*w, c) rows: a view when ``f`` is channels_last."""
    return f.permute(0, 2, 3, 1).reshape(-1, f.shape[1])


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


def hint_mse(s: torch.Tensor, t: torch.Tensor, conv: nn.Conv2d, bn: nn.BatchNorm2d):
    """The FitNets term of one stage pair in training, equal to ``mse(bn(conv(s)), t)`` in
    value, gradients and BN running statistics (tested)."""
    return _ClosedFormHint.apply(s, t, conv.weight, bn.weight, bn.bias, bn)
