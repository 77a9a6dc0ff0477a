"""Export: rebuild a student from its spec, load its weights, write deployable files, verify.

Writes into the output folder:

* ``spec.json``: the spec, input shape, classes, normalisation, cost and accuracy;
* ``student_state_dict.pt``: weights for ``search_spaces.build(spec)``;
* ``student.pt2``: a ``torch.export`` program that loads with plain PyTorch
  (``torch.export.load(path).module()``), no kdnas needed;
* ``student.onnx``: ONNX, checked with onnxruntime (``student.ts``, TorchScript, if asked);
* ``student.int8.onnx`` with ``int8`` (``--int8``): quantized by ONNX Runtime, measured
  beside the fp32 file (:mod:`kdnas.ship.int8`);
* ``MODEL_CARD.md``: what it is, what it costs, how it was made.

Every export re-counts MACs and params and re-measures validation accuracy, and fails if
they or the exported program disagree with the study's record.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from kdnas import ort
from kdnas.core.budget import fmt_count
from kdnas.core.errors import KdnasError
from kdnas.core.records import StudyRecord, TrialRecord
from kdnas.core.settings import EXPORT_FORMATS, SearchConfig
from kdnas.cost import count_macs, count_params
from kdnas.distill import evaluate
from kdnas.ship.int8 import (
    CALIBRATION_DEFAULT,
    CALIBRATION_IMAGES,
    card_section,
    check_calibration,
    int8_export,
)
from search_spaces import build, describe

log = logging.getLogger(__name__)

ACCURACY_TOLERANCE = 0.002  # re-measured val accuracy may differ by float rounding only


@dataclass
class ExportResult:
    out_dir: Path
    trial: int
    macs: int
    params: int
    val_accuracy: float
    recorded_accuracy: float
    max_abs_diff: dict[str, float]  # per format
    files: list[Path]
    int8: dict | None = None  # Int8Report.to_dict() with its warning, with --int8


@dataclass(frozen=True)
class Int8Options:
    """``--int8``: the calibration of the post-training quantization."""

    images: int = CALIBRATION_IMAGES
    method: str = CALIBRATION_DEFAULT

    def __post_init__(self) -> None:  # refused before anything is written
        check_calibration(self.images, self.method)


def load_student(record: StudyRecord, trial_number: int, study_dir: Path
                 ) -> tuple[torch.nn.Module, dict, TrialRecord]:
    """The trained student of a trial, rebuilt from its spec with its weights loaded (their
    path is stored relative to the study folder; older studies stored it as written)."""
    t = record.trained_trial(trial_number)
    path = Path(t.weights)
    if not path.is_absolute() and (Path(study_dir) / path).is_file():
        path = Path(study_dir) / path
    if not path.is_file():
        raise KdnasError(f"weights of trial {trial_number} are missing at {path}: run export "
                         "on the machine (or folder) where that trial was trained")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    model = build(saved["spec"])
    model.load_state_dict(saved["state_dict"])
    model.eval()
    return model, saved["spec"], t


def _write_pt2(model, x, out: Path):
    program = torch.export.export(model, (x[:2],), dynamic_shapes=({0: torch.export.Dim.AUTO},))
    path = out / "student.pt2"
    torch.export.save(program, path)
    with torch.no_grad():
        return path, torch.export.load(path).module()(x)


def _write_onnx(model, x, out: Path):
    path = ort.write_onnx(model, x[:2], out / "student.onnx")
    return path, ort.session(path).run(None, {"images": x.numpy()})[0]


def _write_torchscript(model, x, out: Path):
    path = out / "student.ts"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated upstream
        torch.jit.save(torch.jit.trace(model, x[:2]), str(path))
        loaded = torch.jit.load(str(path))
    with torch.no_grad():
        return path, loaded(x)


FORMATS = ("pt2", "onnx", "torchscript")
_WRITERS = {"pt2": _write_pt2, "onnx": _write_onnx, "torchscript": _write_torchscript}
# the largest max-abs difference of logits accepted, on real validation images: float
# rounding, relative to the largest logit's magnitude (at least 1), so a student with large
# logits (a distillation can leave them in the thousands) is judged alike
TOLERANCES = {"pt2": 1e-4, "onnx": 1e-3, "torchscript": 1e-4}


def export_trial(record: StudyRecord, cfg: SearchConfig, trial_number: int, data,
                 out_dir: Path, *, formats: tuple[str, ...] = EXPORT_FORMATS,
                 int8: Int8Options | None = None) -> ExportResult:
    """Export one trained trial; ``data`` carries the study's normalisation.

    Writes the state_dict and spec always, and each of ``formats`` (``pt2``: torch.export,
    ``onnx`` checked with onnxruntime, ``torchscript``), each verified on validation images.
    """
    model, spec, rec = load_student(record, trial_number, cfg.study_dir)
    shape = tuple(data.input_shape)
    macs, params = count_macs(model, shape), count_params(model)
    cost = rec.cost
    if macs != cost["macs"] or params != cost["params"]:
        raise KdnasError(f"trial {trial_number}: rebuilt student costs {macs} MACs / {params} "
                         f"params but the study recorded {cost['macs']} / {cost['params']}: "
                         "the search space code changed since the search")
    acc = evaluate(model, data, "val")
    recorded = float(rec.val_accuracy)
    if abs(acc - recorded) > ACCURACY_TOLERANCE:
        raise KdnasError(f"trial {trial_number}: re-measured validation accuracy {acc:.4f} "
                         f"differs from the recorded {recorded:.4f}: data or weights changed")

    meta = {"val_accuracy": acc, "study": cfg.study, "trial": trial_number,
            "budget": cfg.budget, "teacher": cfg.teacher, "data": cfg.data,
            "latency_ms": cost.get("latency_ms"), "latency_setting": cost.get("latency_setting"),
            "accuracy_note": "after the brief search training, used for ranking",
            "training": {**(rec.recipe or {"epochs": cfg.epochs or 1}),
                         "train_fraction": cfg.train_fraction,
                         "kd": rec.kd or cfg.kd, "temperature": cfg.temperature,
                         "kd_alpha": cfg.kd_alpha,
                         "feature_weight": (rec.feature_weight if rec.feature_weight is not None
                                            else cfg.feature_weight)}}
    diffs, files = write_exports(model, spec, data, Path(out_dir), formats=formats, meta=meta,
                                 counted=(macs, params), int8=int8)
    return ExportResult(Path(out_dir), trial_number, macs, params, acc, recorded, diffs, files,
                        meta.get("int8"))


def write_exports(model: torch.nn.Module, spec: dict, data, out: Path, *,
                  formats: tuple[str, ...], meta: dict,
                  counted: tuple[int, int] | None = None, int8: Int8Options | None = None
                  ) -> tuple[dict[str, float], list[Path]]:
    """Write weights, spec, each format (verified on validation images) and the model card.

    ``meta`` carries what the card states about the study and the training (``meta["int8"]``
    is set with ``int8``); ``counted`` the model's (MACs, params) when the caller has counted
    them already. ``int8``: quantize the ONNX file (written for it if not asked) and measure
    both on ONNX Runtime."""
    if int8 is not None and "onnx" not in formats:
        formats = (*formats, "onnx")
    if int8 is not None:  # a calibration the data cannot give: refused before any file
        check_calibration(int8.images, int8.method, len(data.train_y))
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise KdnasError(f"unknown export format(s) {sorted(unknown)}: choose from "
                         f"{', '.join(FORMATS)}")
    out.mkdir(parents=True, exist_ok=True)
    shape = tuple(data.input_shape)
    model = model.to(memory_format=torch.contiguous_format).eval()
    macs, params = counted or (count_macs(model, shape), count_params(model))
    weights = out / "student_state_dict.pt"
    torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, weights)

    x = next(data.batches("val", 64))[0].contiguous()
    with torch.no_grad():
        reference = model(x)
    files, diffs = [weights], {}
    scale = max(1.0, float(reference.abs().max()))
    for fmt in formats:
        path, outputs = _WRITERS[fmt](model, x, out)
        diff = float((torch.as_tensor(outputs) - reference).abs().max())
        if not diff <= TOLERANCES[fmt] * scale:
            path.unlink(missing_ok=True)
            raise KdnasError(f"the {fmt} export disagrees with the PyTorch model (max abs "
                             f"difference of logits {diff:.3g} > {TOLERANCES[fmt]} x "
                             f"{scale:.3g}, the largest logit's magnitude); removed")
        files.append(path)
        diffs[fmt] = diff

    if int8 is not None:
        report = int8_export(out / "student.onnx", data, images=int8.images,
                             method=int8.method,
                             split="test" if len(data.test_y) else "val")
        meta["int8"] = {**report.to_dict(), "warning": report.warning()}
        files.append(out / report.int8.file)
    meta = {"spec": spec, "arch": describe(spec), "input_shape": list(shape),
            "classes": list(data.classes),
            "normalization": {"mean": list(data.mean), "std": list(data.std)},
            "input_range": "pixels scaled to [0, 1], then (x - mean) / std per channel",
            "macs": macs, "flops": 2 * macs, "params": params, **meta,
            "exports": {f: {"file": p.name, "max_abs_diff": diffs[f]}
                        for f, p in zip(formats, files[1:], strict=False)}}
    (out / "spec.json").write_text(json.dumps(meta, indent=2))
    card = out / "MODEL_CARD.md"
    card.write_text(_card(meta))
    return diffs, files + [out / "spec.json", card]


def _card(m: dict) -> str:
    tr = m["training"]
    checks = "\n".join(f"- `{v['file']}` ({k}): max abs difference of logits from the PyTorch "
                       f"model on validation images {v['max_abs_diff']:.2g}"
                       for k, v in m["exports"].items())
    lat = f"{m['latency_ms']:.3g} ms ({m['latency_setting']})" if m["latency_ms"] else "-"
    shape = ", ".join(map(str, m["input_shape"]))
    test = ("" if m.get("test_accuracy") is None else
            f"\n| test accuracy | {100 * m['test_accuracy']:.2f}% (after full distillation) |")
    amount = (f"{tr['steps']} steps ({tr['images']} images)" if "steps" in tr
              else f"{tr['epochs']} epoch(s)")
    split = f"{amount} on {100 * tr['train_fraction']:.0f}% of the training split"
    weighting = (f"alpha={tr['kd_alpha']}" if tr.get("ce_weight") is None
                 else f"cross-entropy weight {tr['ce_weight']:g} + the method's loss")
    who = (f"reference {m['reference']}" if m.get("reference") is not None
           else f"trial {m['trial']}")
    return f"""# {m['arch']} (study {m['study']}, {who})

| | |
| --- | --- |
| cost | {fmt_count(m['macs'])} MACs ({fmt_count(m['flops'])} FLOPs) at batch 1, \
{fmt_count(m['params'])} params |
| budget | {m['budget']} |
| validation accuracy | {100 * m['val_accuracy']:.2f}% ({m['accuracy_note']}) |{test}
| latency | {lat} |
| teacher | {m['teacher']} |
| data | {m['data']}, input {tuple(m['input_shape'])}, {len(m['classes'])} classes |
| training | {split}, distillation: {tr['kd']} (T={tr['temperature']}, {weighting}, \
feature weight={tr['feature_weight']}) |

Inputs: {m['input_range']}; mean {m['normalization']['mean']}, std \
{m['normalization']['std']}; classes in order: {', '.join(m['classes'])}.

Files, each checked against the PyTorch model:

{checks}

Load without kdnas:

```python
import torch
model = torch.export.load("student.pt2").module()
logits = model(images)  # float32, shape (N, {shape})

import onnxruntime
session = onnxruntime.InferenceSession("student.onnx")
logits = session.run(None, {{"images": images.numpy()}})[0]
```

{m.get("closing", "This accuracy comes from brief search training, used for ranking; train "
             "the student fully (`kdnas distill`) before shipping it.")}
""" + ("\n" + card_section(m["int8"]) if m.get("int8") else "")
