"""A study's storage: open or create it, check a resumed study's settings, write its
manifest, fail the trials of dead workers, and read it back as plain records."""

from __future__ import annotations

import json
import logging
import os
import platform
import socket
import sys
import time

import optuna
import torch
from optuna.trial import TrialState

from kdnas.core.errors import KdnasError
from kdnas.core.files import write_text
from kdnas.core.records import StudyRecord, TrialRecord
from kdnas.core.settings import SearchConfig

log = logging.getLogger(__name__)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def open_study(cfg: SearchConfig, *, create: bool,
               sampler: optuna.samplers.BaseSampler | None = None) -> optuna.Study:
    """Create or load the study named ``cfg.study`` in its storage."""
    if cfg.storage is None:
        if not create and not (cfg.study_dir / "study.db").exists():
            raise KdnasError(f"no study {cfg.study!r} in {cfg.workdir}/: run `kdnas search "
                             f"--study {cfg.study} …` first, or pass --workdir/--storage")
        cfg.study_dir.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        if create:
            directions = ["maximize"] + ["minimize"] * len(cfg.objectives)
            return optuna.create_study(storage=cfg.storage_url, study_name=cfg.study,
                                       directions=directions, sampler=sampler,
                                       load_if_exists=True)
        return optuna.load_study(study_name=cfg.study, storage=cfg.storage_url,
                                 sampler=sampler)
    except KeyError:
        raise KdnasError(f"storage {cfg.storage_url} holds no study named {cfg.study!r}") from None


def stored_config(study: optuna.Study) -> SearchConfig | None:
    d = study.user_attrs.get("config")
    return SearchConfig.from_dict(d) if d else None


# settings that change what a trial means: a resumed study must keep them
_FIXED = ("budget", "space", "steps", "epochs", "train_fraction", "batch_size", "lr", "kd",
          "temperature", "kd_alpha", "feature_weight", "val_fraction", "split_seed", "seed",
          "teacher_layers", "normalize", "objectives")


def check_resume(study: optuna.Study, cfg: SearchConfig, fingerprint: dict) -> None:
    old = stored_config(study)
    if old is None:
        return
    changed = [k for k in _FIXED if getattr(old, k) != getattr(cfg, k)]
    old_fp = study.user_attrs.get("fingerprint", {})
    changed += [k for k in ("teacher_digest", "data_digest")
                if k in old_fp and old_fp[k] != fingerprint[k]]
    if changed:
        detail = ", ".join(f"{k}: {getattr(old, k, old_fp.get(k))!r} -> "
                           f"{getattr(cfg, k, fingerprint.get(k))!r}" for k in changed)
        raise KdnasError(f"study {cfg.study!r} already exists with other settings ({detail}). "
                         "Resume it with the same settings, or start a new one with "
                         "another --study name")


def manifest(cfg: SearchConfig, teacher, data) -> dict:
    import numpy
    import torchvision

    from kdnas import __version__

    return {
        "kdnas": __version__, "python": platform.python_version(), "torch": torch.__version__,
        "torchvision": torchvision.__version__, "optuna": optuna.__version__,
        "macs_counter": "torch.utils.flop_counter", "numpy": numpy.__version__,
        "platform": platform.platform(), "seed": cfg.seed, "split_seed": cfg.split_seed,
        "data": data.spec, "data_digest": data.digest(), "teacher": teacher.source,
        "teacher_digest": teacher.digest, "command": " ".join(sys.argv),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "config": cfg.to_dict(),
    }


def write_manifest(cfg: SearchConfig, info: dict) -> None:
    path = cfg.study_dir / "manifest.json"
    if path.exists():
        old = json.loads(path.read_text())
        old.setdefault("resumed", []).append({"command": info["command"],
                                              "at": info["created"]})
        info = old
    write_text(path, json.dumps(info, indent=2))


def fail_stale_trials(study: optuna.Study) -> int:
    """Mark RUNNING trials of dead processes on this host as FAIL (after a kill or crash)."""
    host = socket.gethostname()
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        w = t.user_attrs.get("worker", "")
        h, _, pid = w.rpartition(":")
        if h == host and pid.isdigit() and not _alive(int(pid)):
            study.tell(t.number, state=TrialState.FAIL)
            n += 1
    return n


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def trained_count(study: optuna.Study) -> int:
    return sum(1 for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
               if t.user_attrs.get("trained"))


def _state(t: optuna.trial.FrozenTrial) -> str:
    if t.state == TrialState.COMPLETE:
        if t.user_attrs.get("duplicate_of") is not None:
            return "duplicate"
        return "trained" if t.user_attrs.get("trained") else "infeasible"
    if t.state == TrialState.FAIL:
        return "interrupted" if t.user_attrs.get("interrupted") else "failed"
    return t.state.name.lower()


def trial_record(t: optuna.trial.FrozenTrial) -> TrialRecord:
    a = t.user_attrs
    return TrialRecord(
        number=t.number, state=_state(t), spec=a.get("spec"), spec_id=a.get("spec_id"),
        cost=dict(a.get("cost", {})), budget_excess=t.constraints.get("budget"),
        val_accuracy=a.get("val_accuracy"), train_seconds=a.get("train_seconds"),
        kd=a.get("kd"), feature_weight=a.get("feature_weight"), weights=a.get("weights"),
        curve=tuple(a.get("curve", ())), learning_curve=tuple(a.get("learning_curve", ())),
        recipe=dict(a.get("recipe", {})),
        started=t.datetime_start.timestamp() if t.datetime_start else None,
        completed=t.datetime_complete.timestamp() if t.datetime_complete else None,
        values=tuple(t.values or ()))


def load_record(study: optuna.Study) -> StudyRecord:
    """The study as plain records, for reports and shipping."""
    attrs = study.user_attrs
    return StudyRecord(name=study.study_name,
                       trials=tuple(trial_record(t) for t in study.get_trials(deepcopy=False)),
                       references=dict(attrs.get("references", {})),
                       teacher_val_accuracy=attrs.get("teacher_val_accuracy"),
                       normalization=attrs.get("normalization"),
                       hypervolume_reference=attrs.get("hypervolume_reference"),
                       num_classes=attrs.get("num_classes"), noise=attrs.get("noise"))
