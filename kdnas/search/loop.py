"""The search loop: an Optuna multi-objective study over student specs.

Objectives: maximise validation accuracy, minimise MACs. The budget is an Optuna constraint
(``cost / limit - 1``): a candidate over budget is infeasible and never trained. ``--trials
N`` counts the *study's* trained candidates: the same command resumes the study (SQLite in its
folder by default), and several workers (``--workers``, or one process per machine on a shared
``--storage``) stop together at N. A trial whose worker dies or is interrupted is failed with
the reason and its candidate queued to be trained again."""

from __future__ import annotations

import dataclasses
import errno
import logging
import socket
import time
import warnings
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState
from torch import nn

from kdnas.core.attrs import Outcome, StudyAttr, TrialAttr
from kdnas.core.budget import Cost
from kdnas.core.errors import KdnasError
from kdnas.core.settings import AUTO_METHODS, FEATURE_WEIGHTS, SearchConfig
from kdnas.distill import evaluate
from kdnas.distill.candidate import TrainContext, init_seed, save_weights, train_candidate
from kdnas.optuna_internals import frozen, set_dashboard_constraint
from kdnas.search.events import (
    Duplicate,
    Event,
    Infeasible,
    StudyStart,
    TrialEnd,
    TrialStart,
    Waiting,
    step_events,
)
from kdnas.search.noise import measure_noise
from kdnas.search.costs import (
    estimate_step,
    measure,
    hypervolume_reference,
    smallest_cost,
    train_context,
    with_latency,
)
from kdnas.search.references import train_references
from kdnas.search.rungs import train_rungs
from kdnas.search.sampler import make_sampler
from kdnas.search.watchdog import TrialLimit
from kdnas.search.storage import (
    Heartbeat,
    is_lead_host,
    check_resume,
    fail_stale_trials,
    manifest,
    open_study,
    retry_trial,
    stored_config,
    trained_count,
    training_now,
    worker_id,
    write_manifest,
)
from search_spaces import get_space, spec_id

log = logging.getLogger(__name__)

MAX_CONSECUTIVE_FAILURES = 3
WAIT_SECONDS = 2.0  # how often a worker looks whether the others' last trials finished


# the step-time estimate (4 steps on a copy) is taken for trials of at least this many steps,
# where it costs at most 2% of the trial (a 40-step trial spent 9% of its time on it), or
# for every candidate when training time is an objective
ESTIMATE_MIN_STEPS = 200


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
        study.set_user_attr(StudyAttr.HYPERVOLUME_REFERENCE, hypervolume_reference(cfg, cheapest))
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
                outcome = _run_trial(study, trial, cfg, ctx, index=done + 1, emit=emit)
        except KeyboardInterrupt:
            _close_failed(study, trial, "interrupted (Ctrl-C)", interrupted=True)
            return True
        except Exception as e:  # a failed candidate must not lose the study
            counts["failures"] += 1
            reason = f"{type(e).__name__}: {e}"
            if isinstance(e, OSError) and e.errno == errno.ENOSPC:
                reason += (f" (free space where the study writes, {cfg.study_dir}, or write "
                           "no teacher cache: --no-teacher-cache or a lower --cache-limit)")
            if isinstance(e, (KdnasError, OSError)):  # the user's to fix: a message
                log.error("trial %d failed: %s", trial.number, reason)
            else:
                log.exception("trial %d failed", trial.number)
            _close_failed(study, trial, reason, retry=False)
            if counts["failures"] >= MAX_CONSECUTIVE_FAILURES:
                raise KdnasError(f"{counts['failures']} trials in a row failed, the last with "
                                 f"{reason}. The study keeps every finished trial; fix the "
                                 "cause and run the same command to go on") from e
            continue
        counts["failures"] = 0
        if outcome in counts:
            counts[outcome] += 1


def _close_failed(study: optuna.Study, trial: optuna.Trial, reason: str, *,
                  interrupted: bool = False, retry: bool = True) -> None:
    """Record ``trial`` as failed with ``reason`` (unless it was already told: an interrupt
    may come after the trial's result was stored) and queue its candidate again."""
    if frozen(study, trial).state.is_finished():
        return
    trial.set_user_attr(TrialAttr.ERROR, reason)
    if interrupted:
        trial.set_user_attr(TrialAttr.INTERRUPTED, True)
    study.tell(trial, state=TrialState.FAIL)
    if retry:
        retry_trial(study, frozen(study, trial), reason)


def _record_result(trial: optuna.Trial, tcfg, out, weights: str) -> None:
    """What a trained trial keeps besides its objectives."""
    A, result = TrialAttr, out.result
    for key, value in ((A.TRAINED, True), (A.VAL_ACCURACY, result.val_accuracy),
                       (A.TRAIN_SECONDS, result.seconds), (A.CURVE, result.curve),
                       (A.LEARNING_CURVE, result.points), (A.RECIPE, recipe(tcfg, result)),
                       (A.KD, tcfg.method), (A.FEATURE_WEIGHT, tcfg.weight),
                       (A.WEIGHTS, weights), (A.SIGNALS, out.signals)):
        trial.set_user_attr(key, value)


def recipe(tcfg, result) -> dict:
    """The brief training a trial got, as recorded with it."""
    return {"steps": result.steps, "images": result.images,
            "batch_size": tcfg.batch_size, "train_fraction": tcfg.train_fraction}


def _costs(cfg: SearchConfig, cost: Cost) -> list[float]:
    return [float(cost.value(c)) for c in cfg.cost_columns]


def _trained_twin(study: optuna.Study, key: str) -> optuna.trial.FrozenTrial | None:
    """A trial of the study that already trained the candidate with spec id ``key``."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.user_attrs.get(TrialAttr.TRAINED) and t.user_attrs.get(TrialAttr.SPEC_ID) == key:
            return t
    return None


def _reuse(study: optuna.Study, trial: optuna.Trial, twin: optuna.trial.FrozenTrial,
           emit: Event) -> Outcome:
    """Tell a repeated candidate the result its twin got: a spec is trained once a study."""
    trial.set_user_attr(TrialAttr.DUPLICATE_OF, twin.number)
    trial.set_user_attr(TrialAttr.TRAINED, False)
    for key in ("val_accuracy", "kd", "feature_weight", "recipe"):
        if key in twin.user_attrs:
            trial.set_user_attr(key, twin.user_attrs[key])
    study.tell(trial, list(twin.values))
    emit(Duplicate(trial.number, twin.number))
    return Outcome.DUPLICATE


def _running_twin(study: optuna.Study, trial: optuna.Trial, key: str) -> int | None:
    """An earlier trial of another worker that is training the candidate ``key``."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.number < trial.number and t.user_attrs.get(TrialAttr.SPEC_ID) == key:
            return t.number
    return None


def _surplus(study: optuna.Study, trial: optuna.Trial, why: str) -> Outcome:
    """Another worker took the last place, or this candidate, first: it is not trained here
    (a retried one is queued again for a later run)."""
    trial.set_user_attr(TrialAttr.TRAINING, False)
    trial.set_user_attr(TrialAttr.SURPLUS, why)
    study.tell(trial, state=TrialState.PRUNED)
    now = frozen(study, trial)
    if now.user_attrs.get(TrialAttr.RETRY_OF) is not None:
        retry_trial(study, now, "a retried candidate left for a later run")
    return Outcome.SURPLUS


def _propose(study: optuna.Study, trial: optuna.Trial, cfg: SearchConfig, data, tcfg
             ) -> tuple[dict, str, Cost, float, nn.Module]:
    """Sample the trial's candidate and count its cost; record both with the trial and the
    budget constraint. Returns the spec, its id, its cost, how far over budget it is and the
    module it counted (for the step-time estimate)."""
    budget = cfg.budget_value
    spec = get_space(cfg.space).sample(trial, in_channels=data.in_channels,
                                       num_classes=data.num_classes,
                                       input_size=data.input_size)
    key = spec_id(spec)
    latency = cfg.latency or budget.metric == "latency_ms"
    take = getattr(study.sampler, "take_built", None)
    counted = take(key) if take is not None else None  # the sampler built and counted it
    if counted is None:
        model = get_space(spec["space"]).build(spec)
        cost = measure(cfg, model, data, latency=latency)
    else:
        model, cost = counted
        if latency and cost.latency_ms is None:
            cost = with_latency(cfg, model, data, cost)
    if "train_step_ms" in cfg.cost_columns:  # an objective: every candidate is told it
        cost = estimate_step(cfg, tcfg, model, data, cost)
    excess = float(budget.excess(cost))
    trial.set_user_attr(TrialAttr.SPEC, spec)
    trial.set_user_attr(TrialAttr.SPEC_ID, key)
    trial.set_user_attr(TrialAttr.COST, cost.to_dict())
    trial.set_constraint("budget", excess)
    set_dashboard_constraint(study, trial, excess)
    return spec, key, cost, excess, model


def _infeasible(study: optuna.Study, trial: optuna.Trial, cfg: SearchConfig, spec: dict,
                cost: Cost, emit: Event) -> Outcome:
    """Over budget (or its MACs not countable): recorded, never trained."""
    refusal = cfg.budget_value.refusal(cost)
    trial.set_user_attr(TrialAttr.TRAINED, False)
    if refusal:
        trial.set_user_attr(TrialAttr.REFUSED, refusal)
    study.tell(trial, [0.0, *_costs(cfg, cost)])
    emit(Infeasible(trial.number, cost, spec, refusal or "over budget"))
    return Outcome.INFEASIBLE


def _not_here(study: optuna.Study, trial: optuna.Trial, cfg: SearchConfig, key: str,
              emit: Event) -> str | None:
    """Why this feasible candidate is not trained by this trial (a twin's result reused, or
    another worker got there first), after acting on it; None when it is to be trained."""
    twin = _trained_twin(study, key)
    if twin is not None:
        return _reuse(study, trial, twin, emit)
    trial.set_user_attr(TrialAttr.TRAINING, True)
    if trained_count(study) + len(training_now(study, before=trial.number)) >= cfg.trials:
        return _surplus(study, trial, "not trained: other workers reached the target first")
    rival = _running_twin(study, trial, key)
    if rival is not None:
        return _surplus(study, trial, f"not trained: the same candidate as trial {rival}, "
                                      "which another worker is training")
    return None


def _auto_methods(study: optuna.Study) -> tuple[str, ...]:
    """The methods ``--kd auto`` searches in this study: those it searched from its first trial
    (a study made before DKD, DIST, LS and RKD keeps its five, as Optuna refuses a categorical
    whose choices change), else every method of the table."""
    kept = study.user_attrs.get(StudyAttr.KD_AUTO_METHODS)
    if kept is None:
        kept = AUTO_METHODS
        for t in study.get_trials(deepcopy=False):
            if "kd" in t.distributions:
                kept = t.distributions["kd"].choices
                break
        study.set_user_attr(StudyAttr.KD_AUTO_METHODS, list(kept))
    return tuple(kept)


def _method(trial: optuna.Trial, cfg: SearchConfig, tcfg):
    """The trial's recipe: with ``kd = auto`` the distillation method and its weight are
    searched too."""
    if cfg.kd != "auto":
        return tcfg
    method = trial.suggest_categorical("kd", _auto_methods(trial.study))
    scale = trial.suggest_float("kd_weight_scale", 0.1, 10.0, log=True)
    return dataclasses.replace(tcfg, kd=method,
                               feature_weight=FEATURE_WEIGHTS.get(method, 0.0) * scale)


def _run_trial(study: optuna.Study, trial: optuna.Trial, cfg: SearchConfig, ctx: TrainContext,
               *, index: int, emit: Event) -> Outcome:
    """Sample, cost, gate and (if feasible and new) train one candidate; tell the study.
    Returns ``trained``, ``infeasible``, ``duplicate`` or ``surplus``."""
    t0 = time.perf_counter()
    data = ctx.data
    tcfg = cfg.train_config(len(data.train_y))
    trial.set_user_attr(TrialAttr.WORKER, worker_id())
    spec, key, cost, excess, model = _propose(study, trial, cfg, data, tcfg)
    propose_seconds = time.perf_counter() - t0
    if excess > 0:
        return _infeasible(study, trial, cfg, spec, cost, emit)
    skipped = _not_here(study, trial, cfg, key, emit)
    if skipped is not None:
        return skipped
    tcfg = _method(trial, cfg, tcfg)
    t_est = time.perf_counter()
    if cost.train_step_ms is None and tcfg.steps >= ESTIMATE_MIN_STEPS:
        cost = estimate_step(cfg, tcfg, model, data, cost)
        trial.set_user_attr(TrialAttr.COST, cost.to_dict())
    estimate_seconds = time.perf_counter() - t_est
    emit(TrialStart(trial.number, index, cfg.trials, cost, spec, tcfg.method,
                    None if cost.train_step_ms is None
                    else cost.train_step_ms * tcfg.steps / 1e3,
                    trial.user_attrs.get(TrialAttr.RETRY_OF)))
    estimate = None if cost.train_step_ms is None else cost.train_step_ms * tcfg.steps / 1e3
    with TrialLimit(cfg.trial_limit(estimate), lambda reason: _close_failed(
            study, trial, reason, retry=False)) as limit:
        report = step_events(emit)

        def progress(step: int, total: int, loss: float) -> None:
            report(step, total, loss)
            limit.check()
        out = train_candidate(ctx, spec, tcfg, init=init_seed(cfg.seed, trial.number),
                              progress=progress, signals=cfg.signals)
    path = cfg.study_dir / "trials" / str(trial.number) / "student.pt"
    save_weights(path, out)
    _record_result(trial, tcfg, out, path.relative_to(cfg.study_dir).as_posix())
    # where the trial's time went (seconds): the proposal (sampling, costs, latency), the
    # training's phases, the signals, and the rest (checks, storage, saving the weights)
    t_end = time.perf_counter()
    signal_seconds = sum(v["seconds"] for v in out.signals.values())
    trial.set_user_attr(TrialAttr.TIME, {
        "propose": round(propose_seconds, 3), "estimate": round(estimate_seconds, 3),
        **out.result.phases, "signals": round(signal_seconds, 3),
        "storage": round(t_end - t0 - propose_seconds - estimate_seconds - out.result.seconds
                         - signal_seconds, 3),
        "total": round(t_end - t0, 3)})
    study.tell(trial, [out.val_accuracy, *_costs(cfg, cost)])
    front = [t for t in study.best_trials if t.user_attrs.get(TrialAttr.TRAINED)]
    emit(TrialEnd(trial.number, index, cfg.trials, out.val_accuracy, out.result.seconds, cost,
                  len(front), max((t.values[0] for t in front), default=None)))
    return Outcome.TRAINED
