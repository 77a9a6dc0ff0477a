"""Teacher files in every supported format, loaded into a :class:`Teacher`.

This module does not train: ``kdnas teacher train`` (:mod:`kdnas.teacher.train`) trains with
:func:`kdnas.distill.fit` and saves with :func:`save_checkpoint`.

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

from kdnas.core.errors import KdnasError
from kdnas.core.files import atomic_path
from search_spaces import TapInfo
from search_spaces import build as build_spec

log = logging.getLogger(__name__)

FORMAT = "kdnas-teacher"


@dataclass
class Teacher:
    """A loaded teacher: its module (eval mode), stage taps and what it was trained on."""

    module: nn.Module
    taps: list[TapInfo]
    input_shape: tuple[int, int, int] | None
    num_classes: int | None
    source: str
    digest: str
    classes: list[str] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    data: str | None = None
    meta: dict = field(default_factory=dict)
    # how it is fed (found by :func:`kdnas.teacher.check.attach_to_data`): in channels_last
    # like the students, or contiguous when its forward cannot take that; on a copy when its
    # forward changes its input in place
    channels_last: bool = True
    copy_input: bool = False

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's logits for a batch the data yields (channels_last), fed as it can
        take it; the caller's tensor is never changed."""
        if self.copy_input or not self.channels_last:
            # a copy with the strides of the format (a 1-channel batch can look like both)
            x = x.clone(memory_format=self.memory_format)
        return self.module(x)


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
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)


def load_teacher(ref: str | Path, *, arch: str | None = None, num_classes: int | None = None,
                 trust_pickle: bool = False, layers: list[str] | None = None) -> Teacher:
    """Load a teacher in any supported format.

    * a kdnas teacher checkpoint (``kdnas teacher train``);
    * a state_dict with ``arch``: a torchvision model name (``resnet18``) or a user class
      (``my_pkg.models:Net`` or ``path/to/file.py:Net``); ``torchvision:NAME:FILE`` says the
      same in one string. ``num_classes`` sets the head where it differs from the default;
    * a ``torch.export`` program (``.pt2``) or a TorchScript archive: no module structure to
      hook, so distillation falls back to logits (taps are empty);
    * a whole pickled ``nn.Module``, only with ``trust_pickle`` (unpickling runs code).

    Input shape and class count are filled in where the file tells them; the rest is
    inferred against the data by :func:`attach_to_data`.
    """
    text = str(ref)
    if text.startswith("torchvision:"):
        _, name, path = text.split(":", 2)
        arch, text = name, path
    p = Path(text).expanduser()
    if not p.is_file():
        what = "is a folder, not a file" if p.is_dir() else "does not exist"
        raise KdnasError(f"teacher file {str(p)!r} {what}: pass the path of a teacher "
                         "checkpoint, or make one with `kdnas teacher train`")
    if arch:
        t = _from_arch(p, arch, num_classes)
    else:
        kind = _archive_kind(p)
        if kind == "export":
            t = _from_export(p)
        elif kind == "torchscript":
            t = _from_torchscript(p)
        else:
            t = _from_torch_file(p, trust_pickle=trust_pickle)
    t.meta["layers"] = list(layers or [])
    return t


def _archive_kind(p: Path) -> str:
    import zipfile

    if not zipfile.is_zipfile(p):
        return "other"
    with zipfile.ZipFile(p) as z:
        names = z.namelist()
    if any(n.endswith("models/model.json") for n in names) or p.suffix == ".pt2":
        return "export"
    if any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names):
        return "torchscript"
    return "other"


def _from_torch_file(p: Path, *, trust_pickle: bool) -> Teacher:
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure means "not weights-only"
        msg = str(e).lower()
        if "unsupported global" not in msg and "can still be loaded" not in msg:
            raise KdnasError(f"cannot read {p} as a teacher: not a torch file "
                             f"({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
        if not trust_pickle:
            raise KdnasError(
                f"{p} is not a weights-only file ({type(e).__name__}); it may be a pickled "
                "whole module. Unpickling runs code from the file, so kdnas does it only when "
                "asked: pass --trust-pickle if you trust where the file came from, or save a "
                "state_dict and pass --teacher-arch") from None
        return _from_pickle(p)
    if isinstance(ckpt, dict) and ckpt.get("format") == FORMAT:
        return _from_checkpoint(p, ckpt)
    if isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor)
                                                for v in ckpt.values()):
        raise KdnasError(f"{p} is a state_dict: say which architecture it belongs to with "
                         "--teacher-arch NAME (a torchvision model, e.g. resnet18) or "
                         "--teacher-arch my_pkg.models:Net")
    raise KdnasError(f"{p} is a torch file but not a kdnas teacher checkpoint (no "
                     f"'format': '{FORMAT}' entry) nor a state_dict. Make one with "
                     "`kdnas teacher train`")


def _from_checkpoint(p: Path, ckpt: dict) -> Teacher:
    module = build_spec(ckpt["spec"])
    module.load_state_dict(ckpt["state_dict"])
    module.eval()
    input_shape = tuple(int(v) for v in ckpt["input_shape"])
    return Teacher(module=module, taps=[], input_shape=input_shape,
                   num_classes=len(ckpt["classes"]), source=str(p), digest=file_digest(p),
                   classes=list(ckpt["classes"]), mean=tuple(ckpt["mean"]),
                   std=tuple(ckpt["std"]), data=ckpt.get("data"),
                   meta={"format": "kdnas checkpoint", "spec": ckpt["spec"],
                         "val_accuracy": ckpt.get("val_accuracy"), "split": ckpt.get("split")})


def _from_pickle(p: Path) -> Teacher:
    log.warning("unpickling %s as asked (--trust-pickle): this runs code from the file", p)
    module = torch.load(p, map_location="cpu", weights_only=False)
    if not isinstance(module, nn.Module):
        raise KdnasError(f"{p} holds a {type(module).__name__}, not an nn.Module")
    return Teacher(module=module.eval(), taps=[], input_shape=None, num_classes=None,
                   source=str(p), digest=file_digest(p), meta={"format": "pickled module"})


def _resolve_class(arch: str):
    import importlib

    mod_name, _, attr = arch.rpartition(":")
    if mod_name.endswith(".py"):
        from search_spaces.user import _import_file

        path = Path(mod_name).expanduser()
        if not path.is_file():
            raise KdnasError(f"--teacher-arch file {mod_name!r} does not exist")
        module = _import_file(path)
    else:
        try:
            module = importlib.import_module(mod_name)
        except ImportError as e:
            raise KdnasError(f"cannot import {mod_name!r} for --teacher-arch {arch}: {e}. "
                             "Is the package installed or the folder on PYTHONPATH?") from None
    if not hasattr(module, attr):
        raise KdnasError(f"{mod_name} has no {attr!r} (from --teacher-arch {arch})")
    return getattr(module, attr)


def _from_arch(p: Path, arch: str, num_classes: int | None) -> Teacher:
    import inspect

    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise KdnasError(f"cannot read {p} as a state_dict ({type(e).__name__}: {e})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"],
                                                                        dict):
        state = state["state_dict"]  # a training checkpoint that wraps its state_dict
    if not isinstance(state, dict):
        raise KdnasError(f"{p} does not hold a state_dict (found {type(state).__name__})")
    if ":" in arch:
        cls = _resolve_class(arch)
        kwargs = {}
        if num_classes is not None and "num_classes" in inspect.signature(cls).parameters:
            kwargs["num_classes"] = num_classes
        module = cls(**kwargs)
        fmt = f"class {arch} + state_dict"
    else:
        import torchvision

        if arch not in torchvision.models.list_models():
            raise KdnasError(f"--teacher-arch {arch!r} is not a torchvision model; e.g. "
                             "resnet18, mobilenet_v2, or give module:Class for your own")
        if num_classes is None:  # read the head's size from the weights
            num_classes = _head_size(state)
        module = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
        fmt = f"torchvision {arch} + state_dict"
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise KdnasError(f"the weights in {p} do not fit {arch}: missing {missing[:4]}, "
                         f"unexpected {unexpected[:4]}. Check --teacher-arch and --num-classes")
    return Teacher(module=module.eval(), taps=[], input_shape=None, num_classes=None,
                   source=str(p), digest=file_digest(p), meta={"format": fmt})


def _head_size(state: dict) -> int | None:
    """Classes of the last linear layer in a state_dict (the last 2-d weight)."""
    weights = [v for k, v in state.items() if k.endswith("weight") and v.dim() == 2]
    return int(weights[-1].shape[0]) if weights else None


class GraphTeacher(nn.Module):
    """Wraps a teacher without module structure (exported program, TorchScript).

    Train/eval switches are not passed on (an exported program refuses them, it is frozen in
    eval mode anyway); inputs are made contiguous, and a program exported for a fixed batch
    size is run in chunks of that size (the last one padded).
    """

    def __init__(self, inner: nn.Module, static_batch: int | None = None) -> None:
        super().__init__()
        self.inner = inner
        self.static_batch = static_batch

    def train(self, mode: bool = True) -> GraphTeacher:
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        b = self.static_batch
        if b is None or x.shape[0] == b:
            return self.inner(x)
        outs = []
        for i in range(0, x.shape[0], b):
            chunk = x[i:i + b]
            n = chunk.shape[0]
            if n < b:
                chunk = torch.cat([chunk, chunk.new_zeros((b - n, *chunk.shape[1:]))])
            outs.append(self.inner(chunk)[:n])
        return torch.cat(outs)


def _from_export(p: Path) -> Teacher:
    try:
        program = torch.export.load(str(p))
    except Exception as e:  # noqa: BLE001
        raise KdnasError(f"cannot load {p} as a torch.export program: {e}") from None
    shape, batch = None, None
    inputs = [n for n in program.graph.nodes if n.op == "placeholder"
              and n.name in program.graph_signature.user_inputs]
    if len(inputs) == 1 and hasattr(inputs[0].meta.get("val"), "shape"):
        dims = inputs[0].meta["val"].shape
        if all(isinstance(d, int) for d in dims[1:]):
            shape = tuple(int(d) for d in dims[1:])
        batch = dims[0] if isinstance(dims[0], int) else None
    module = GraphTeacher(program.module(), static_batch=batch)
    return Teacher(module=module, taps=[], input_shape=shape, num_classes=None,
                   source=str(p), digest=file_digest(p),
                   meta={"format": "torch.export program", "graph": True})


def _from_torchscript(p: Path) -> Teacher:
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated upstream
            module = torch.jit.load(str(p), map_location="cpu")
    except Exception as e:  # noqa: BLE001
        raise KdnasError(f"cannot load {p} as TorchScript: {e}") from None
    return Teacher(module=GraphTeacher(module.eval()), taps=[], input_shape=None,
                   num_classes=None, source=str(p), digest=file_digest(p),
                   meta={"format": "TorchScript", "graph": True})
