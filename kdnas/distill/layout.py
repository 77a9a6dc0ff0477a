"""The training memory layout: channels_last (about 2.4x faster for small CNNs on a CPU),
except where a CPU kernel gets it wrong.

With the oneDNN kernels in torch 2.14 on an AVX2 CPU, the weight gradient of a 1x1
convolution with a stride above 1 and fewer than 8 input channels, in channels_last, is
wrong (relative error 0.7-1.6 against float64) or crashes the process (heap corruption or a
hang), depending on the channel count and the batch; forward and input gradient are right.
ResNet downsampling shortcuts from a narrow stage are such convolutions. Those modules are
fed contiguous inputs with a contiguous weight during training (they are small: the cost is
nil), the rest of the network stays channels_last. The rule is wider than the failures seen
(any count of input channels that is not a multiple of 8) to be safe.
"""

from __future__ import annotations

import torch
from torch import nn


def unsafe_in_channels_last(m: nn.Module) -> bool:
    """A convolution whose channels_last weight gradient the CPU kernels get wrong."""
    return (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1)
            and m.groups == 1 and m.in_channels % 8 != 0)


def _contiguous(module: nn.Module, args: tuple) -> tuple | None:
    x = args[0]
    if not isinstance(x, torch.Tensor) or x.device.type != "cpu":
        return None
    w = module.weight
    if w.stride() != _plain_strides(w.shape):  # a 1x1 weight counts as contiguous in either
        module.weight.data = w.data.clone(memory_format=torch.contiguous_format)
    return (x.contiguous(), *args[1:])


def _plain_strides(shape: torch.Size) -> tuple[int, ...]:
    out, step = [], 1
    for size in reversed(shape):
        out.append(step)
        step *= size
    return tuple(reversed(out))


class PinnedConvs:
    """While open, the unsafe convolutions of ``model`` compute in the contiguous layout on a
    CPU. ``names`` lists them; ``close()`` removes the hooks (export sees the plain model).
    ``on`` False: nothing pinned (a model trained in the contiguous layout). Every training
    loop kdnas owns opens one, as a context (``with PinnedConvs(model):``) where it can: the
    hooks then go on any exit, an exception's too."""

    def __init__(self, model: nn.Module, on: bool = True) -> None:
        self.names: list[str] = []
        self._hooks = []
        for name, m in model.named_modules() if on else ():
            if unsafe_in_channels_last(m):
                self.names.append(name)
                self._hooks.append(m.register_forward_pre_hook(_contiguous))

    def __enter__(self) -> PinnedConvs:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
