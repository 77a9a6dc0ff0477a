"""Export: rebuild a student from its spec, load its weights, write deployable files, verify.

Writes into the output folder:

* ``spec.json``: the spec, input shape, classes, normalisation, cost and accuracy;
* ``student_state_dict.pt``: weights for ``search_spaces.build(spec)``;
* ``student.pt2``: a ``torch.export`` program that loads with plain PyTorch
  (``torch.export.load(path).module()``), no kdnas needed;
* ``MODEL_CARD.md``: what it is, what it costs, how it was made.

Every export re-counts MACs and params and re-measures validation accuracy, and fails if
they or the exported program disagree with the study's record.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch

from kdnas.config import SearchConfig
from kdnas.cost import count_macs, count_params, fmt_count
from kdnas.distill import evaluate
from kdnas.errors import KdnasError
from search_spaces import build, describe

log = logging.getLogger(__name__)

ACCURACY_TOLERANCE = 0.002  # re-measured val accuracy may differ by float rounding only
OUTPUT_TOLERANCE = 1e-4


@dataclass
class ExportResult:
    out_dir: Path
    trial: int
    macs: int
    params: int
    val_accuracy: float
    recorded_accuracy: float
    max_abs_diff: float
    files: list[Path]


def load_student(study: optuna.Study, trial_number: int) -> tuple[torch.nn.Module, dict, dict]:
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    t = trials.get(trial_number)
    if t is None:
        raise KdnasError(f"study {study.study_name!r} has no trial {trial_number} "
                         f"(it has 0..{max(trials) if trials else -1})")
    if not t.user_attrs.get("trained"):
        raise KdnasError(f"trial {trial_number} was not trained (state: {t.state.name}, "
                         "e.g. over budget or interrupted): pick a trained trial, see "
                         "pareto.md")
    path = Path(t.user_attrs["weights"])
    if not path.is_file():
        raise KdnasError(f"weights of trial {trial_number} are missing at {path}: run export "
                         "on the machine (or folder) where that trial was trained")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    model = build(saved["spec"])
    model.load_state_dict(saved["state_dict"])
    model.eval()
    return model, saved["spec"], dict(t.user_attrs)


def export_trial(study: optuna.Study, cfg: SearchConfig, trial_number: int, data,
                 out_dir: Path) -> ExportResult:
    """Export one trained trial; ``data`` carries the study's normalisation."""
    model, spec, rec = load_student(study, trial_number)
    shape = tuple(data.input_shape)
    macs, params = count_macs(model, shape), count_params(model)
    cost = rec["cost"]
    if macs != cost["macs"] or params != cost["params"]:
        raise KdnasError(f"trial {trial_number}: rebuilt student costs {macs} MACs / {params} "
                         f"params but the study recorded {cost['macs']} / {cost['params']}: "
                         "the search space code changed since the search")
    acc = evaluate(model, data, "val")
    recorded = float(rec["val_accuracy"])
    if abs(acc - recorded) > ACCURACY_TOLERANCE:
        raise KdnasError(f"trial {trial_number}: re-measured validation accuracy {acc:.4f} "
                         f"differs from the recorded {recorded:.4f}: data or weights changed")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.to(memory_format=torch.contiguous_format).eval()
    weights = out / "student_state_dict.pt"
    torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, weights)

    x = next(data.batches("val", 64))[0].contiguous()
    program = torch.export.export(model, (x[:2],), dynamic_shapes=({0: torch.export.Dim.AUTO},))
    pt2 = out / "student.pt2"
    torch.export.save(program, pt2)
    loaded = torch.export.load(pt2).module()
    with torch.no_grad():
        diff = float((loaded(x) - model(x)).abs().max())
    if not diff <= OUTPUT_TOLERANCE:
        raise KdnasError(f"exported program disagrees with the PyTorch model (max abs "
                         f"difference {diff:.3g} > {OUTPUT_TOLERANCE}); not exporting")

    meta = {"spec": spec, "arch": describe(spec), "input_shape": list(shape),
            "classes": list(data.classes), "normalization": {"mean": list(data.mean),
                                                             "std": list(data.std)},
            "input_range": "pixels scaled to [0, 1], then (x - mean) / std per channel",
            "macs": macs, "flops": 2 * macs, "params": params,
            "latency_ms": cost.get("latency_ms"), "latency_setting": cost.get("latency_setting"),
            "val_accuracy": acc, "study": cfg.study, "trial": trial_number,
            "budget": cfg.budget, "teacher": cfg.teacher, "data": cfg.data,
            "training": {"epochs": cfg.epochs, "train_fraction": cfg.train_fraction,
                         "kd": rec.get("kd", cfg.kd), "temperature": cfg.temperature,
                         "kd_alpha": cfg.kd_alpha,
                         "feature_weight": rec.get("feature_weight", cfg.feature_weight)}}
    (out / "spec.json").write_text(json.dumps(meta, indent=2))
    card = out / "MODEL_CARD.md"
    card.write_text(_card(meta, diff))
    return ExportResult(out, trial_number, macs, params, acc, recorded, diff,
                        [weights, pt2, out / "spec.json", card])


def _card(m: dict, diff: float) -> str:
    tr = m["training"]
    return f"""# {m['arch']} (study {m['study']}, trial {m['trial']})

| | |
| --- | --- |
| cost | {fmt_count(m['macs'])} MACs ({fmt_count(m['flops'])} FLOPs) at batch 1, \
{fmt_count(m['params'])} params |
| budget | {m['budget']} |
| validation accuracy | {100 * m['val_accuracy']:.2f}% (after the brief search training) |
| latency | {m['latency_ms'] and f"{m['latency_ms']:.3g} ms"} ({m['latency_setting']}) |
| teacher | {m['teacher']} |
| data | {m['data']}, input {tuple(m['input_shape'])}, {len(m['classes'])} classes |
| training | {tr['epochs']} epoch(s) on {100 * tr['train_fraction']:.0f}% of the training \
split, distillation: {tr['kd']} (T={tr['temperature']}, alpha={tr['kd_alpha']}, \
feature weight={tr['feature_weight']}) |

Inputs: {m['input_range']}; mean {m['normalization']['mean']}, std \
{m['normalization']['std']}.

Load without kdnas:

```python
import torch
model = torch.export.load("student.pt2").module()
logits = model(images)  # float32, shape (N, {', '.join(map(str, m['input_shape']))})
```

The exported program matches the PyTorch model to {diff:.2g} (max abs difference of logits
on validation images). This accuracy comes from brief search training, used for ranking;
train the student longer before shipping it.
"""
