"""A loaded teacher checked against the data: input shape, class count, a forward pass that
works, and its stage taps (detected, or the layers a user named)."""

from __future__ import annotations

import logging

import torch
from torch import nn

from kdnas.core.errors import KdnasError
from kdnas.cost import count_macs
from kdnas.teacher.load import Teacher
from search_spaces import TapInfo
from search_spaces.stages import find_stage_taps

log = logging.getLogger(__name__)


def select_taps(model: nn.Module, taps: list[TapInfo], names: list[str],
                input_shape: tuple[int, ...]) -> list[TapInfo]:
    """Taps for user-named layers (``--teacher-layers``), with channels and stride measured."""
    modules = dict(model.named_modules())
    unknown = [n for n in names if n not in modules]
    if unknown:
        raise KdnasError(f"teacher has no layer(s) {unknown}; some it has: "
                         f"{[t.module for t in taps]}")
    shapes: dict[str, tuple[int, ...]] = {}
    handles = [modules[n].register_forward_hook(
        lambda _m, _i, out, n=n: shapes.__setitem__(n, tuple(out.shape))) for n in names]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_shape))
    finally:
        for h in handles:
            h.remove()
    out = []
    for n in names:
        s = shapes.get(n)
        if s is None or len(s) != 4:
            raise KdnasError(f"teacher layer {n!r} does not output a 4-d feature map: choose "
                             f"a convolutional layer, e.g. one of {[t.module for t in taps]}")
        out.append(TapInfo(n, s[1], max(1, round(input_shape[-1] / s[-1]))))
    return out


def attach_to_data(teacher: Teacher, data) -> list[str]:
    """Check the teacher against the data, fill in what the file did not say, find its stage
    taps. Refuses a mismatch before any training, naming both sides. Returns notices."""
    notes = []
    if teacher.input_shape is not None and tuple(teacher.input_shape) != tuple(data.input_shape):
        raise KdnasError(
            f"teacher expects inputs of shape {tuple(teacher.input_shape)} (C, H, W) but data "
            f"{data.spec!r} has {tuple(data.input_shape)}: use the data the teacher was trained "
            "on, or a teacher trained for these images")
    x = next(data.batches("val", 2))[0].contiguous()
    try:
        with torch.no_grad():
            out = teacher.module(x)
    except Exception as e:  # noqa: BLE001 - the message names both sides
        raise KdnasError(f"the teacher cannot take the data's images of shape "
                         f"{tuple(data.input_shape)} (C, H, W): {type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200]}") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise KdnasError("the teacher must return logits of shape (batch, classes); it returned "
                         f"{type(out).__name__} {tuple(getattr(out, 'shape', ()))}")
    classes = int(out.shape[1])
    if teacher.num_classes is not None and teacher.num_classes != classes:
        raise KdnasError(f"teacher predicts {classes} classes, not {teacher.num_classes}")
    if classes != data.num_classes:
        raise KdnasError(f"teacher predicts {classes} classes but data {data.spec!r} has "
                         f"{data.num_classes}: use matching teacher and data, or --num-classes "
                         "to size a torchvision head")
    teacher.num_classes = classes
    teacher.input_shape = tuple(data.input_shape)
    if teacher.classes and teacher.classes != data.classes:
        log.warning("teacher class names %s differ from the data's %s; assuming the same "
                    "order", teacher.classes[:5], data.classes[:5])
    if teacher.meta.get("graph"):
        if teacher.meta.get("layers"):
            raise KdnasError(f"--teacher-layers needs module structure; a "
                             f"{teacher.meta['format']} has none")
        notes.append(f"the teacher is a {teacher.meta['format']}: it has no module structure "
                     "to tap, so students learn from its logits only (logit KD)")
        teacher.taps = []
    else:
        teacher.taps = find_stage_taps(teacher.module, teacher.input_shape)
        if teacher.meta.get("layers"):
            teacher.taps = select_taps(teacher.module, teacher.taps, teacher.meta["layers"],
                                       teacher.input_shape)
    if "macs" not in teacher.meta:
        try:
            teacher.meta["macs"] = count_macs(teacher.module, teacher.input_shape)
        except Exception:  # noqa: BLE001 - not every format can be counted
            teacher.meta["macs"] = None
    return notes
