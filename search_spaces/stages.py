"""Stage detection for any module: where a network next halves its resolution, the tensor
before it is a stage output. Used for teachers and for students whose space states no taps."""

from __future__ import annotations

import torch
from torch import nn

from search_spaces.base import TapInfo


def _trace(model: nn.Module, input_shape: tuple[int, ...]):
    """One eval forward pass at batch 1 with hooks on every named module. Returns the 4-d
    outputs in the order modules finish, the first input of each module, the model input and
    the tensors held alive (so that no address is reused while they are compared)."""
    named = [(n, m) for n, m in model.named_modules() if n]
    outputs: list[tuple[str, torch.Tensor]] = []
    inputs: dict[str, torch.Tensor] = {}
    keep: list[torch.Tensor] = []

    def pre(name):
        def hook(_m, args):
            if args and isinstance(args[0], torch.Tensor):
                inputs.setdefault(name, args[0])
                keep.append(args[0])
        return hook

    def post(name):
        def hook(_m, _inp, out):
            if isinstance(out, torch.Tensor) and out.dim() == 4:
                outputs.append((name, out))
                keep.append(out)
        return hook

    handles = []
    for name, mod in named:
        handles.append(mod.register_forward_pre_hook(pre(name)))
        handles.append(mod.register_forward_hook(post(name)))
    was_training = model.training
    model.eval()
    x = torch.zeros(1, *input_shape)
    try:
        with torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return [n for n, _ in named], outputs, inputs, x, keep


def _producer(outputs, t: torch.Tensor, avoid: list[str] = ()) -> str | None:
    """The outermost module that output this very tensor (ties: the later one), but not an
    ancestor of a module in ``avoid`` (not the whole trunk for its last stage)."""
    names = [n for n, o in outputs if o.data_ptr() == t.data_ptr() and o.shape == t.shape]
    fitting = [n for n in names if not any(a.startswith(n + ".") for a in avoid)]
    names = fitting or names
    return min(reversed(names), key=lambda n: n.count(".")) if names else None


def _last_per_resolution(outputs, stride_of) -> dict[int, tuple[torch.Tensor, str]]:
    """Fallback: the last module to finish at each resolution (never going back up)."""
    by_stride: dict[int, tuple[torch.Tensor, str]] = {}
    for i, (name, out) in enumerate(outputs):
        if out.shape[-1] <= 1:
            continue
        nxt = next((o for _, o in outputs[i + 1:] if o.shape[-1] > 1), None)
        if nxt is None or nxt.shape[-2:] != out.shape[-2:]:
            s = stride_of(out)
            if not by_stride or s >= max(by_stride):
                by_stride[s] = (out, name)
    return by_stride


def _single_downsamplers(names, outputs, inputs) -> dict[str, bool]:
    """For each module, whether it halves the resolution exactly once (a stage, a pool)."""
    res_of = {n: {o.shape[-1] for m, o in outputs
                  if (m == n or m.startswith(n + ".")) and o.shape[-1] > 1}  # not SE pools
              for n in names}
    single = {}
    for n in names:
        t_in = inputs.get(n)
        outs = [o for m, o in outputs if m == n]
        if t_in is None or t_in.dim() != 4 or not outs:
            continue
        r_in, r_out = t_in.shape[-1], outs[-1].shape[-1]
        single[n] = r_out < r_in and r_out > 1 and res_of[n] <= {r_in, r_out}
    return single


def find_stage_taps(model: nn.Module, input_shape: tuple[int, ...]) -> list[TapInfo]:
    """The output of each stage: one tap per spatial resolution, found by one forward pass.

    A stage ends where the network next halves the resolution. The outermost module that
    makes exactly one such step (a ResNet stage, a max pool, a MobileNet stage) marks the end:
    its *input* is the stage output, tapped at the module that produced it (a stage rather than
    the expansion conv inside the next block). Where no module marks it (downsampling in
    functional code), and for the last resolution, the last module to finish at that
    resolution is tapped. Outputs of 1x1 spatial size (global pooling) are not stages.
    """
    names, outputs, inputs, x, _keep = _trace(model, input_shape)
    size = input_shape[-1]

    def stride_of(t: torch.Tensor) -> int:
        return max(1, round(size / t.shape[-1]))

    by_stride = _last_per_resolution(outputs, stride_of)
    # stage ends marked by the outermost modules that downsample exactly once
    single = _single_downsamplers(names, outputs, inputs)
    for n, is_single in single.items():
        if not is_single or single.get(n.rpartition(".")[0], False):
            continue
        t_in = inputs[n]
        if t_in.data_ptr() == x.data_ptr():
            continue  # the model's input is no stage
        s = stride_of(t_in)
        name = _producer(outputs, t_in) if s in by_stride else None
        if name is not None:
            by_stride[s] = (t_in, name)

    # name each tap, shallow strides first: the outermost module that output that tensor but
    # is no ancestor of an earlier tap
    taps: list[TapInfo] = []
    for s in sorted(by_stride):
        tensor, fallback = by_stride[s]
        name = _producer(outputs, tensor, [t.module for t in taps]) or fallback
        taps.append(TapInfo(name, tensor.shape[1], s))
    return taps
