"""The noise guard: before a front is shown, train its knee again with another seed, so that
the report can say how much of the front is seed noise."""

from __future__ import annotations

import dataclasses

import optuna

from kdnas.core.attrs import StudyAttr
from kdnas.core.settings import SearchConfig
from kdnas.distill.candidate import TrainContext, climb, init_seed
from kdnas.core.errors import KdnasError
from kdnas.front import pick_trial
from kdnas.search.events import Event, NoiseEnd, NoiseStart, step_events
from kdnas.search.rungs import trial_recipe
from kdnas.search.storage import load_record


def measure_noise(study: optuna.Study, cfg: SearchConfig, ctx: TrainContext,
                  emit: Event) -> dict | None:
    """Train the front's knee again with seed ``cfg.seed + 1`` (another initialisation and
    data order) and keep both accuracies in the study as ``noise``. Done once per knee: a
    resumed study whose knee did not change keeps its measurement."""
    record = load_record(study)
    try:
        knee = pick_trial(record, "knee", cfg.cost_columns)
    except KdnasError:  # no trained trial within budget: no front, no knee
        return None
    old = study.user_attrs.get(StudyAttr.NOISE)
    if old and old.get("trial") == knee:
        return old
    t = record.trial(knee)
    seed = cfg.seed + 1
    tcfg = dataclasses.replace(trial_recipe(cfg, len(ctx.data.train_y), t), seed=seed)
    emit(NoiseStart(knee, seed))
    result = _train_like(cfg, ctx, t, tcfg, init_seed(seed, knee), emit)
    noise = {"trial": knee, "seeds": [cfg.seed, seed],
             "accuracies": [t.val_accuracy, result.val_accuracy],
             "spread": abs(result.val_accuracy - t.val_accuracy)}
    study.set_user_attr(StudyAttr.NOISE, noise)
    emit(NoiseEnd(**noise))
    return noise


def _train_like(cfg: SearchConfig, ctx: TrainContext, t, tcfg, init: int, emit: Event):
    """Train trial ``t``'s candidate again as it was trained: the brief recipe with ``tcfg``'s
    seed, then on up the rungs it reached (``--rungs``), each from the last one's weights.
    Its own seed's teacher outputs would be read by no other run: not cached."""
    ctx = dataclasses.replace(ctx, cache_root=None)
    factors = [1] + [f for f in cfg.rungs if 1 < f <= (t.rung or 1)]
    out = climb(ctx, t.spec, tcfg, init=init, factors=factors, folder=cfg.study_dir / "noise",
                progress=lambda factor: step_events(emit))
    return out.result
