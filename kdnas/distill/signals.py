"""Training-free signals: scores of a candidate at initialisation, on one fixed batch of
training images, computed in a second or less, for ranking candidates before (or instead of)
training them. Each is a small function with its formula here; :func:`score_all` computes
every one with its cost in seconds. Whether any ranks like long training is measured by
docs/evidence/rank_fresh.md, not assumed: published results rank well inside one space and
poorly across architectures.

- ``naswot`` (Mellor et al. 2021, "Neural Architecture Search without Training"): the
  binary codes c_i of which ReLU units each image switches on; K_ij = c_i.c_j + (1-c_i).(1-c_j)
  counts the units on which images i and j agree; score = log |det K|. Networks that tell
  the images of a batch apart at initialisation score higher.
- ``synflow`` (Tanaka et al. 2020): with every weight replaced by its absolute value and an
  all-ones input, R = sum of the outputs; score = log sum |theta * dR/dtheta|, in float64
  (batch norm in eval mode: the identity at initialisation).
- ``grad_norm`` (Abdelfattah et al. 2021): log of the L2 norm of the cross-entropy gradient
  over every weight, on the batch with its labels.
- ``teacher_similarity`` (after DisWOT, Dong et al. 2023): the student's and the teacher's
  sample-to-sample similarity on the batch (each image's last-stage features, pooled,
  L2-normalised; G = F F^T), score = -mean (G_s - G_t)^2: a student whose features already
  relate the images as the teacher's do scores higher. Needs a teacher with taps.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from kdnas.distill.hooks import FeatureTaps

SIGNAL_BATCH = 128
SIGNAL_SEED = 0  # which training images make the batch: the same for every candidate
RELUS = (nn.ReLU, nn.ReLU6)


def signal_batch(data, size: int = SIGNAL_BATCH, seed: int = SIGNAL_SEED
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed batch of normalised training images (no augmentation) and their labels."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.train_y), generator=g)[:size]
    x, y, _ = next(data.batches("train", size, indices=idx))
    return x, y


def naswot(model: nn.Module, x: torch.Tensor) -> float:
    """log |det K|, K_ij = number of ReLU units on which images i and j agree (module text)."""
    codes: list[torch.Tensor] = []

    def hook(_m, _inp, out):
        codes.append((out.detach() > 0).flatten(1).double())
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, RELUS)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    if not codes:
        return float("nan")
    c = torch.cat(codes, 1)
    k = c @ c.T + (1 - c) @ (1 - c).T
    sign, logdet = torch.linalg.slogdet(k)
    return float(logdet) if sign > 0 else float("-inf")


def synflow(model: nn.Module, input_shape: tuple[int, ...]) -> float:
    """log sum |theta * dR/dtheta| with |theta| weights and an all-ones input (module text)."""
    model = model.double().eval()
    with torch.no_grad():
        signs = {n: p.sign() for n, p in model.state_dict().items() if p.is_floating_point()}
        for p in model.parameters():
            p.abs_()
    model.zero_grad()
    model(torch.ones(1, *input_shape, dtype=torch.float64)).sum().backward()
    total = sum(float((p.detach() * p.grad).abs().sum()) for p in model.parameters()
                if p.grad is not None)
    with torch.no_grad():  # the candidate as it was
        for n, p in model.named_parameters():
            p.mul_(signs[n])
    model.zero_grad()
    model.float().train()
    return math.log(total) if total > 0 else float("-inf")


def grad_norm(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """log of the cross-entropy gradient's L2 norm over every weight (module text)."""
    model.train()
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    sq = sum(float(p.grad.pow(2).sum()) for p in model.parameters() if p.grad is not None)
    model.zero_grad()
    return 0.5 * math.log(sq) if sq > 0 else float("-inf")


def _relations(feats: torch.Tensor) -> torch.Tensor:
    v = F.normalize(feats.float().mean(dim=(2, 3)) if feats.dim() == 4 else feats.float(), dim=1)
    return v @ v.T


def teacher_similarity(model: nn.Module, tap: str, teacher, x: torch.Tensor) -> float:
    """-mean (G_s - G_t)^2 of the last stages' sample similarities (module text)."""
    with torch.no_grad():
        with_taps = FeatureTaps(teacher.module, [teacher.taps[-1].module])
        try:
            teacher(x)
            g_t = _relations(with_taps.features()[0])
        finally:
            with_taps.close()
        mine = FeatureTaps(model, [tap])
        try:
            model.eval()
            model(x)
            g_s = _relations(mine.features()[0])
        finally:
            mine.close()
            model.train()
    return -float((g_s - g_t).pow(2).mean())


def score_all(model: nn.Module, data, *, teacher=None, taps=None) -> dict[str, dict]:
    """Every training-free signal of ``model`` (a candidate at its initialisation; left as
    it was), each ``{"value": ..., "seconds": ...}``; ``teacher_similarity`` only with a
    teacher and the student's taps."""
    x, y = signal_batch(data)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    out: dict[str, dict] = {}

    def timed(name, fn):
        t0 = time.perf_counter()
        value = fn()
        out[name] = {"value": value, "seconds": round(time.perf_counter() - t0, 4)}

    timed("naswot", lambda: naswot(model, x))
    timed("grad_norm", lambda: grad_norm(model, x, y))
    timed("synflow", lambda: synflow(model, tuple(x.shape[1:])))
    if teacher is not None and teacher.taps and taps:
        timed("teacher_similarity", lambda: teacher_similarity(model, taps[-1].module, teacher, x))
    model.load_state_dict(state)  # batch norm's statistics too
    return out
