"""The search loop: an Optuna multi-objective study over student specs.

Objectives: maximise validation accuracy, minimise MACs. The budget is an Optuna constraint
(``trial.set_constraint("budget", cost / limit - 1)``): a candidate over budget is recorded as
infeasible and never trained. ``--trials N`` counts *trained* candidates; running the same
command again resumes the study in its storage (SQLite in the study folder by default), and
several workers may share one storage.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import platform
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import optuna
import torch
from optuna.trial import TrialState

from kdnas.config import SearchConfig
from kdnas.cost import Cost, fmt_count, measure_cost
from kdnas.distill import FEATURE_WEIGHTS, TeacherCache, fit
from kdnas.errors import KdnasError
from kdnas.sampler import FeasibleSampler
from search_spaces import get_space, spec_id

log = logging.getLogger(__name__)

Event = Callable[[str, dict], None]
MAX_CONSECUTIVE_FAILURES = 3


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


def _measure(cfg: SearchConfig, model, data, *, latency: bool) -> Cost:
    """A candidate's cost at the study's latency setting (latency only when asked)."""
    return measure_cost(model, data.input_shape, latency=latency,
                        latency_threads=cfg.latency_threads, latency_batch=cfg.latency_batch)


def make_sampler(cfg: SearchConfig, data, *, resumed_at: int = 0
                 ) -> optuna.samplers.BaseSampler:
    """Seeded multi-objective TPE; budget-aware when the space declares its distributions.

    ``resumed_at`` (trials already in the study) shifts the seed, so that a resumed run draws
    new candidates instead of replaying the first run's, and a fresh run stays reproducible.
    """
    seed = cfg.seed + 7919 * resumed_at
    n_startup = min(10, max(3, cfg.trials // 3))
    tpe = optuna.samplers.TPESampler(seed=seed, multivariate=True,
                                     n_startup_trials=n_startup)
    space = get_space(cfg.space)
    if not hasattr(space, "distributions"):
        return tpe
    budget = cfg.budget_obj()
    cache: dict[str, bool] = {}

    def fits(params: dict) -> bool:
        spec = space.sample(optuna.trial.FixedTrial(params), in_channels=data.in_channels,
                            num_classes=data.num_classes, input_size=data.input_size)
        key = spec_id(spec)
        if key not in cache:
            cost = _measure(cfg, space.build(spec), data, latency=budget.metric == "latency_ms")
            cache[key] = budget.fits(cost)
        return cache[key]

    return FeasibleSampler(tpe, space.distributions(), fits, n_startup_trials=n_startup,
                           seed=seed)


def stored_config(study: optuna.Study) -> SearchConfig | None:
    d = study.user_attrs.get("config")
    return SearchConfig.from_dict(d) if d else None


# settings that change what a trial means: a resumed study must keep them
_FIXED = ("budget", "space", "epochs", "train_fraction", "batch_size", "lr", "kd",
          "temperature", "kd_alpha", "feature_weight", "val_fraction", "split_seed", "seed",
          "teacher_layers", "normalize", "objectives")


def _check_resume(study: optuna.Study, cfg: SearchConfig, fingerprint: dict) -> None:
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
    import fvcore
    import numpy
    import torchvision

    from kdnas import __version__

    return {
        "kdnas": __version__, "python": platform.python_version(), "torch": torch.__version__,
        "torchvision": torchvision.__version__, "optuna": optuna.__version__,
        "fvcore": getattr(fvcore, "__version__", "?"), "numpy": numpy.__version__,
        "platform": platform.platform(), "seed": cfg.seed, "split_seed": cfg.split_seed,
        "data": data.spec, "data_digest": data.digest(), "teacher": teacher.source,
        "teacher_digest": teacher.digest, "command": " ".join(sys.argv),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "config": cfg.to_dict(),
    }


def _write_manifest(cfg: SearchConfig, info: dict) -> None:
    path = cfg.study_dir / "manifest.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        old = json.loads(path.read_text())
        old.setdefault("resumed", []).append({"command": info["command"],
                                              "at": info["created"]})
        info = old
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(info, indent=2))
    tmp.replace(path)


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


def smallest_cost(cfg: SearchConfig, data) -> tuple[dict, Cost] | None:
    """The cheapest candidate of the space and its cost (None if the space cannot say)."""
    space = get_space(cfg.space)
    spec = space.smallest(in_channels=data.in_channels, num_classes=data.num_classes,
                          input_size=data.input_size)
    if spec is None:
        return None
    model = space.build(spec)
    return spec, _measure(cfg, model, data, latency=cfg.budget_obj().metric == "latency_ms")


def prepare(cfg: SearchConfig) -> tuple[SearchConfig, object, object, list[str]]:
    """Load the teacher and the data for a study, and check them against each other.

    The data is fed with the teacher's normalisation (its checkpoint's, ``cfg.normalize``,
    or else the data's own statistics), and ``cfg`` gains the data spec recorded in a kdnas
    checkpoint and the validation fraction the teacher was trained without. Returns the
    completed config, teacher, data and notices for the user.
    """
    from kdnas.data import load_data, parse_normalize
    from kdnas.teacher import attach_to_data, load_teacher

    if cfg.teacher is None:
        raise KdnasError("--teacher is needed: the path of a teacher checkpoint (make one "
                         "with `kdnas teacher train`, or try `kdnas demo`)")
    notes: list[str] = []
    teacher = load_teacher(cfg.teacher, arch=cfg.teacher_arch, num_classes=cfg.num_classes,
                           trust_pickle=cfg.trust_pickle, layers=list(cfg.teacher_layers))
    if cfg.data is None:
        if not teacher.data:
            raise KdnasError("--data is needed: this teacher file records no data set (e.g. "
                             "--data cifar10:/data/cifar10)")
        cfg = dataclasses.replace(cfg, data=teacher.data)
        notes.append(f"data: {cfg.data} (recorded in the teacher checkpoint)")
    if cfg.val_fraction is None:  # carve the split the teacher was trained without
        split = teacher.meta.get("split") or {}
        cfg = dataclasses.replace(cfg, val_fraction=split.get("val_fraction") or 0.1)
    data = load_data(cfg.data, val_fraction=cfg.val_fraction, seed=cfg.split_seed)
    if cfg.normalize:
        data = data.with_normalization(*parse_normalize(cfg.normalize, data.in_channels))
    elif teacher.mean is not None:
        data = data.with_normalization(teacher.mean, teacher.std)
    else:
        notes.append("normalising inputs with the data's own mean and std; if the teacher was "
                     "trained otherwise, say so with --normalize (e.g. imagenet)")
    notes += attach_to_data(teacher, data)
    return cfg, teacher, data, notes


@dataclass
class SearchOutcome:
    study: optuna.Study
    trained: int
    infeasible: int
    interrupted: bool = False


def run_search(cfg: SearchConfig, teacher, data, *, on_event: Event | None = None
               ) -> SearchOutcome:
    """Run (or resume) the study until ``cfg.trials`` candidates have been trained.

    ``data`` must already carry the teacher's normalisation. ``on_event(kind, info)`` receives
    ``study_start``, ``trial_start``, ``step``, ``trial_end`` and ``infeasible`` events.
    """
    emit = on_event or (lambda kind, info: None)
    budget = cfg.budget_obj()

    cheapest = smallest_cost(cfg, data)
    if cheapest is not None and not budget.fits(cheapest[1]):
        cost0 = cheapest[1]
        value = cost0.value(budget.metric)
        shown = {"macs": f"{fmt_count(value)} MACs ({fmt_count(2 * value)} FLOPs)",
                 "params": f"{fmt_count(value)} params",
                 "latency_ms": f"{value:.3g} ms"}[budget.metric]
        raise KdnasError(f"budget {cfg.budget} is below the cheapest candidate of the "
                         f"{cfg.space!r} space for {tuple(data.input_shape)} inputs, which "
                         f"costs {shown}: raise --budget to at least that")

    info = manifest(cfg, teacher, data)
    study = open_study(cfg, create=True)
    study.sampler = make_sampler(cfg, data, resumed_at=len(study.get_trials(deepcopy=False)))
    fingerprint = {"teacher_digest": teacher.digest, "data_digest": data.digest()}
    _check_resume(study, cfg, fingerprint)
    if stored_config(study) is None:
        study.set_user_attr("config", cfg.to_dict())
        study.set_user_attr("fingerprint", fingerprint)
        study.set_user_attr("normalization", {"mean": list(data.mean), "std": list(data.std)})
        study.set_user_attr("teacher_val_accuracy", teacher.meta.get("val_accuracy_measured"))
    if cfg.storage is None or cfg.study_dir.exists():
        _write_manifest(cfg, info)
    stale = fail_stale_trials(study)
    if stale:
        log.info("marked %d interrupted trial(s) of a dead process as failed", stale)

    train_references(study, cfg, teacher, data, emit)
    done = trained_count(study)
    emit("study_start", {"trained": done, "target": cfg.trials, "stale": stale})
    proposals = infeasible = failures = 0
    interrupted = False
    while done < cfg.trials:
        if proposals >= cfg.proposal_cap:
            log.warning("stopped after %d proposals: the sampler keeps proposing candidates "
                        "over budget", proposals)
            break
        proposals += 1
        trial = study.ask()
        try:
            trained = _run_trial(study, trial, cfg, teacher, data, index=done + 1, emit=emit)
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            study.tell(trial, state=TrialState.FAIL)
            interrupted = True
            break
        except Exception as e:  # a failed candidate must not lose the study
            failures += 1
            log.exception("trial %d failed", trial.number)
            trial.set_user_attr("error", f"{type(e).__name__}: {e}")
            study.tell(trial, state=TrialState.FAIL)
            if failures >= MAX_CONSECUTIVE_FAILURES:
                raise
            continue
        failures = 0
        if trained:
            done += 1
        else:
            infeasible += 1
    return SearchOutcome(study, trained_count(study), infeasible, interrupted)


AUTO_METHODS = ("logit", "fitnets", "at", "sp", "pkt")


def _costs(cfg: SearchConfig, cost: Cost) -> list[float]:
    return [float(cost.value(c)) for c in cfg.cost_columns]


def teacher_cache(cfg: SearchConfig, teacher, data) -> TeacherCache | None:
    """The study's cache of teacher outputs, keyed by everything that changes them."""
    if not cfg.teacher_cache or cfg.kd == "none":
        return None
    key = json.dumps([teacher.digest, data.digest(), data.mean, data.std, data.pad, data.flip,
                      cfg.train_fraction, cfg.seed, cfg.batch_size, cfg.epochs,
                      [t.module for t in teacher.taps]])
    return TeacherCache(cfg.study_dir / "teacher_cache",
                        hashlib.sha1(key.encode()).hexdigest()[:16])


def train_references(study: optuna.Study, cfg: SearchConfig, teacher, data,
                     emit: Event) -> None:
    """Train the hand-designed students named in ``cfg.references`` once, with the study's
    brief recipe, and keep their results in the study (they are not search trials)."""
    done = dict(study.user_attrs.get("references", {}))
    for ref in cfg.references:
        if ref in done:
            continue
        space_name, _, preset = ref.rpartition(":")
        space = get_space(space_name or cfg.space)
        if not hasattr(space, "preset"):
            raise KdnasError(f"reference {ref!r}: space {space.name!r} has no presets")
        spec = space.preset(preset, in_channels=data.in_channels, num_classes=data.num_classes,
                            input_size=data.input_size)
        torch.manual_seed(cfg.seed)
        model = space.build(spec)
        cost = _measure(cfg, model, data, latency=cfg.latency)
        tcfg = cfg.train_config()
        emit("reference_start", {"name": ref, "cost": cost, "spec": spec})
        result = fit(model, data, tcfg, teacher=teacher,
                     student_taps=space.taps(spec),
                     cache=teacher_cache(cfg, teacher, data),
                     progress=lambda s, n, loss: emit("step", {"step": s, "total": n,
                                                               "loss": loss}))
        done[ref] = {"spec": spec, "cost": cost.to_dict(), "val_accuracy": result.val_accuracy,
                     "train_seconds": result.seconds, "kd": tcfg.method,
                     "within_budget": cfg.budget_obj().fits(cost)}
        study.set_user_attr("references", done)
        emit("reference_end", {"name": ref, "accuracy": result.val_accuracy, "cost": cost})


def _run_trial(study: optuna.Study, trial: optuna.Trial, cfg: SearchConfig, teacher, data, *,
               index: int, emit: Event) -> bool:
    """Sample, cost, gate and (if feasible) train one candidate; tell the study. True if
    trained."""
    budget = cfg.budget_obj()
    space = get_space(cfg.space)
    tcfg = cfg.train_config()
    trial.set_user_attr("worker", worker_id())
    spec = space.sample(trial, in_channels=data.in_channels, num_classes=data.num_classes,
                        input_size=data.input_size)
    torch.manual_seed(cfg.seed * 100003 + trial.number)
    model = space.build(spec)
    cost = _measure(cfg, model, data, latency=cfg.latency or budget.metric == "latency_ms")
    excess = budget.excess(cost)
    trial.set_user_attr("spec", spec)
    trial.set_user_attr("spec_id", spec_id(spec))
    trial.set_user_attr("cost", cost.to_dict())
    trial.set_constraint("budget", float(excess))
    if excess > 0:  # over budget: recorded, never trained
        trial.set_user_attr("trained", False)
        study.tell(trial, [0.0, *_costs(cfg, cost)])
        emit("infeasible", {"trial": trial.number, "cost": cost, "spec": spec})
        return False

    if cfg.kd == "auto":  # the distillation method and its weight are searched too
        method = trial.suggest_categorical("kd", AUTO_METHODS)
        scale = trial.suggest_float("kd_weight_scale", 0.1, 10.0, log=True)
        tcfg = dataclasses.replace(tcfg, kd=method,
                                   feature_weight=FEATURE_WEIGHTS.get(method, 0.0) * scale)
    emit("trial_start", {"trial": trial.number, "index": index, "target": cfg.trials,
                         "cost": cost, "spec": spec, "kd": tcfg.method})
    result = fit(model, data, tcfg, teacher=teacher, student_taps=space.taps(spec),
                 cache=teacher_cache(cfg, teacher, data),
                 progress=lambda s, n, loss: emit("step", {"step": s, "total": n, "loss": loss}))
    path = cfg.study_dir / "trials" / str(trial.number) / "student.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"spec": spec, "state_dict": {k: v.contiguous()
                                             for k, v in model.state_dict().items()}}, path)
    trial.set_user_attr("trained", True)
    trial.set_user_attr("val_accuracy", result.val_accuracy)
    trial.set_user_attr("train_seconds", result.seconds)
    trial.set_user_attr("curve", result.curve)
    trial.set_user_attr("kd", tcfg.method)
    trial.set_user_attr("feature_weight", tcfg.weight)
    trial.set_user_attr("weights", str(path))
    study.tell(trial, [result.val_accuracy, *_costs(cfg, cost)])
    emit("trial_end", {"trial": trial.number, "index": index, "target": cfg.trials,
                       "accuracy": result.val_accuracy, "seconds": result.seconds,
                       "cost": cost, "study": study})
    return True
