"""The noise guard: before a front is shown, train its knee again with another seed, so that
the report can say how much of the front is seed noise."""

from __future__ import annotations

import dataclasses

import optuna

from kdnas.core.settings import SearchConfig
from kdnas.distill.candidate import TrainContext, init_seed, train_candidate
from kdnas.report import front_frame, trials_frame
from kdnas.search.events import Event, NoiseEnd, NoiseStart, step_events
from kdnas.search.storage import load_record


def measure_noise(study: optuna.Study, cfg: SearchConfig, ctx: TrainContext,
                  emit: Event) -> dict | None:
    """Train the front's knee again with seed ``cfg.seed + 1`` (another initialisation and
    data order) and keep both accuracies in the study as ``noise``. Done once per knee: a
    resumed study whose knee did not change keeps its measurement."""
    record = load_record(study)
    front = front_frame(trials_frame(record), cfg.cost_columns)
    if front.empty:
        return None
    knee = int(front.loc[front.knee.idxmax(), "trial"])
    old = study.user_attrs.get("noise")
    if old and old.get("trial") == knee:
        return old
    t = record.trial(knee)
    seed = cfg.seed + 1
    tcfg = dataclasses.replace(cfg.train_config(len(ctx.data.train_y)), seed=seed,
                               kd=t.kd or cfg.kd, feature_weight=t.feature_weight)
    emit(NoiseStart(knee, seed))
    # its own seed's teacher outputs would be read by no other run: not cached
    result = train_candidate(dataclasses.replace(ctx, cache_root=None), t.spec, tcfg,
                             init=init_seed(seed, knee), progress=step_events(emit)).result
    noise = {"trial": knee, "seeds": [cfg.seed, seed],
             "accuracies": [t.val_accuracy, result.val_accuracy],
             "spread": abs(result.val_accuracy - t.val_accuracy)}
    study.set_user_attr("noise", noise)
    emit(NoiseEnd(**noise))
    return noise
