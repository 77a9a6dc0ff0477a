"""What the search measures of its candidates before it trains them: the cost at the study's
setting, the space's cheapest candidate (the budget's floor), a candidate's training step
time, and what every candidate is trained with (the study's TrainContext and teacher
cache)."""

from __future__ import annotations

import dataclasses
import logging

from kdnas.core.budget import Cost
from kdnas.front import reference_at_creation
from kdnas.core.settings import SearchConfig, reads_features
from kdnas.cost import measure_cost, measure_latency
from kdnas.device import resolve
from kdnas.distill.candidate import TrainContext
from kdnas.distill.timing import time_step
from search_spaces import get_space

log = logging.getLogger(__name__)


def measure(cfg: SearchConfig, model, data, *, latency: bool) -> Cost:
    """A candidate's cost at the study's latency setting (latency only when asked)."""
    return measure_cost(model, data.input_shape, latency=latency,
                        latency_threads=cfg.latency_threads, latency_batch=cfg.latency_batch,
                        latency_device=resolve(cfg.latency_device) if latency else "cpu",
                        latency_runtime=cfg.latency_runtime)


def with_latency(cfg: SearchConfig, model, data, cost: Cost) -> Cost:
    """``cost`` (MACs and params already counted) with the latency measured."""
    p50, p90, setting = measure_latency(model, data.input_shape, batch=cfg.latency_batch,
                                        threads=cfg.latency_threads,
                                        device=resolve(cfg.latency_device),
                                        runtime=cfg.latency_runtime)
    return dataclasses.replace(cost, latency_ms=p50, latency_p90_ms=p90,
                               latency_setting=setting)


def estimate_step(cfg: SearchConfig, tcfg, model, data, cost: Cost) -> Cost:
    """``cost`` with the candidate's training step time (ms) measured at the recipe's batch
    on the training device: about 1% of a brief trial, and what its student time will be."""
    return dataclasses.replace(cost, train_step_ms=round(time_step(model, data.input_shape,
                                                                   tcfg), 3))


def smallest_cost(cfg: SearchConfig, data) -> tuple[dict, Cost] | None:
    """The cheapest candidate of the space and its cost (None if the space cannot say)."""
    space = get_space(cfg.space)
    shape = {"in_channels": data.in_channels, "num_classes": data.num_classes,
             "input_size": data.input_size}
    specs = space.smallest_each(**shape) if hasattr(space, "smallest_each") else \
        [space.smallest(**shape)]
    metric = cfg.budget_value.metric
    best = None
    for spec in specs:
        if spec is None:
            return None
        model = space.build(spec)
        cost = measure(cfg, model, data, latency=cfg.measures_latency)
        if "train_step_ms" in cfg.cost_columns:
            cost = estimate_step(cfg, cfg.train_config(len(data.train_y)), model, data, cost)
        if best is None or cost.value(metric) < best[1].value(metric):
            best = spec, cost
    return best


def train_context(cfg: SearchConfig, teacher, data) -> TrainContext:
    """What the study's candidates are trained with: its teacher and data, and its teacher
    cache folder (none with ``--no-teacher-cache`` or ``--kd none``)."""
    cached = cfg.teacher_cache and cfg.kd != "none"
    return TrainContext(teacher, data, cfg.study_dir / "teacher_cache" if cached else None,
                        None if cfg.cache_limit_gb == "auto" else int(cfg.cache_limit_gb * 1e9),
                        cache_features=reads_features(cfg.kd), family_lr=True)


def creation_reference(cfg: SearchConfig, cheapest: tuple[dict, Cost] | None
                          ) -> dict[str, float]:
    """The study's hypervolume reference, fixed at creation from its cheapest candidate
    (:func:`kdnas.front.reference_at_creation`)."""
    budget = cfg.budget_value
    return reference_at_creation(budget, cfg.cost_columns, None if cheapest is None else {
        c: cheapest[1].value(c) for c in {*cfg.cost_columns, budget.metric}})
