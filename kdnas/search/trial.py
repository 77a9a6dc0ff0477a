"""One trial's life, from proposal to its end, in one place (as Optuna's ``_run_trial``):
:func:`run_trial` samples and costs the candidate, gates it on the budget, reuses a twin's
result or leaves it to the worker that has it, trains it (again with the stabler recipe if it
did not train) and tells the study how it ended: trained, infeasible, duplicate, surplus, did
not train, or failed (:func:`close_failed`: an error, an interruption, or the time limit,
which the watchdog reports here)."""

from __future__ import annotations

import dataclasses
import statistics
import time

import optuna
import torch
from optuna.trial import TrialState
from torch import nn

from kdnas.core.attrs import Outcome, StudyAttr, TrialAttr
from kdnas.core.budget import Cost
from kdnas.core.errors import TrainingDiverged
from kdnas.core.settings import AUTO_METHODS, FEATURE_WEIGHTS, SearchConfig
from kdnas.distill.candidate import TrainContext, init_seed, save_weights, train_candidate
from kdnas.front import collapsed, near_chance
from kdnas.optuna_internals import frozen, set_dashboard_constraint
from kdnas.search.costs import estimate_step, measure, with_latency
from kdnas.search.events import (
    Duplicate,
    Event,
    Infeasible,
    TrainingFailed,
    TrialEnd,
    TrialStart,
    step_events,
)
from kdnas.search.storage import retry_trial, trained_count, training_now, worker_id
from kdnas.search.watchdog import TrialLimit
from search_spaces import get_space, spec_id

# the step-time estimate (4 steps on a copy) is taken for trials of at least this many steps,
# where it costs at most 2% of the trial (a 40-step trial spent 9% of its time on it), or
# for every candidate when training time is an objective
ESTIMATE_MIN_STEPS = 200
# a brief training of fewer steps is not checked for failure (kdnas.front.collapsed): every
# candidate of a 12-step run sits at chance, which says the recipe is short, not the candidate
CHECK_MIN_STEPS = 100
# an estimate is scaled by the median of what this many of the process's last trained
# trials took against their own unscaled estimates
ESTIMATE_HISTORY = 5


# how each way a trial ends is told to the study: its values for the sampler where it has
# them (an infeasible one's accuracy is 0 and its constraint says why), pruned where another
# worker took its place, failed where it trained to no result
_STATES = {Outcome.TRAINED: TrialState.COMPLETE, Outcome.DUPLICATE: TrialState.COMPLETE,
           Outcome.INFEASIBLE: TrialState.COMPLETE, Outcome.SURPLUS: TrialState.PRUNED,
           Outcome.FAILED: TrialState.FAIL, Outcome.INTERRUPTED: TrialState.FAIL,
           Outcome.TRAINING_FAILED: TrialState.FAIL}


def _end(study: optuna.Study, trial: optuna.Trial, outcome: str,
         values: list[float] | None = None) -> None:
    """The one place a trial of the search is told to the study (Optuna's ``tell``)."""
    state = _STATES[outcome]
    if (values is not None) != (state == TrialState.COMPLETE):
        raise ValueError(f"a {outcome} trial is told {'with' if values else 'without'} values")
    study.tell(trial, values, state=state)


def close_failed(study: optuna.Study, trial: optuna.Trial, reason: str, *,
                  interrupted: bool = False, retry: bool = True) -> None:
    """Record ``trial`` as failed with ``reason`` (unless it was already told: an interrupt
    may come after the trial's result was stored) and queue its candidate again."""
    if frozen(study, trial).state.is_finished():
        return
    trial.set_user_attr(TrialAttr.ERROR, reason)
    if interrupted:
        trial.set_user_attr(TrialAttr.INTERRUPTED, True)
    _end(study, trial, Outcome.INTERRUPTED if interrupted else Outcome.FAILED)
    if retry:
        retry_trial(study, frozen(study, trial), reason)


def _estimate(study: optuna.Study, cost: Cost, tcfg) -> float | None:
    """The seconds this trial's training is expected to take: its student's step time
    (measured just now, on a copy) x its steps, scaled by what this process's last trained
    trials (at most ESTIMATE_HISTORY) took against the same product. The probe times the
    student alone; a trial also runs the teacher (or reads its cache), the learning curve and
    the final validation, and a machine that turned busy since slows all of it."""
    if cost.train_step_ms is None:
        return None
    raw = cost.train_step_ms * tcfg.steps / 1e3
    me, ratios = worker_id(), []
    for t in sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)),
                    key=lambda t: -t.number):
        a = t.user_attrs
        step_ms = (a.get(TrialAttr.COST) or {}).get("train_step_ms")
        steps = (a.get(TrialAttr.RECIPE) or {}).get("steps")
        if a.get(TrialAttr.WORKER) == me and a.get(TrialAttr.TRAIN_SECONDS) and step_ms \
                and steps:
            ratios.append(a[TrialAttr.TRAIN_SECONDS] / (step_ms * steps / 1e3))
            if len(ratios) == ESTIMATE_HISTORY:
                break
    return scaled_estimate(raw, ratios)


def scaled_estimate(raw: float, took: list[float]) -> float:
    """``raw`` (a step-time probe x steps) scaled by the median of ``took``: what earlier
    trials of the same process took against their own ``raw``."""
    return raw * (statistics.median(took) if took else 1.0)


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
            "batch_size": tcfg.batch_size, "train_fraction": tcfg.train_fraction,
            "threads": torch.get_num_threads()}


def _costs(cfg: SearchConfig, cost: Cost) -> list[float]:
    return [float(cost.value(c)) for c in cfg.cost_columns]


def _trained_twin(study: optuna.Study, key: str) -> optuna.trial.FrozenTrial | None:
    """A trial of the study that already trained the candidate with spec id ``key`` (a
    searched one, or a reference told to it)."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if (t.user_attrs.get(TrialAttr.TRAINED) or t.user_attrs.get(TrialAttr.REFERENCE)) \
                and t.user_attrs.get(TrialAttr.SPEC_ID) == key:
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
    _end(study, trial, Outcome.DUPLICATE, list(twin.values))
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
    _end(study, trial, Outcome.SURPLUS)
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
    latency = cfg.measures_latency
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
    _end(study, trial, Outcome.INFEASIBLE, [0.0, *_costs(cfg, cost)])
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


def did_not_train(study: optuna.Study, tcfg, data, accuracy: float,
                  losses: list[float]) -> str | None:
    """Why a brief training failed (:func:`kdnas.front.collapsed`), or None: it trained, the
    teacher itself is near chance, or the run was too short to tell a failed training from a
    short one (under :data:`CHECK_MIN_STEPS`)."""
    teacher_acc = study.user_attrs.get(StudyAttr.TEACHER_VAL_ACCURACY)
    if teacher_acc is not None and near_chance(teacher_acc, data.num_classes):
        return None
    if tcfg.total_steps(len(data.train_y)) < CHECK_MIN_STEPS:
        return None
    return collapsed(accuracy, data.num_classes, losses)


def _train(study: optuna.Study, trial: optuna.Trial, cfg: SearchConfig, ctx: TrainContext,
           spec: dict, tcfg, emit: Event, report, limit):
    """Train the trial's candidate; one that did not train (:func:`kdnas.front.collapsed`,
    while the teacher did) is trained once more with the stabler recipe
    (``TrainConfig.stabler``). Returns the outcome, the recipe it was trained
    with, why it failed (None: it trained) and why its first training failed (None: it did
    not)."""
    first = None
    for attempt, rcp in enumerate((tcfg, tcfg.stabler())):
        losses: list[float] = []

        def progress(step: int, total: int, loss: float, losses: list = losses) -> None:
            losses.append(loss)
            report(step, total, loss)
            limit.check()
        try:
            out = train_candidate(ctx, spec, rcp, init=init_seed(cfg.seed, trial.number),
                                  progress=progress, signals=cfg.signals)
            why = did_not_train(study, rcp, ctx.data, out.val_accuracy, losses)
        except TrainingDiverged as e:
            out, why = None, e.reason
        if why is None:
            return out, rcp, None, first
        emit(TrainingFailed(trial.number, why, again=attempt == 0))
        first = first or why
    return out, rcp, why, first


def _did_not_train(study: optuna.Study, trial: optuna.Trial, tcfg, out, reason: str,
                   first: str) -> Outcome:
    """A candidate that failed twice: failed with its reason (never on the front, never told
    to the sampler as an accuracy), counted as trained (never trained again)."""
    A = TrialAttr
    kept = [(A.TRAINING_FAILED, f"{first}; with the stabler recipe {reason}"),
            (A.ERROR, f"{first}; with the stabler recipe {reason}"),
            (A.TRAINED, False), (A.TRAINING, False), (A.KD, tcfg.method)]
    if out is not None:  # None: it diverged, no accuracy to keep
        kept += [(A.VAL_ACCURACY, out.val_accuracy), (A.TRAIN_SECONDS, out.result.seconds),
                 (A.RECIPE, recipe(tcfg, out.result))]
    for key, value in kept:
        trial.set_user_attr(key, value)
    _end(study, trial, Outcome.TRAINING_FAILED)
    return Outcome.TRAINING_FAILED


def run_trial(study: optuna.Study, trial: optuna.Trial, cfg: SearchConfig, ctx: TrainContext,
               *, index: int, emit: Event) -> Outcome:
    """Sample, cost, gate and (if feasible and new) train one candidate; tell the study.
    Returns ``trained``, ``infeasible``, ``duplicate``, ``surplus`` or ``did not train``."""
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
    estimate = _estimate(study, cost, tcfg)
    if estimate is not None:
        trial.set_user_attr(TrialAttr.ESTIMATE, round(estimate, 2))
    emit(TrialStart(trial.number, index, cfg.trials, cost, spec, tcfg.method, estimate,
                    trial.user_attrs.get(TrialAttr.RETRY_OF)))
    with TrialLimit(cfg.trial_limit(estimate), lambda reason: close_failed(
            study, trial, reason, retry=False)) as limit:
        report = step_events(emit)
        out, tcfg, failure, first = _train(study, trial, cfg, ctx, spec, tcfg, emit, report,
                                           limit)
    if failure is not None:
        return _did_not_train(study, trial, tcfg, out, failure, first)
    if first is not None:
        trial.set_user_attr(TrialAttr.RETRIED, first)
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
    _end(study, trial, Outcome.TRAINED, [out.val_accuracy, *_costs(cfg, cost)])
    front = [t for t in study.best_trials if t.user_attrs.get(TrialAttr.TRAINED)]
    emit(TrialEnd(trial.number, index, cfg.trials, out.val_accuracy, out.result.seconds, cost,
                  len(front), max((t.values[0] for t in front), default=None)))
    return Outcome.TRAINED
