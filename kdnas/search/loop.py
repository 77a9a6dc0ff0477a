"""The search loop: an Optuna multi-objective study over student specs.

Objectives: maximise validation accuracy, minimise the costs of ``--objectives`` (MACs by
default). The hand-designed references are trained first (:mod:`.references`), then one
trial at a time (:func:`kdnas.search.trial.run_trial` owns a trial's life). The budget is an
Optuna constraint (``cost / limit - 1``): a candidate over budget is infeasible and never
trained. ``--trials N`` counts the *study's* trained candidates: the same command resumes
the study (SQLite in its folder by default), and several workers (``--workers``, or one
process per machine on a shared ``--storage``) stop together at N. A trial whose worker dies
or is interrupted is failed with the reason and its candidate queued to be trained again."""

from __future__ import annotations

import errno
import logging
import socket
import time
import warnings
from dataclasses import dataclass

import optuna

from kdnas.core.attrs import Outcome, StudyAttr, TrialAttr
from kdnas.core.budget import Cost
from kdnas.core.errors import KdnasError
from kdnas.core.settings import SearchConfig
from kdnas.distill import evaluate
from kdnas.distill.candidate import TrainContext
from kdnas.optuna_internals import frozen
from kdnas.search.costs import creation_reference, smallest_cost, train_context
from kdnas.search.events import Event, StudyStart, Waiting
from kdnas.search.noise import measure_noise
from kdnas.search.references import train_references
from kdnas.search.rungs import train_rungs
from kdnas.search.sampler import make_sampler
from kdnas.search.storage import (
    Heartbeat,
    check_resume,
    fail_stale_trials,
    is_lead_host,
    manifest,
    open_study,
    stored_config,
    trained_count,
    training_now,
    write_manifest,
)
from kdnas.search.trial import close_failed, run_trial

log = logging.getLogger(__name__)

MAX_CONSECUTIVE_FAILURES = 3
WAIT_SECONDS = 2.0  # how often a worker looks whether the others' last trials finished


@dataclass
class SearchOutcome:
    study: optuna.Study
    trained: int
    infeasible: int
    interrupted: bool = False
    duplicates: int = 0  # proposals of a candidate already trained: result reused


def _gate_space(cfg: SearchConfig, data) -> tuple[dict, Cost] | None:
    """Refuse, before any training, a budget that the space's cheapest candidate exceeds or
    cannot be held to; returns that candidate and its cost."""
    budget = cfg.budget_value
    cheapest = smallest_cost(cfg, data)
    if cheapest is not None and budget.refusal(cheapest[1]):
        raise KdnasError(f"the {cfg.space!r} space cannot be held to a MACs budget: "
                         f"{budget.refusal(cheapest[1])}. Use layers torch's flop counter "
                         "knows, or a params or latency budget (--budget 0.5Mparams, 5ms)")
    if cheapest is not None and not budget.fits(cheapest[1]):
        shown = budget.show(cheapest[1].value(budget.metric))
        raise KdnasError(f"budget {cfg.budget} is below the cheapest candidate of the "
                         f"{cfg.space!r} space for {tuple(data.input_shape)} inputs, which "
                         f"costs {shown}: raise --budget to at least that")
    return cheapest


def _open(cfg: SearchConfig, teacher, data, worker: int) -> tuple[optuna.Study, int]:
    """Create or resume the study, record what it is about, fail dead workers' trials.
    Returns the study and the number of trials failed that way."""
    cheapest = _gate_space(cfg, data)
    info = manifest(cfg, teacher, data)
    study = open_study(cfg, create=True)
    study.sampler = make_sampler(cfg, data, resumed_at=len(study.get_trials(deepcopy=False)),
                                 worker=worker)
    fingerprint = {"teacher_digest": teacher.digest, "data_digest": data.digest()}
    check_resume(study, cfg, fingerprint)
    if stored_config(study) is None:
        with warnings.catch_warnings():  # stable in practice; named for optuna-dashboard
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(["val_accuracy", *cfg.cost_columns])
        study.set_user_attr(StudyAttr.CONFIG, cfg.to_dict())
        study.set_user_attr(StudyAttr.LEAD_HOST, socket.gethostname())
        study.set_user_attr(StudyAttr.FINGERPRINT, fingerprint)
        study.set_user_attr(StudyAttr.NORMALIZATION,
                            {"mean": list(data.mean), "std": list(data.std)})
        study.set_user_attr(StudyAttr.TEACHER_VAL_ACCURACY, _teacher_accuracy(cfg, teacher, data))
        study.set_user_attr(StudyAttr.NUM_CLASSES, data.num_classes)
        study.set_user_attr(StudyAttr.VAL_IMAGES, len(data.val_y))  # each accuracy's sampling error
        study.set_user_attr(StudyAttr.HYPERVOLUME_REFERENCE, creation_reference(cfg, cheapest))
    if cfg.storage is None or cfg.study_dir.exists():
        write_manifest(cfg, info)
    stale = fail_stale_trials(study)
    if stale:
        log.info("marked %d interrupted trial(s) of a dead process as failed", stale)
    return study, stale


def _teacher_accuracy(cfg: SearchConfig, teacher, data) -> float:
    """The teacher's validation accuracy, kept in the study: as the caller measured it (the
    CLI, with its cache across runs), or measured here (library callers)."""
    measured = teacher.meta.get("val_accuracy_measured")
    if measured is not None:
        return float(measured)
    return evaluate(teacher.module, data, "val", channels_last=teacher.channels_last,
                    device=cfg.device)


def run_search(cfg: SearchConfig, teacher, data, *, on_event: Event | None = None,
               worker: int = 0) -> SearchOutcome:
    """Run (or resume) the study until it holds ``cfg.trials`` trained candidates.

    ``data`` must already carry the teacher's normalisation. ``on_event(event)`` receives
    the typed records of :mod:`kdnas.search.events` as they happen. ``worker`` > 0: one of
    several processes on the study (its own sampler seed; references and the noise check
    are left to worker 0).
    """
    emit = on_event or (lambda event: None)
    study, stale = _open(cfg, teacher, data, worker)
    ctx = train_context(cfg, teacher, data)
    lead = worker == 0 and is_lead_host(study)
    if lead:
        train_references(study, cfg, ctx, emit)
    other = None if is_lead_host(study) else study.user_attrs.get(StudyAttr.LEAD_HOST)
    emit(StudyStart(trained_count(study), cfg.trials, stale, other))
    counts = {Outcome.INFEASIBLE: 0, Outcome.DUPLICATE: 0, "failures": 0, "proposals": 0}
    interrupted = False
    try:
        interrupted = _loop(study, cfg, ctx, emit, counts)
    except KeyboardInterrupt:  # between trials, or while waiting for other workers
        interrupted = True
    if lead and not interrupted and trained_count(study) >= cfg.trials:
        try:  # the promotions up the rungs, then the noise check on the front they leave
            train_rungs(study, cfg, ctx, emit)
            if cfg.noise_check:
                measure_noise(study, cfg, ctx, emit)
        except KeyboardInterrupt:
            interrupted = True
    return SearchOutcome(study, trained_count(study), counts[Outcome.INFEASIBLE], interrupted,
                         counts[Outcome.DUPLICATE])


def _loop(study: optuna.Study, cfg: SearchConfig, ctx: TrainContext, emit: Event,
          counts: dict) -> bool:
    """Trials until the study holds ``cfg.trials`` trained candidates; True if interrupted."""
    waiting = False
    while True:
        fail_stale_trials(study)
        done = trained_count(study)
        if done >= cfg.trials:
            return False
        if done + len(training_now(study)) >= cfg.trials:
            # the last candidates are being trained by other workers: wait for their results
            # (a dead worker's trial is failed and queued again, and then trained here)
            if not waiting:
                waiting = True
                emit(Waiting(done, cfg.trials))
            time.sleep(WAIT_SECONDS)
            continue
        waiting = False
        if counts["proposals"] >= cfg.proposal_cap:
            log.warning("stopped after %d proposals: the sampler keeps proposing candidates "
                        "over budget", counts["proposals"])
            return False
        counts["proposals"] += 1
        with warnings.catch_warnings():  # Optuna expects heartbeats with optimize(); kdnas
            warnings.simplefilter("ignore", UserWarning)  # beats them itself (Heartbeat)
            trial = study.ask()
        try:
            with Heartbeat(study, trial):
                outcome = run_trial(study, trial, cfg, ctx, index=done + 1, emit=emit)
        except KeyboardInterrupt:
            close_failed(study, trial, "interrupted (Ctrl-C)", interrupted=True)
            return True
        except Exception as e:  # a failed candidate must not lose the study
            reason = f"{type(e).__name__}: {e}"
            if isinstance(e, OSError) and e.errno == errno.ENOSPC:
                reason += (f" (free space where the study writes, {cfg.study_dir}, or write "
                           "no teacher cache: --no-teacher-cache or a lower --cache-limit)")
            if isinstance(e, (KdnasError, OSError)):  # the user's to fix: a message
                log.error("trial %d failed: %s", trial.number, reason)
            else:
                log.exception("trial %d failed", trial.number)
            close_failed(study, trial, reason, retry=False)
            _failed_again(counts, reason, "the cause", e)
            continue
        if outcome == Outcome.TRAINING_FAILED:  # twice, the stabler recipe too: a recipe
            # that fails every candidate must stop the search as an error does
            _failed_again(counts, frozen(study, trial).user_attrs.get(TrialAttr.ERROR),
                          "the cause (a lower --lr, another --kd)")
            continue
        counts["failures"] = 0
        if outcome in counts:
            counts[outcome] += 1




def _failed_again(counts: dict, reason: str, fix: str, cause: Exception | None = None) -> None:
    """One more trial failed; the search stops with a message at
    :data:`MAX_CONSECUTIVE_FAILURES` in a row."""
    counts["failures"] += 1
    if counts["failures"] >= MAX_CONSECUTIVE_FAILURES:
        raise KdnasError(f"{counts['failures']} trials in a row failed, the last with "
                         f"{reason}. The study keeps every finished trial; fix {fix} and run "
                         "the same command to go on") from cause
