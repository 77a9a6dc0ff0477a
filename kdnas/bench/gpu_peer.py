"""The GPU benchmark's peer: the loop a practitioner who knows GPUs writes, training a list of
students one after another in one process. The whole training split resident on the device
as uint8, random crop (4-pixel zero padding) and horizontal flip as batched device ops,
float32, channels_last, ``cudnn.benchmark``, the teacher run at every step, SGD with
Nesterov momentum on a warmup + cosine schedule, validated once at the end.

Like for like with kdnas (:mod:`kdnas.bench.gpu`): the same students, the same training and
validation images, the same steps of the same batch, the same teacher and the same loss (the
study's recipe: its method's logit loss from :mod:`kdnas.distill.logit_losses`, mixed with
cross-entropy as kdnas mixes them). What kdnas does and this loop does not: the learning
curve's validation points, the budget gate, latency and the training-free signals, the
study's bookkeeping; they count against kdnas.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from kdnas.core.settings import TrainConfig
from kdnas.distill.layout import PinnedConvs
from kdnas.distill.logit_losses import logit_loss
from search_spaces import get_space


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _crop_flip(x: torch.Tensor, pad: int, g: torch.Generator) -> torch.Tensor:
    """Random ``pad``-pixel crop of the zero-padded images and a random horizontal flip, drawn
    on the device (``g`` is a generator there)."""
    n, c, h, w = x.shape
    dev = x.device
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n, 1), generator=g, device=dev)
    dx = torch.randint(0, 2 * pad + 1, (n, 1), generator=g, device=dev)
    rows = (dy + torch.arange(h, device=dev)).view(n, 1, h, 1).expand(n, c, h, w + 2 * pad)
    cols = (dx + torch.arange(w, device=dev)).view(n, 1, 1, w).expand(n, c, h, w)
    out = padded.gather(2, rows).gather(3, cols)
    flip = torch.rand(n, generator=g, device=dev) < 0.5
    return torch.where(flip.view(n, 1, 1, 1), out.flip(3), out)


def _resident(data, dev: torch.device):
    """The training images (uint8) and labels on ``dev``, and the function that scales a
    batch of them by the data's mean and std into channels_last floats."""
    mean = torch.tensor(data.mean, device=dev).view(1, -1, 1, 1)
    std = torch.tensor(data.std, device=dev).view(1, -1, 1, 1)

    def norm(x: torch.Tensor) -> torch.Tensor:
        return ((x.float() / 255 - mean) / std).contiguous(memory_format=torch.channels_last)

    return data.train_x.to(dev), data.train_y.to(dev), norm


def _lr(step: int, total: int, recipe: TrainConfig) -> float:
    warm = max(1, int(recipe.warmup * total))
    if step < warm:
        return recipe.lr * (step + 1) / warm
    return recipe.lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def run_peer(specs: list[dict], data, teacher: torch.nn.Module, recipe: TrainConfig,
             dev: torch.device, *, pad: int = 4, seed: int = 0) -> dict:
    """Train each spec for ``recipe.steps`` steps of ``recipe.batch_size`` on ``dev``; the
    wall seconds (the data's move to the device included), images trained and, per student,
    its seconds and validation accuracy."""
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    t0 = time.perf_counter()
    fmt = torch.channels_last
    train_x, train_y, norm = _resident(data, dev)
    val_x, val_y = data.val_x.to(dev), data.val_y.to(dev)
    teacher = teacher.to(device=dev, memory_format=fmt).eval()
    kd = logit_loss(recipe.entry, recipe.temperature)
    a, steps, batch = recipe.kd_alpha, recipe.steps, recipe.batch_size
    g = torch.Generator(device=dev).manual_seed(seed)
    out = []
    for spec in specs:
        _sync(dev)
        t1 = time.perf_counter()
        torch.manual_seed(seed)
        model = get_space(spec["space"]).build(spec).to(device=dev, memory_format=fmt).train()
        with PinnedConvs(model):  # as kdnas trains: a CPU kernel's bug (distill/layout)
            opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                  nesterov=True, weight_decay=recipe.weight_decay)
            step, images = 0, 0
            while step < steps:  # epochs of whole batches and a short last one, as kdnas trains
                order = torch.randperm(len(train_y), generator=g, device=dev)
                for idx in order.split(batch):
                    if step == steps:
                        break
                    x, y = norm(_crop_flip(train_x[idx], pad, g)), train_y[idx]
                    logits = model(x)
                    with torch.no_grad():
                        t_logits = teacher(x)
                    loss = (1 - a) * F.cross_entropy(logits, y) + a * kd(logits, t_logits, y,
                                                                          step, steps)
                    for group in opt.param_groups:
                        group["lr"] = _lr(step, steps, recipe)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    step, images = step + 1, images + len(idx)
        model.eval()
        with torch.no_grad():
            right = sum(int((model(norm(val_x[i:i + 500])).argmax(1) == val_y[i:i + 500])
                            .sum()) for i in range(0, len(val_y), 500))
        _sync(dev)
        out.append({"seconds": time.perf_counter() - t1, "images": images,
                    "val_accuracy": right / max(1, len(val_y))})
    teacher.to("cpu")
    return {"wall_seconds": time.perf_counter() - t0, "trials": out,
            "images": sum(t["images"] for t in out)}


def train_steps(model: torch.nn.Module, data, dev: torch.device, *, steps: int,
                batch: int = 128, lr: float = 0.1, pad: int = 4,
                precision: str = "fp32", channels_last: bool = True) -> float:
    """Seconds a training step of ``model`` takes in the same loop with no teacher (what
    ``kdnas teacher train`` does), after 5 steps of warmup; ``precision`` ``bf16``: the
    forward pass under bf16 autocast (batch norm and the loss in float32);
    ``channels_last`` False: the model and the batches in the contiguous (NCHW) layout."""
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    x_all, y_all, norm = _resident(data, dev)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device=dev, memory_format=fmt).train()
    with PinnedConvs(model, on=channels_last):  # a CPU kernel's bug (distill/layout)
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True,
                              weight_decay=5e-4)
        g = torch.Generator(device=dev).manual_seed(0)
        half = precision == "bf16"
        for step in range(steps + 5):
            if step == 5:
                _sync(dev)
                t0 = time.perf_counter()
            idx = torch.randint(0, len(y_all), (batch,), generator=g, device=dev)
            x = norm(_crop_flip(x_all[idx], pad, g)).contiguous(memory_format=fmt)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=half):
                out = model(x)
            loss = F.cross_entropy(out.float(), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        _sync(dev)
    model.to("cpu")
    return (time.perf_counter() - t0) / steps
