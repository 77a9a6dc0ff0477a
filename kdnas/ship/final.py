"""Full distillation of a chosen student: ``kdnas distill``.

The search trains every candidate briefly, only to rank them. The student a user ships is
trained again from scratch, for many epochs, with the study's teacher and the final
method (:func:`final_method`: ``--kd``, else the trial's method in a study that searched the
method, else :data:`DISTILL_DEFAULT`, which need not be the method the search ranked with); it
checkpoints every epoch (``runs/<study>/distill/trial-<N>/``) and
resumes after an interruption, ending exactly where an uninterrupted run would. The final
test accuracy goes into the exported model card and the study's report.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from collections.abc import Callable
from pathlib import Path

import torch

from kdnas.core.records import StudyRecord
from kdnas.core.settings import (
    EXPORT_FORMATS,
    DISTILL_DEFAULT,
    SearchConfig,
    TrainConfig,
    canonical_method,
    kd_method,
)
from kdnas.distill import evaluate
from kdnas.distill.candidate import TrainContext, train_candidate
from kdnas.ship.export import Int8Options, write_exports
from search_spaces import get_space, preset_spec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FullRecipe:
    """How a chosen student is trained in full: epochs, and the study's own learning rate,
    batch and seed where these are None."""

    epochs: float
    lr: float | None = None
    batch_size: int | None = None
    schedule: str = "cosine"
    seed: int | None = None
    formats: tuple[str, ...] = EXPORT_FORMATS
    int8: Int8Options | None = None  # --int8: quantize and measure beside the fp32 files


def final_method(requested: str | None, study_kd: str, trial_kd: str | None
                 ) -> tuple[str, bool]:
    """The method a chosen student is distilled with, and whether it is the one its trial
    was trained with (so the trial's feature weight applies): ``requested`` (``--kd``) when
    given; else, in a study that searched the method (``--kd auto``), the trial's; else
    :data:`DISTILL_DEFAULT`, whatever the search ranked with."""
    trial = canonical_method(trial_kd or study_kd)
    if requested:
        method = requested
    elif study_kd == "auto" and trial_kd:
        method = trial_kd
    else:
        method = DISTILL_DEFAULT
    return method, canonical_method(method) == trial


def seed_tag(seed: int | None, study_seed: int) -> str:
    """The record, checkpoint and folder suffix of a full distillation's seed: none for the
    study's own seed (or none given), ``-seed<N>`` for another."""
    return "" if seed is None or seed == study_seed else f"-seed{seed}"


UNTAGGED_METHOD = "fitnets"  # the method of the records made before --kd: fixed, not the default


def method_tag(kd: str) -> str:
    """The record and folder suffix of a final method: none for FitNets (every final
    student trained before ``kdnas distill --kd`` was), ``-<method>`` for the others, so the
    checkpoints of each method are kept apart, earlier runs resume, and a later change of
    :data:`DISTILL_DEFAULT` never resumes one method's checkpoint with another."""
    method = canonical_method(kd)
    if method == UNTAGGED_METHOD:
        return ""
    ce = kd_method(method).final_ce_weight  # another weighting: another checkpoint
    return f"-{method}" + ("" if ce is None else f"-ce{ce:g}")


@dataclass(frozen=True)
class _Pick:
    """The student to distil: its spec, record name, method, cost, what the search saw."""

    spec: dict
    name: str
    kd: str
    feature_weight: float | None
    cost: dict
    search_val_accuracy: float | None
    extra: dict


def distill_trial(record: StudyRecord, cfg: SearchConfig, trial_number: int, teacher, data, *,
                  epochs: float, out_dir: Path, lr: float | None = None,
                  batch_size: int | None = None, schedule: str = "cosine",
                  seed: int | None = None, formats: tuple[str, ...] = EXPORT_FORMATS,
                  kd: str | None = None, int8: Int8Options | None = None,
                  progress: Callable[[int, int, float], None] | None = None) -> dict:
    """Train trial ``trial_number``'s student fully (see the module text) with ``kd`` (None:
    :func:`final_method`'s choice)."""
    rec = record.trained_trial(trial_number)
    method, same = final_method(kd, cfg.kd, rec.kd)
    pick = _Pick(rec.spec, f"trial-{trial_number}{method_tag(method)}", method,
                 rec.feature_weight if same else None, rec.cost, rec.val_accuracy,
                 {"trial": trial_number})
    return _distill(pick, cfg, teacher, data, FullRecipe(epochs, lr, batch_size, schedule,
                                                         seed, tuple(formats), int8),
                    out_dir=out_dir, progress=progress)


def distill_reference(cfg: SearchConfig, name: str, teacher, data, *, epochs: float,
                      out_dir: Path, lr: float | None = None, batch_size: int | None = None,
                      schedule: str = "cosine", seed: int | None = None,
                      formats: tuple[str, ...] = EXPORT_FORMATS, kd: str | None = None,
                      int8: Int8Options | None = None, spec: dict | None = None,
                      progress: Callable[[int, int, float], None] | None = None) -> dict:
    """Train a hand-designed student (a preset of a space, ``resnet8`` or
    ``mobilenet:mobilenetv2_half``; or ``spec``, which ``name`` then labels) exactly as
    :func:`distill_trial` trains a found one, with the study's teacher and the same final
    method: the bar a found student must clear."""
    return _distill(_reference_pick(cfg, name, data, kd, spec), cfg, teacher, data,
                    FullRecipe(epochs, lr, batch_size, schedule, seed, tuple(formats), int8),
                    out_dir=out_dir, progress=progress)


def reference_recipe(cfg: SearchConfig, name: str, data, *, epochs: float,
                     seed: int | None = None, kd: str | None = None,
                     spec: dict | None = None) -> dict:
    """The ``recipe`` that :func:`distill_reference` with these arguments (and the default
    learning rate, batch and schedule) records, computed without training: an earlier run
    whose recorded recipe equals it trained the same student the same way."""
    pick = _reference_pick(cfg, name, data, kd, spec)
    seed = cfg.seed if seed is None else seed
    full = FullRecipe(epochs, None, None, "cosine", seed, (), None)
    return _recipe(final_train_config(pick, cfg, full, seed), full.schedule, seed)


def _reference_pick(cfg: SearchConfig, name: str, data, kd: str | None,
                    spec: dict | None) -> _Pick:
    from kdnas.cost import measure_cost

    spec = spec or preset_spec(name, cfg.space, in_channels=data.in_channels,
                               num_classes=data.num_classes, input_size=data.input_size)
    cost = measure_cost(get_space(spec["space"]).build(spec), data.input_shape,
                        latency=False).to_dict()
    method, same = final_method(kd, cfg.kd, None)
    return _Pick(spec, f"ref-{name.replace(':', '-')}{method_tag(method)}", method,
                 cfg.feature_weight if same else None, cost, None, {"reference": name})


def _recipe(tcfg: TrainConfig, schedule: str, seed: int) -> dict:
    return {"steps": tcfg.steps, "lr": tcfg.lr, "batch_size": tcfg.batch_size,
            "schedule": schedule,
            "kd": tcfg.method, "feature_weight": tcfg.weight, "ce_weight": tcfg.ce_weight,
            "temperature": tcfg.temperature, "kd_alpha": tcfg.kd_alpha, "seed": seed}


def final_train_config(pick: _Pick, cfg: SearchConfig, full: FullRecipe, seed: int
                       ) -> TrainConfig:
    """The full recipe's training settings: the study's temperature and mixing, the method's
    final cross-entropy weight (``KDMethod.final_ce_weight``: the papers' form where it was
    measured better), the recipe's epochs, batch, learning rate and schedule."""
    return TrainConfig(epochs=full.epochs, batch_size=full.batch_size or cfg.batch_size,
                       lr=full.lr or cfg.lr, train_fraction=1.0, kd=pick.kd,
                       temperature=cfg.temperature, kd_alpha=cfg.kd_alpha,
                       ce_weight=kd_method(pick.kd).final_ce_weight,
                       feature_weight=pick.feature_weight, schedule=full.schedule, seed=seed,
                       device=cfg.device)


def _distill(pick: _Pick, cfg: SearchConfig, teacher, data, full: FullRecipe, *,
             out_dir: Path, progress: Callable[[int, int, float], None] | None) -> dict:
    spec, name, cost, epochs, schedule = pick.spec, pick.name, pick.cost, full.epochs, \
        full.schedule
    name += seed_tag(full.seed, cfg.seed)  # another seed: its own checkpoint and record
    seed = cfg.seed if full.seed is None else full.seed
    tcfg = final_train_config(pick, cfg, full, seed)
    work = cfg.study_dir / "distill" / name
    out = train_candidate(TrainContext(teacher, data), spec, tcfg, init=seed,
                          checkpoint=work / "checkpoint.pt", progress=progress)
    model, result = out.model, out.result
    test_acc = evaluate(model, data, "test", device=cfg.device)
    info = {"study": cfg.study, "name": name, **pick.extra, "epochs": epochs,
            "val_accuracy": result.val_accuracy, "test_accuracy": test_acc,
            "search_val_accuracy": pick.search_val_accuracy, "macs": cost.get("macs"),
            "recipe": _recipe(tcfg, schedule, seed),
            "curve": result.curve}
    torch.save({"spec": spec, "state_dict": model.state_dict()}, work / "student.pt")
    meta = {"val_accuracy": result.val_accuracy, "test_accuracy": test_acc,
            "study": cfg.study, **pick.extra, "budget": cfg.budget,
            "teacher": cfg.teacher, "data": cfg.data,
            "latency_ms": cost.get("latency_ms"),
            "latency_setting": cost.get("latency_setting"),
            "accuracy_note": f"after full distillation, {epochs:g} epochs",
            "closing": "Trained from scratch with the study's teacher and "
                       f"{tcfg.method} distillation for {epochs:g} epochs (`kdnas distill`).",
            "training": {"epochs": epochs, "train_fraction": 1.0, "kd": tcfg.method,
                         "temperature": tcfg.temperature, "kd_alpha": tcfg.kd_alpha,
                         "ce_weight": tcfg.ce_weight, "feature_weight": tcfg.weight,
                         "seed": seed}}
    diffs, files = write_exports(model, spec, data, Path(out_dir), formats=full.formats,
                                  meta=meta, int8=full.int8)
    info["int8"] = meta.get("int8")
    info["exports"] = {k: str(Path(out_dir) / f.name) for k, f in zip(diffs, files[1:],
                                                                      strict=False)}
    info["files"] = [str(f) for f in files]
    return info
