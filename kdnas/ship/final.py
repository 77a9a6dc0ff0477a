"""Full distillation of a chosen student: ``kdnas distill``.

The search trains every candidate briefly, only to rank them. The student a user ships is
trained again from scratch, for many epochs, with the study's teacher and the trial's
distillation method; it checkpoints every epoch (``runs/<study>/distill/trial-<N>/``) and
resumes after an interruption, ending exactly where an uninterrupted run would. The final
test accuracy goes into the exported model card and the study's report.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import torch

from kdnas.core.files import write_text
from kdnas.core.records import StudyRecord
from kdnas.core.settings import SearchConfig, TrainConfig
from kdnas.distill import evaluate, fit
from kdnas.ship.export import write_exports
from search_spaces import get_space

log = logging.getLogger(__name__)


def distill_trial(record: StudyRecord, cfg: SearchConfig, trial_number: int, teacher, data, *,
                  epochs: float, out_dir: Path, lr: float | None = None,
                  batch_size: int | None = None, schedule: str = "cosine",
                  seed: int | None = None, formats: tuple[str, ...] = ("pt2", "onnx"),
                  progress: Callable[[int, int, float], None] | None = None) -> dict:
    rec = record.trained_trial(trial_number)
    spec = rec.spec
    space = get_space(spec["space"])
    seed = cfg.seed if seed is None else seed
    tcfg = TrainConfig(epochs=epochs, batch_size=batch_size or cfg.batch_size,
                       lr=lr or cfg.lr, train_fraction=1.0, kd=rec.kd or cfg.kd,
                       temperature=cfg.temperature, kd_alpha=cfg.kd_alpha,
                       feature_weight=rec.feature_weight, schedule=schedule, seed=seed)
    torch.manual_seed(seed)
    model = space.build(spec)
    work = cfg.study_dir / "distill" / f"trial-{trial_number}"
    result = fit(model, data, tcfg, teacher=teacher, student_taps=space.taps(spec),
                 checkpoint=work / "checkpoint.pt", progress=progress)
    test_acc = evaluate(model, data, "test")
    info = {"study": cfg.study, "trial": trial_number, "epochs": epochs,
            "val_accuracy": result.val_accuracy, "test_accuracy": test_acc,
            "search_val_accuracy": rec.val_accuracy,
            "recipe": {"lr": tcfg.lr, "batch_size": tcfg.batch_size, "schedule": schedule,
                       "kd": tcfg.method, "feature_weight": tcfg.weight, "seed": seed},
            "curve": result.curve}
    torch.save({"spec": spec, "state_dict": model.state_dict()}, work / "student.pt")
    meta = {"val_accuracy": result.val_accuracy, "test_accuracy": test_acc,
            "study": cfg.study, "trial": trial_number, "budget": cfg.budget,
            "teacher": cfg.teacher, "data": cfg.data,
            "latency_ms": rec.cost.get("latency_ms"),
            "latency_setting": rec.cost.get("latency_setting"),
            "accuracy_note": f"after full distillation, {epochs:g} epochs",
            "closing": "Trained from scratch with the study's teacher and this trial's "
                       f"distillation method for {epochs:g} epochs (`kdnas distill`).",
            "training": {"epochs": epochs, "train_fraction": 1.0, "kd": tcfg.method,
                         "temperature": tcfg.temperature, "kd_alpha": tcfg.kd_alpha,
                         "feature_weight": tcfg.weight}}
    diffs, files = write_exports(model, spec, data, Path(out_dir), formats=formats, meta=meta)
    info["exports"] = {k: str(Path(out_dir) / f.name) for k, f in zip(diffs, files[1:],
                                                                      strict=False)}
    write_text(cfg.report_dir / "distilled" / f"trial-{trial_number}.json",
               json.dumps(info, indent=2))
    info["files"] = [str(f) for f in files]
    return info
