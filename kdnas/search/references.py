"""Hand-designed reference students (``--references``), trained once per study with the brief
recipe: the bar a searched student must clear."""

from __future__ import annotations

import optuna

from kdnas.core.attrs import StudyAttr
from kdnas.core.settings import SearchConfig
from kdnas.distill.candidate import TrainContext, train_candidate
from kdnas.search.events import Event, ReferenceEnd, ReferenceStart, step_events
from kdnas.search.costs import measure
from search_spaces import get_space, preset_spec


def train_references(study: optuna.Study, cfg: SearchConfig, ctx: TrainContext,
                     emit: Event) -> None:
    """Train the hand-designed students named in ``cfg.references`` once, with the study's
    brief recipe, and keep their results in the study (they are not search trials)."""
    done = dict(study.user_attrs.get(StudyAttr.REFERENCES, {}))
    data = ctx.data
    for ref in cfg.references:
        if ref in done:
            continue
        spec = preset_spec(ref, cfg.space, in_channels=data.in_channels,
                           num_classes=data.num_classes, input_size=data.input_size)
        cost = measure(cfg, get_space(spec["space"]).build(spec), data, latency=cfg.latency)
        tcfg = cfg.train_config(len(data.train_y))
        emit(ReferenceStart(ref, cost, spec))
        out = train_candidate(ctx, spec, tcfg, init=cfg.seed, progress=step_events(emit))
        done[ref] = {"spec": spec, "cost": cost.to_dict(), "val_accuracy": out.val_accuracy,
                     "train_seconds": out.result.seconds, "kd": tcfg.method,
                     "within_budget": cfg.budget_value.fits(cost)}
        study.set_user_attr(StudyAttr.REFERENCES, done)
        emit(ReferenceEnd(ref, out.val_accuracy, cost))
