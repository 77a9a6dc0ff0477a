"""Teachers: loading supported formats, finding stage taps, checking against the data.

Nothing here trains: ``kdnas teacher train`` trains with :func:`kdnas.distill.fit` and saves
with :func:`save_checkpoint`.

A *kdnas teacher checkpoint* is a weights-only ``torch.save`` of a dict::

    {"format": "kdnas-teacher", "version": 1, "spec": <student-space spec>,
     "state_dict": ..., "classes": [...], "input_shape": [C, H, W],
     "mean": [...], "std": [...], "data": "cifar10:/data/cifar10", "val_accuracy": 0.93}
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from kdnas.cost import count_macs
from kdnas.errors import KdnasError
from search_spaces import TapInfo
from search_spaces import build as build_spec

log = logging.getLogger(__name__)

FORMAT = "kdnas-teacher"


@dataclass
class Teacher:
    """A loaded teacher: its module (eval mode), stage taps and what it was trained on."""

    module: nn.Module
    taps: list[TapInfo]
    input_shape: tuple[int, int, int]
    num_classes: int
    source: str
    digest: str
    classes: list[str] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    data: str | None = None
    meta: dict = field(default_factory=dict)


def find_stage_taps(model: nn.Module, input_shape: tuple[int, ...]) -> list[TapInfo]:
    """The output of each stage: one tap per spatial resolution, found by one forward pass.

    A stage ends where the network next halves the resolution. The outermost module that
    makes exactly one such step (a ResNet stage, a max pool, a MobileNet stage) marks the end:
    its *input* is the stage output, tapped at the module that produced it (a stage rather than
    the expansion conv inside the next block). Where no module marks it (downsampling in
    functional code), and for the last resolution, the last module to finish at that
    resolution is tapped. Outputs of 1x1 spatial size (global pooling) are not stages.
    """
    named = [(n, m) for n, m in model.named_modules() if n]
    outputs: list[tuple[str, torch.Tensor]] = []  # in the order modules finish
    inputs: dict[str, torch.Tensor] = {}
    keep: list[torch.Tensor] = []  # hold every tensor so that no address is reused

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

    size = input_shape[-1]

    def stride_of(t: torch.Tensor) -> int:
        return max(1, round(size / t.shape[-1]))

    def producer(t: torch.Tensor, avoid: list[str] = ()) -> str | None:
        """The outermost module that output this very tensor (ties: the later one), but not
        an ancestor of a module in ``avoid`` (not the whole trunk for its last stage)."""
        names = [n for n, o in outputs if o.data_ptr() == t.data_ptr() and o.shape == t.shape]
        fitting = [n for n in names if not any(a.startswith(n + ".") for a in avoid)]
        names = fitting or names
        return min(reversed(names), key=lambda n: n.count(".")) if names else None

    # fallback: the last module to finish at each resolution (never going back up)
    by_stride: dict[int, TapInfo] = {}
    for i, (name, out) in enumerate(outputs):
        if out.shape[-1] <= 1:
            continue
        nxt = next((o for _, o in outputs[i + 1:] if o.shape[-1] > 1), None)
        if nxt is None or nxt.shape[-2:] != out.shape[-2:]:
            s = stride_of(out)
            if not by_stride or s >= max(by_stride):
                earlier = [t.module for k, t in by_stride.items() if k < s]
                by_stride[s] = TapInfo(producer(out, earlier) or name, out.shape[1], s)

    # stage ends marked by the outermost modules that downsample exactly once
    res_of = {n: {o.shape[-1] for m, o in outputs
                  if (m == n or m.startswith(n + ".")) and o.shape[-1] > 1}  # not SE pools
              for n, _ in named}
    single = {}
    for n, _ in named:
        t_in = inputs.get(n)
        outs = [o for m, o in outputs if m == n]
        if t_in is None or t_in.dim() != 4 or not outs:
            continue
        r_in, r_out = t_in.shape[-1], outs[-1].shape[-1]
        single[n] = r_out < r_in and r_out > 1 and res_of[n] <= {r_in, r_out}
    for n, is_single in single.items():
        parent = n.rpartition(".")[0]
        if not is_single or single.get(parent, False):
            continue
        t_in = inputs[n]
        if t_in.data_ptr() == x.data_ptr():
            continue  # the model's input is no stage
        s = stride_of(t_in)
        tap = producer(t_in, [t.module for k, t in by_stride.items() if k < s])
        if tap is not None and s in by_stride:
            by_stride[s] = TapInfo(tap, t_in.shape[1], s)
    return [by_stride[s] for s in sorted(by_stride)]


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


def file_digest(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def save_checkpoint(path: Path, module: nn.Module, *, spec: dict, classes: list[str],
                    input_shape: tuple[int, ...], mean, std, data: str,
                    val_accuracy: float | None = None, extra: dict | None = None) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in module.state_dict().items()}
    ckpt = {"format": FORMAT, "version": 1, "spec": spec, "state_dict": state,
            "classes": list(classes), "input_shape": list(input_shape), "mean": list(mean),
            "std": list(std), "data": data, "val_accuracy": val_accuracy, **(extra or {})}
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(ckpt, tmp)
    tmp.replace(path)


def load_teacher(path: str | Path, *, layers: list[str] | None = None) -> Teacher:
    """Load a teacher file. Only kdnas teacher checkpoints are supported for now."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise KdnasError(f"teacher file {str(p)!r} does not exist: pass the path of a teacher "
                         "checkpoint, or make one with `kdnas teacher train`")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure means "not a weights-only checkpoint"
        raise KdnasError(
            f"cannot read {p} as a kdnas teacher checkpoint ({type(e).__name__}). Supported: "
            "checkpoints written by `kdnas teacher train`. A pickled whole module is not "
            "loaded, because unpickling runs code from the file") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise KdnasError(f"{p} is a torch file but not a kdnas teacher checkpoint (no "
                         f"'format': '{FORMAT}' entry). Make one with `kdnas teacher train`")
    module = build_spec(ckpt["spec"])
    module.load_state_dict(ckpt["state_dict"])
    module.eval()
    input_shape = tuple(int(v) for v in ckpt["input_shape"])
    taps = find_stage_taps(module, input_shape)
    if layers:
        taps = select_taps(module, taps, layers, input_shape)
    return Teacher(module=module, taps=taps, input_shape=input_shape,
                   num_classes=len(ckpt["classes"]), source=str(p), digest=file_digest(p),
                   classes=list(ckpt["classes"]), mean=tuple(ckpt["mean"]),
                   std=tuple(ckpt["std"]), data=ckpt.get("data"),
                   meta={"spec": ckpt["spec"], "val_accuracy": ckpt.get("val_accuracy"),
                         "split": ckpt.get("split"), "macs": count_macs(module, input_shape)})


def check_against_data(teacher: Teacher, data) -> None:
    """Refuse a teacher whose input or classes do not match the data, naming both sides."""
    if tuple(teacher.input_shape) != tuple(data.input_shape):
        raise KdnasError(
            f"teacher expects inputs of shape {tuple(teacher.input_shape)} (C, H, W) but data "
            f"{data.spec!r} has {tuple(data.input_shape)}: use the data the teacher was trained "
            "on, or a teacher trained for these images")
    if teacher.num_classes != data.num_classes:
        raise KdnasError(f"teacher predicts {teacher.num_classes} classes but data "
                         f"{data.spec!r} has {data.num_classes}: use matching teacher and data")
    if teacher.classes and teacher.classes != data.classes:
        log.warning("teacher class names %s differ from the data's %s; assuming the same "
                    "order", teacher.classes[:5], data.classes[:5])
