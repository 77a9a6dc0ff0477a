"""A candidate's training step, timed before it trains: the student's share of a trial's time
per step, which MACs do not predict."""

from __future__ import annotations

import contextlib
import copy
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from kdnas.core.settings import TrainConfig
from kdnas.device import autocast, resolve
from kdnas.distill.layout import PinnedConvs


def time_step(model: nn.Module, input_shape: tuple[int, ...], cfg: TrainConfig,
              steps: int = 3) -> float:
    """Median wall time (ms) of one training step of ``cfg``'s recipe (forward under its
    autocast, cross-entropy, backward, SGD update) on a copy of ``model`` at ``cfg``'s batch
    of random images, on its device and in its memory layout, after one warm-up step: the
    student's share of a trial's time per step, known before training. MACs do not predict
    it (a bottleneck block trains at about a third of a basic block's speed per MAC on a
    CPU). ``model``, its weights and torch's random state are left as they were."""
    dev = resolve(cfg.device)
    fmt = torch.channels_last if cfg.channels_last and len(input_shape) == 3 else \
        torch.contiguous_format
    m = copy.deepcopy(model).train().to(device=dev, memory_format=fmt)
    x = torch.randn((cfg.batch_size, *input_shape), generator=torch.Generator().manual_seed(0))
    x = x.to(dev).contiguous(memory_format=fmt)
    opt = torch.optim.SGD(m.parameters(), lr=1e-3, momentum=cfg.momentum)
    times: list[float] = []
    pinned = PinnedConvs(m) if cfg.channels_last else contextlib.nullcontext()
    with pinned:  # CPU kernels' bug: see layout
        for i in range(steps + 1):
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            with autocast(dev, cfg.precision):
                out = m(x)
            loss = F.cross_entropy(out.float(), torch.zeros(len(out), dtype=torch.long,
                                                            device=dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            if i:  # the first step warms up (allocations, kernel choice)
                times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)
