"""A study's storage: open or create it, check a resumed study's settings, write its
manifest, fail the trials of dead workers (and queue their candidates again), and read it
back as plain records.

Every study lives in an Optuna RDB storage (SQLite in the study folder by default, or any
``--storage`` URL such as ``postgresql://…``) with heartbeats: a trial whose worker stops
beating for ``GRACE_SECONDS`` is failed by the next worker that looks, and its candidate is
queued to be trained again. On one host a dead worker's trials are found at once by pid.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import socket
import sys
import threading
import time
import warnings

import optuna
import torch
from optuna.trial import TrialState

from kdnas.core.attrs import Outcome, StudyAttr, TrialAttr
from kdnas.core.errors import KdnasError
from kdnas.core.files import write_text
from kdnas.core.records import StudyRecord, TrialRecord
from kdnas.core.settings import SearchConfig, fixed_settings
from kdnas.optuna_internals import storage as storage_of
from kdnas.optuna_internals import trial_id
from kdnas.search.patient_storage import PatientRDBStorage

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 10  # a running trial's worker writes a heartbeat this often
GRACE_SECONDS = 60  # a trial silent for this long is failed and its candidate queued again
MAX_RETRIES = 2  # a candidate whose trials keep dying is given up after this many retries


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def is_lead_host(study: optuna.Study) -> bool:
    """Whether this machine leads the study: the one that made it trains its references,
    promotions and noise check (worker 0 there), so that machines sharing a database never
    train one of them twice. A study made before this was recorded is led by any machine."""
    lead = study.user_attrs.get(StudyAttr.LEAD_HOST)
    return lead is None or lead == socket.gethostname()


def shown_url(url: str) -> str:
    """A storage URL as it may be printed: without its password."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL sqlalchemy can read: nothing to hide in it
        return url


def _duplicate_table(e: Exception) -> bool:
    orig = getattr(e, "orig", e)
    return getattr(orig, "sqlstate", None) == "42P07" or "already exists" in str(orig)


def make_storage(url: str) -> optuna.storages.RDBStorage:
    """The RDB storage at ``url`` with heartbeats on; a clear error when it cannot be used.

    SQLite waits up to two minutes for a lock instead of failing at once, which makes it
    safe for the workers of one machine (each writes a few rows per trial)."""
    import sqlalchemy.exc

    kwargs: dict = {}
    if url.startswith("sqlite"):
        kwargs = {"connect_args": {"timeout": 120}}
    elif url.startswith("postgresql"):
        kwargs = {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
    try:
        for attempt in range(5):
            try:
                with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    return PatientRDBStorage(
                        url, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_SECONDS,
                        grace_period=GRACE_SECONDS,
                        heartbeat_stale_trial_callback=_retry_stale)
            except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as e:
                # workers that start together on a new database race to create its tables
                # (a duplicate key, or PostgreSQL's "relation already exists", SQLSTATE
                # 42P07): the loser finds them made a moment later
                if attempt == 4 or not (isinstance(e, sqlalchemy.exc.IntegrityError)
                                        or _duplicate_table(e)):
                    raise
                time.sleep(0.5 + attempt)
            except sqlalchemy.exc.OperationalError as e:  # SQLite's form of the same race
                if attempt == 4 or "already exists" not in str(e):
                    raise
                time.sleep(0.5 + attempt)
    except ImportError as e:
        raise KdnasError(f"storage {shown_url(url)} needs a database driver that is not "
                         f"installed ({e}); for PostgreSQL: pip install 'kdnas[postgres]'"
                         ) from None
    except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError) as e:
        raise KdnasError(f"--storage {shown_url(url)} is not a database URL kdnas can use "
                         f"({type(e).__name__}); give e.g. sqlite:///runs/s/study.db or "
                         "postgresql://user:password@host/db") from None
    except sqlalchemy.exc.SQLAlchemyError as e:
        first = str(getattr(e, "orig", e)).strip().splitlines()[0]
        raise KdnasError(f"cannot use the storage {shown_url(url)}: {first}. Check that the "
                         "server runs and is reachable, and the database, user and password; "
                         "a SQLite file must be an Optuna study database") from None


def open_study(cfg: SearchConfig, *, create: bool,
               sampler: optuna.samplers.BaseSampler | None = None) -> optuna.Study:
    """Create or load the study named ``cfg.study`` in its storage."""
    if cfg.storage is None:
        if not create and not (cfg.study_dir / "study.db").exists():
            raise KdnasError(f"no study {cfg.study!r} in {cfg.workdir}/: run `kdnas search "
                             f"--study {cfg.study} …` first, or pass --workdir/--storage")
        cfg.study_dir.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = make_storage(cfg.storage_url)
    try:
        if create:
            directions = ["maximize"] + ["minimize"] * len(cfg.objectives)
            return optuna.create_study(storage=storage, study_name=cfg.study,
                                       directions=directions, sampler=sampler,
                                       load_if_exists=True)
        return optuna.load_study(study_name=cfg.study, storage=storage, sampler=sampler)
    except KeyError:
        raise KdnasError(f"storage {shown_url(cfg.storage_url)} holds no study named "
                         f"{cfg.study!r}") from None


def stored_config(study: optuna.Study) -> SearchConfig | None:
    d = study.user_attrs.get(StudyAttr.CONFIG)
    return SearchConfig.from_dict(d) if d else None


def peek_stored_config(cfg: SearchConfig) -> SearchConfig | None:
    """The settings an existing study ``cfg.study`` was made with; None if there is none."""
    if cfg.storage is None and not (cfg.study_dir / "study.db").exists():
        return None
    try:
        return stored_config(open_study(cfg, create=False))
    except KdnasError:
        return None


# settings that change what a trial means: a resumed study must keep them


def check_resume(study: optuna.Study, cfg: SearchConfig, fingerprint: dict) -> None:
    old = stored_config(study)
    if old is None:
        return
    changed = [k for k in fixed_settings() if getattr(old, k) != getattr(cfg, k)]
    old_fp = study.user_attrs.get(StudyAttr.FINGERPRINT, {})
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


def retry_trial(study: optuna.Study, t: optuna.trial.FrozenTrial, reason: str) -> bool:
    """Queue the candidate of the failed trial ``t`` to be trained again (same parameters,
    so the same spec), unless it has been retried MAX_RETRIES times already."""
    history = [*t.system_attrs.get("retry_history", []), t.number]
    if not t.params:
        return False  # died before its candidate was drawn: nothing to train again
    if len(history) > MAX_RETRIES:
        log.warning("trial %d (%s) failed; its candidate was tried %d times and is given up",
                    t.number, reason, len(history))
        return False
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.WAITING, params=t.params, distributions=t.distributions,
        user_attrs={TrialAttr.RETRY_OF: t.number, TrialAttr.RETRY_REASON: reason},
        system_attrs={"retry_history": history}))
    return True


def _retry_stale(study: optuna.Study, t: optuna.trial.FrozenTrial) -> None:
    """Optuna's callback for a trial failed because its heartbeat stopped."""
    retry_trial(study, t, f"its worker {t.user_attrs.get(TrialAttr.WORKER, '?')} stopped sending "
                          "heartbeats (killed, or its machine lost)")


def fail_stale_trials(study: optuna.Study) -> int:
    """Fail the RUNNING trials of dead workers and queue their candidates again: at once for
    dead processes of this host, after GRACE_SECONDS without a heartbeat for any other.
    Returns how many were found dead by pid."""
    host = socket.gethostname()
    storage = storage_of(study)
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        w = t.user_attrs.get(TrialAttr.WORKER, "")
        h, _, pid = w.rpartition(":")
        if h == host and pid.isdigit() and not _alive(int(pid)):
            reason = f"its worker {w} died (killed, or crashed) during the trial"
            try:
                storage.set_trial_user_attr(trial_id(t), "error", reason)
                if not storage.set_trial_state_values(trial_id(t), state=TrialState.FAIL):
                    continue
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # another worker got there first
            retry_trial(study, storage.get_trial(trial_id(t)), reason)
            n += 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    return n


class Heartbeat:
    """Records a trial's heartbeat every HEARTBEAT_SECONDS while its worker lives."""

    def __init__(self, study: optuna.Study, trial: optuna.Trial) -> None:
        self._store, self._id = storage_of(study), trial_id(trial)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while True:
            try:
                self._store.record_heartbeat(self._id)
            except Exception as e:  # a lost beat is retried; the trial goes on
                log.debug("heartbeat not recorded: %s", e)
            if self._stop.wait(HEARTBEAT_SECONDS):
                return

    def __enter__(self) -> Heartbeat:
        if getattr(self._store, "get_heartbeat_interval", lambda: None)():
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def trained_count(study: optuna.Study) -> int:
    """Candidates the study has trained: with a result, or that did not train (a failed
    training counts: it was trained once, and is never trained again)."""
    return sum(1 for t in study.get_trials(deepcopy=False,
                                           states=(TrialState.COMPLETE, TrialState.FAIL))
               if t.user_attrs.get(TrialAttr.TRAINED)
               or t.user_attrs.get(TrialAttr.TRAINING_FAILED))


def training_now(study: optuna.Study, before: int | None = None) -> list[int]:
    """Numbers of the RUNNING trials that train a candidate (any worker), optionally only
    those numbered below ``before``."""
    return [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.user_attrs.get(TrialAttr.TRAINING) and (before is None or t.number < before)]


def _state(t: optuna.trial.FrozenTrial) -> str:
    if t.state == TrialState.COMPLETE:
        if t.user_attrs.get(TrialAttr.DUPLICATE_OF) is not None:
            return Outcome.DUPLICATE
        if t.user_attrs.get(TrialAttr.REFERENCE):
            return Outcome.REFERENCE
        return Outcome.TRAINED if t.user_attrs.get(TrialAttr.TRAINED) else Outcome.INFEASIBLE
    if t.state == TrialState.FAIL and t.user_attrs.get(TrialAttr.TRAINING_FAILED):
        return Outcome.TRAINING_FAILED
    if t.state == TrialState.FAIL:
        return Outcome.INTERRUPTED if t.user_attrs.get(TrialAttr.INTERRUPTED) else Outcome.FAILED
    if t.state == TrialState.PRUNED and t.user_attrs.get(TrialAttr.SURPLUS):
        return Outcome.SURPLUS
    return t.state.name.lower()


def trial_record(t: optuna.trial.FrozenTrial) -> TrialRecord:
    a, A = t.user_attrs, TrialAttr
    return TrialRecord(
        number=t.number, state=_state(t), spec=a.get(A.SPEC), spec_id=a.get(A.SPEC_ID),
        cost=dict(a.get(A.COST, {})), budget_excess=t.constraints.get("budget"),
        val_accuracy=a.get(A.VAL_ACCURACY), train_seconds=a.get(A.TRAIN_SECONDS),
        estimate_seconds=a.get(A.ESTIMATE),
        kd=a.get(A.KD), feature_weight=a.get(A.FEATURE_WEIGHT), weights=a.get(A.WEIGHTS),
        curve=tuple(a.get(A.CURVE, ())), learning_curve=tuple(a.get(A.LEARNING_CURVE, ())),
        recipe=dict(a.get(A.RECIPE, {})),
        started=t.datetime_start.timestamp() if t.datetime_start else None,
        completed=t.datetime_complete.timestamp() if t.datetime_complete else None,
        values=tuple(t.values or ()), note=_note(a), time=dict(a.get(A.TIME, {})),
        signals=dict(a.get(A.SIGNALS, {})))


def _note(a: dict) -> str | None:
    parts = [a[TrialAttr.ERROR]] if a.get(TrialAttr.ERROR) else []
    if a.get(TrialAttr.RETRIED):
        parts.append(f"first training {a[TrialAttr.RETRIED]}; trained again with the "
                     "stabler recipe")
    if a.get(TrialAttr.REFERENCE):
        parts.append(f"reference: {a[TrialAttr.REFERENCE]}")
    if a.get(TrialAttr.RETRY_OF) is not None:
        parts.append(f"retry of trial {a['retry_of']}: {a.get('retry_reason', '')}")
    if a.get(TrialAttr.SURPLUS):
        parts.append(a[TrialAttr.SURPLUS])
    return "; ".join(parts) or None


def _with_rungs(t: TrialRecord, rungs: dict, first: int | None) -> TrialRecord:
    """A trained trial as its highest rung left it (``--rungs``): that rung's accuracy and
    weights, the brief accuracy and every rung's result beside them."""
    if first is None or not t.trained:
        return t
    mine = {int(k): v for k, v in rungs.get(str(t.number), {}).items() if "failed" not in v}
    if not mine:
        return dataclasses.replace(t, rung=first, brief_accuracy=t.val_accuracy)
    top = max(mine)
    return dataclasses.replace(t, rung=top, brief_accuracy=t.val_accuracy, rungs=mine,
                               val_accuracy=mine[top]["val_accuracy"],
                               weights=mine[top]["weights"])


def load_record(study: optuna.Study) -> StudyRecord:
    """The study as plain records, for reports and shipping."""
    attrs = study.user_attrs
    factors = (attrs.get(StudyAttr.CONFIG) or {}).get("rungs") or []
    first = factors[0] if len(factors) > 1 else None
    rungs = attrs.get(StudyAttr.RUNGS, {})
    return StudyRecord(name=study.study_name,
                       trials=tuple(_with_rungs(trial_record(t), rungs, first)
                                    for t in study.get_trials(deepcopy=False)),
                       references=dict(attrs.get(StudyAttr.REFERENCES, {})),
                       teacher_val_accuracy=attrs.get(StudyAttr.TEACHER_VAL_ACCURACY),
                       normalization=attrs.get(StudyAttr.NORMALIZATION),
                       hypervolume_reference=attrs.get(StudyAttr.HYPERVOLUME_REFERENCE),
                       num_classes=attrs.get(StudyAttr.NUM_CLASSES),
                       noise=attrs.get(StudyAttr.NOISE),
                       val_images=attrs.get(StudyAttr.VAL_IMAGES),
                       distilled=dict(attrs.get(StudyAttr.DISTILLED, {})),
                       exported=dict(attrs.get(StudyAttr.EXPORTED, {})))


def add_distilled(study: optuna.Study, info: dict) -> None:
    """Keep a full distillation's result (``kdnas distill``) in the study, by its name: the
    report reads it from the study's record."""
    study.set_user_attr(StudyAttr.DISTILLED, {**study.user_attrs.get(StudyAttr.DISTILLED, {}),
                                      info["name"]: info})


def add_exported(study: optuna.Study, info: dict) -> None:
    """Keep an export's result (``kdnas export``) in the study, by its folder: the report
    shows its fp32 and int8 figures beside the front."""
    study.set_user_attr(StudyAttr.EXPORTED, {**study.user_attrs.get(StudyAttr.EXPORTED, {}),
                                             info["out_dir"]: info})
