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
  sample-to-sample similarity on the batch, score = -mean (G_s - G_t)^2 with G = F F^T, F each
  image's whole map at the output of the last ReLU the forward pass runs, centred over the
  batch and L2-normalised: a student whose features already relate the images as the
  teacher's do scores higher. Not the last stage's output (zero at initialisation where blocks
  end in a zero-initialised batch norm, MobileNetV2 and ShuffleNetV2 here), nor pooled
  uncentred features (all alike after a ReLU): either made such students score the same.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn

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
    """Cosine similarities of the images' whole feature maps, centred over the batch (after
    a ReLU every map is positive, so uncentred they are all alike at initialisation)."""
    v = feats.float().flatten(1)
    v = F.normalize(v - v.mean(0, keepdim=True), dim=1)
    return v @ v.T


def last_activation(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The output of the last ReLU (or ReLU6) call of ``model``'s forward pass on ``x``."""
    seen: list[torch.Tensor] = []

    def hook(_m, _inp, out):
        seen[:] = [out.detach()]
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, RELUS)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    if not seen:
        raise ValueError(f"{type(model).__name__} runs no ReLU: no features to compare")
    return seen[0]


def teacher_relations(teacher: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """G_t: the teacher's sample similarities on ``x`` (in eval mode, on the CPU)."""
    was = teacher.training
    teacher.eval()
    try:
        on = next(iter(teacher.parameters()), torch.empty(0)).device  # where it runs
        # a copy of the batch: the teacher may write to its input
        return _relations(last_activation(teacher, x.to(on, copy=True)).cpu())
    finally:
        teacher.train(was)


def teacher_similarity(model: nn.Module, teacher: nn.Module | None, x: torch.Tensor,
                       g_t: torch.Tensor | None = None) -> float:
    """-mean (G_s - G_t)^2 of the last activations' sample similarities (module text);
    ``g_t``: the teacher's, when already computed (:func:`teacher_relations`)."""
    if g_t is None:
        g_t = teacher_relations(teacher, x)
    model.eval()
    try:
        g_s = _relations(last_activation(model, x))
    finally:
        model.train()
    return -float((g_s - g_t).pow(2).mean())


# the teacher's G_t on the signal batch, kept per (teacher, data): the same for every candidate
# of a study, and the teacher's forward pass over the batch is most of the signals' cost
_RELATIONS: dict[tuple, torch.Tensor] = {}


def _cached_relations(teacher, data, x: torch.Tensor) -> torch.Tensor | None:
    digest, data_digest = getattr(teacher, "digest", None), getattr(data, "digest", None)
    if digest is None or data_digest is None:
        return None  # a bare module: nothing names it, so nothing is kept
    key = (digest, data_digest(), repr(getattr(data, "mean", None)),
           repr(getattr(data, "std", None)), tuple(x.shape), SIGNAL_SEED)
    if key not in _RELATIONS:
        if len(_RELATIONS) >= 4:
            _RELATIONS.pop(next(iter(_RELATIONS)))
        _RELATIONS[key] = teacher_relations(teacher.module, x)
    return _RELATIONS[key]


def score_all(model: nn.Module, data, *, teacher=None) -> dict[str, dict]:
    """Every training-free signal of ``model`` (a candidate at its initialisation; left as
    it was, and torch's random state too), each ``{"value": ..., "seconds": ...}``;
    ``teacher_similarity`` only with a teacher (a module, or kdnas' teacher: its ``module``)."""
    rng = torch.get_rng_state()
    x, y = signal_batch(data)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    out: dict[str, dict] = {}

    def timed(name, fn):
        model.load_state_dict(state)  # each at the initialisation: a forward pass in train
        # mode moves batch norm's running statistics, which eval-mode signals read
        t0 = time.perf_counter()
        value = fn()
        out[name] = {"value": value, "seconds": round(time.perf_counter() - t0, 4)}

    timed("naswot", lambda: naswot(model, x))
    timed("grad_norm", lambda: grad_norm(model, x, y))
    timed("synflow", lambda: synflow(model, tuple(x.shape[1:])))
    if teacher is not None:
        module = getattr(teacher, "module", teacher)
        timed("teacher_similarity", lambda: teacher_similarity(
            model, module, x, _cached_relations(teacher, data, x)))
    model.load_state_dict(state)  # batch norm's statistics too
    torch.set_rng_state(rng)
    return out


# ---- from the learning curve -----------------------------------------------------------------

CURVE_HORIZON = 8  # extrapolate to this many times the curve's last step (the truth's 8x)
POW_EXPONENTS = tuple(0.05 * k for k in range(1, 61))  # 0.05 .. 3.0


def _accuracy(point: dict) -> float | None:
    v = point.get("val_subset_accuracy", point.get("val_accuracy"))
    return None if v is None else float(v)


def curve_signals(points, horizon: int = CURVE_HORIZON) -> dict[str, dict]:
    """Signals of a trial's learning curve (``points``: dicts with ``step`` and the accuracy
    on the curve's sample of validation images), each ``{"value": ..., "seconds": ...}``:

    - ``curve_extrapolated``: the power law a - b t^-c (pow3, after Domhan et al. 2015),
      fitted by least squares (c on a grid of 0.05-3, a and b exactly for each c), at
      ``horizon`` times the last step; clipped to [0, 1].
    - ``curve_slope``: accuracy gained per doubling of the steps over the curve's second half
      (a least-squares line against log2 steps).

    Empty with fewer than 4 points (nothing to fit)."""
    t0 = time.perf_counter()
    pts = [(float(p["step"]), _accuracy(p)) for p in points if _accuracy(p) is not None]
    if len(pts) < 4:
        return {}
    steps = torch.tensor([s for s, _ in pts], dtype=torch.float64)
    acc = torch.tensor([a for _, a in pts], dtype=torch.float64)
    best = None
    for c in POW_EXPONENTS:
        x = torch.stack([torch.ones_like(steps), -steps.pow(-c)], 1)
        coef = torch.linalg.lstsq(x, acc.unsqueeze(1)).solution.squeeze(1)
        err = float((x @ coef - acc).pow(2).sum())
        if best is None or err < best[0]:
            best = (err, c, coef)
    _, c, (a, b) = best
    at = float(steps[-1]) * horizon
    extrapolated = min(1.0, max(0.0, float(a - b * at ** -c)))
    half = len(pts) // 2
    xs, ys = torch.log2(steps[half:]), acc[half:]
    slope = float(((xs - xs.mean()) * (ys - ys.mean())).sum() / (xs - xs.mean()).pow(2).sum())
    seconds = round(time.perf_counter() - t0, 4)
    return {"curve_extrapolated": {"value": extrapolated, "seconds": seconds},
            "curve_slope": {"value": slope, "seconds": 0.0}}
