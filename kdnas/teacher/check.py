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


def _forward(teacher: Teacher, x: torch.Tensor, fmt: torch.memory_format) -> torch.Tensor:
    """The module's output, module and input in ``fmt`` (``x`` itself is fed: in-place
    changes show on it)."""
    with torch.no_grad():
        return teacher.module.to(memory_format=fmt)(x)


def _probe_inputs(teacher: Teacher, data) -> tuple[torch.Tensor, str | None]:
    """Feed the teacher real images contiguous and in channels_last (kdnas' layout); keep
    channels_last only where it runs and gives the same logits. Also find out whether its
    forward changes its input in place. Returns the logits and a notice, if any."""
    x = next(data.batches("val", 8))[0]
    name = type(teacher.module).__name__
    try:
        probe = x.clone(memory_format=torch.contiguous_format)
        ref = _forward(teacher, probe, torch.contiguous_format)
    except Exception as e:  # noqa: BLE001 - the message names both sides
        raise KdnasError(f"the teacher ({name}) cannot take the data's images of shape "
                         f"{tuple(data.input_shape)} (C, H, W): {type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200]}") from None
    teacher.copy_input = not torch.equal(probe, x)
    if teacher.meta.get("graph") or not isinstance(ref, torch.Tensor):
        teacher.channels_last = False
        return ref, None
    why = None
    try:
        out = _forward(teacher, x.clone(memory_format=torch.channels_last),
                       torch.channels_last)
        scale = max(1.0, float(ref.abs().max()))
        if out.shape != ref.shape or not torch.allclose(out, ref, rtol=1e-3, atol=1e-4 * scale):
            why = "gives other logits for channels_last inputs"
    except Exception as e:  # noqa: BLE001 - any failure means: feed it contiguous inputs
        why = f"fails on channels_last inputs ({type(e).__name__})"
    teacher.channels_last = why is None
    teacher.module.to(memory_format=teacher.memory_format)
    if why:
        return ref, (f"the teacher ({name}) {why}: feeding it contiguous inputs (students stay "
                     "channels_last)")
    return ref, None


def _stage_taps(teacher: Teacher) -> tuple[list[TapInfo], str | None]:
    """The teacher's stage taps, checked by a hooked forward pass in the layout it is fed;
    on any failure no taps (logit KD) and a notice saying why."""
    name = type(teacher.module).__name__
    try:
        taps = find_stage_taps(teacher.module, teacher.input_shape)
        _check_taps(teacher, taps)
    except Exception as e:  # noqa: BLE001 - distillation goes on from the logits
        return [], (f"cannot tap the stages of the teacher ({name}): {type(e).__name__}: "
                    f"{str(e).splitlines()[0][:160]}; distilling from its logits only")
    if not taps:
        return [], (f"found no stages in the teacher ({name}) to tap; distilling from its "
                    "logits only")
    return taps, None


def _check_taps(teacher: Teacher, taps: list[TapInfo]) -> None:
    """Raise unless hooks on the taps see 4-d maps of the stated channels, shallow first."""
    modules = dict(teacher.module.named_modules())
    seen: dict[str, tuple[int, ...]] = {}
    handles = [modules[t.module].register_forward_hook(
        lambda _m, _i, out, n=t.module: seen.__setitem__(n, tuple(getattr(out, "shape", ()))))
        for t in taps]
    try:
        x = torch.zeros(2, *teacher.input_shape)
        with torch.no_grad():
            teacher(x)
    finally:
        for h in handles:
            h.remove()
    strides = [t.stride for t in taps]
    for t in taps:
        shape = seen.get(t.module)
        if shape is None or len(shape) != 4 or shape[1] != t.channels:
            raise ValueError(f"tap {t.module!r} gave {shape}, not a map of {t.channels} "
                             "channels")
    if strides != sorted(set(strides)):
        raise ValueError(f"tap strides {strides} do not grow stage by stage")


def attach_to_data(teacher: Teacher, data) -> list[str]:
    """Check the teacher against the data, fill in what the file did not say, find its stage
    taps. Refuses a mismatch before any training, naming both sides. Returns notices."""
    notes = []
    if teacher.input_shape is not None and tuple(teacher.input_shape) != tuple(data.input_shape):
        raise KdnasError(
            f"teacher expects inputs of shape {tuple(teacher.input_shape)} (C, H, W) but data "
            f"{data.spec!r} has {tuple(data.input_shape)}: use the data the teacher was trained "
            "on, or a teacher trained for these images")
    out, layout_note = _probe_inputs(teacher, data)
    if layout_note:
        notes.append(layout_note)
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
        if teacher.meta.get("layers"):  # named by the user: a mistake there is an error
            teacher.taps = select_taps(teacher.module, _stage_taps(teacher)[0],
                                       teacher.meta["layers"], teacher.input_shape)
        else:
            teacher.taps, tap_note = _stage_taps(teacher)
            if tap_note:
                notes.append(tap_note)
    if "macs" not in teacher.meta:
        try:
            teacher.meta["macs"] = count_macs(teacher.module, teacher.input_shape)
        except Exception:  # noqa: BLE001 - not every format can be counted
            teacher.meta["macs"] = None
    return notes

