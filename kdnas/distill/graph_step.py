"""A training step that a GPU replays as one CUDA graph.

Students of a few million MACs are bound by kernel launches on a GPU, not by arithmetic: a
step is hundreds of small kernels, each launched from Python. Captured once as a CUDA graph
(forward, losses, backward and the optimizer's update) and replayed, the whole step is one
launch. A graph replays fixed memory with fixed shapes, so everything that changes from one
step to the next enters through tensors on the device that the step reads:

* the batch, and the teacher's logits, copied into the graph's input buffers;
* the learning rate and the logit loss's ramp, filled into 0-dim tensors
  (:class:`TensorSGD` is ``torch.optim.SGD``'s update reading its learning rate from one:
  torch's own reads a tensor learning rate back to the host);
* the loss, read back by the trainer in blocks, as before.

The first full batches train eagerly (on a side stream, so that cuDNN picks its kernels before
capture); a short last batch (a different shape) trains eagerly with the same tensors and
update. On a CPU, and on a GPU unless ``KDNAS_CUDA_GRAPHS=1``, nothing is captured and the step
is torch's SGD as it always was; the tests run the tensor step on a CPU against it. Opt-in
until the GPU check (tools/gpu_check.sh) has measured graphs equal to the eager step and
faster on a GPU: no GPU figure of it exists yet.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

log = logging.getLogger(__name__)

WARMUP = 3  # eager full-batch steps before the capture (cuDNN's kernel choice, lazy state)


class TensorSGD:
    """``torch.optim.SGD``'s update (momentum, Nesterov, weight decay, no dampening) for the
    parameters of ``opt``, with the learning rate read from the 0-dim device tensor ``lr``:
    no value comes back to the host, so the update can be captured. The momentum buffers are
    ``opt``'s own (``opt.state[p]["momentum_buffer"]``), so checkpoints and resuming are
    unchanged; a missing buffer starts at zero, which gives torch's first step exactly."""

    def __init__(self, opt: torch.optim.SGD, device: torch.device) -> None:
        groups = opt.param_groups
        if len(groups) != 1 or not groups[0]["nesterov"] or groups[0]["dampening"]:
            raise ValueError("TensorSGD takes one parameter group, Nesterov, no dampening")
        self.opt, self.params = opt, list(groups[0]["params"])
        self.momentum, self.decay = groups[0]["momentum"], groups[0]["weight_decay"]
        self.lr = torch.zeros((), device=device)

    def step(self) -> None:
        live = [p for p in self.params if p.grad is not None]
        if not live:
            return
        bufs = []
        for p in live:
            state = self.opt.state[p]
            if state.get("momentum_buffer") is None:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            bufs.append(state["momentum_buffer"])
        with torch.no_grad():
            d = torch._foreach_add([p.grad for p in live], live, alpha=self.decay)
            torch._foreach_mul_(bufs, self.momentum)
            torch._foreach_add_(bufs, d)
            torch._foreach_add_(d, bufs, alpha=self.momentum)  # Nesterov
            torch._foreach_mul_(d, self.lr)
            torch._foreach_sub_(live, d)


def graphs_wanted(dev: torch.device) -> bool:
    """CUDA graphs on a GPU only with ``KDNAS_CUDA_GRAPHS=1`` (opt-in until the GPU check has
    measured them equal to eager and faster); never on a CPU."""
    import os

    return dev.type == "cuda" and os.environ.get("KDNAS_CUDA_GRAPHS", "0") == "1"


class Stepper:
    """One training step: ``step(x, y, t_logits, lr, scale) -> loss``.

    ``loss_fn(x, y, t_logits, scale)`` is the forward pass and the losses (``scale``: the
    logit loss's weight at this step, a float or a 0-dim tensor). Without ``graphs`` the
    update is ``opt``'s own step at ``lr``. With them, the update is :class:`TensorSGD`, and
    full batches of the first shape seen are replayed from a CUDA graph after
    :data:`WARMUP` eager steps; ``tensors`` alone (a CPU test) runs that tensor step eagerly,
    never capturing. A capture that fails is logged and the run goes on eagerly."""

    def __init__(self, loss_fn: Callable, opt: torch.optim.SGD, device: torch.device, *,
                 graphs: bool, tensors: bool | None = None) -> None:
        self.loss_fn, self.opt, self.device = loss_fn, opt, device
        self.capture = graphs and device.type == "cuda"
        self.tensors = self.capture if tensors is None else tensors or self.capture
        self.sgd = TensorSGD(opt, device) if self.tensors else None
        self.scale = torch.ones((), device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.shape: tuple | None = None
        self.eager_full = 0
        self.replays = 0

    def __call__(self, x: torch.Tensor, y: torch.Tensor, t_logits: torch.Tensor | None,
                 lr: float, scale: float) -> torch.Tensor:
        if not self.tensors:
            loss = self.loss_fn(x, y, t_logits, scale)
            for group in self.opt.param_groups:
                group["lr"] = lr
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            return loss
        self.sgd.lr.fill_(lr)
        self.scale.fill_(scale)
        if self.shape is None:
            self.shape = tuple(x.shape)
        if not self.capture or tuple(x.shape) != self.shape:
            return self._eager(x, y, t_logits)
        if self.graph is None and self.eager_full < WARMUP:
            self.eager_full += 1
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                loss = self._eager(x, y, t_logits)
            torch.cuda.current_stream(self.device).wait_stream(side)
            return loss
        if self.graph is None and not self._capture(x, y, t_logits):
            return self._eager(x, y, t_logits)
        self.x.copy_(x, non_blocking=True)
        self.y.copy_(y, non_blocking=True)
        if self.t is not None:
            self.t.copy_(t_logits, non_blocking=True)
        self.graph.replay()
        self.replays += 1
        return self.loss.detach().clone()  # the graph writes the same buffer next step

    def _eager(self, x, y, t_logits) -> torch.Tensor:
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss_fn(x, y, t_logits, self.scale)
        loss.backward()
        self.sgd.step()
        return loss

    def _capture(self, x, y, t_logits) -> bool:
        self.x, self.y = x.clone(), y.clone()
        self.t = None if t_logits is None else t_logits.clone()
        self.opt.zero_grad(set_to_none=True)  # the graph's backward makes the gradients
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.loss = self.loss_fn(self.x, self.y, self.t, self.scale)
                self.loss.backward()
                self.sgd.step()
        except Exception as e:  # noqa: BLE001 (any failure: the eager step trains the same)
            log.warning("CUDA graph capture failed (%s: %s); this run trains without one",
                        type(e).__name__, e)
            self.capture = False
            self.opt.zero_grad(set_to_none=True)
            return False
        self.graph = graph
        return True
