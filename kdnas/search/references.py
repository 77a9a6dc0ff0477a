"""Hand-designed reference students (``--references``), trained once per study with the brief
recipe: the bar a searched student must clear."""

from __future__ import annotations

from collections.abc import Callable

import optuna
import torch

from kdnas.core.settings import SearchConfig
from kdnas.distill import fit
from kdnas.search.prepare import measure, teacher_cache
from search_spaces import get_space, preset_spec

Event = Callable[[str, dict], None]


def train_references(study: optuna.Study, cfg: SearchConfig, teacher, data,
                     emit: Event) -> None:
    """Train the hand-designed students named in ``cfg.references`` once, with the study's
    brief recipe, and keep their results in the study (they are not search trials)."""
    done = dict(study.user_attrs.get("references", {}))
    for ref in cfg.references:
        if ref in done:
            continue
        spec = preset_spec(ref, cfg.space, in_channels=data.in_channels,
                           num_classes=data.num_classes, input_size=data.input_size)
        space = get_space(spec["space"])
        torch.manual_seed(cfg.seed)
        model = space.build(spec)
        cost = measure(cfg, model, data, latency=cfg.latency)
        tcfg = cfg.train_config(len(data.train_y))
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
