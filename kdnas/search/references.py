"""Hand-designed reference students, the search's starting line: trained once per study with
the brief recipe, entered into the study as its first told trials (where the space can draw
them) so that the sampler starts where hand design ends, and held against the best searched
student at the end (:func:`kdnas.front.reference_verdict`).

``--references auto`` (the default) takes the presets that fit the budget: the largest of each
family of the study's space that fits, at most :data:`MAX_AUTO`; ``none`` takes none; names
(``resnet20,mobilenet:mobilenetv2_half``) take those."""

from __future__ import annotations

import logging

import optuna
from optuna.trial import TrialState

from kdnas.core.attrs import StudyAttr, TrialAttr
from kdnas.core.budget import Cost
from kdnas.core.settings import SearchConfig
from kdnas.cost import macs_lower_bound
from kdnas.optuna_internals import constraint_attrs
from kdnas.distill.candidate import TrainContext, train_candidate
from kdnas.search.events import Event, ReferenceEnd, ReferenceStart, step_events
from kdnas.search.costs import measure
from kdnas.search.trial import did_not_train
from search_spaces import get_space, preset_spec, spec_id

log = logging.getLogger(__name__)

MAX_AUTO = 3


def chosen_references(cfg: SearchConfig, data) -> list[tuple[str, dict, Cost]]:
    """The study's references: name, spec and cost of each."""
    names = cfg.references
    if names in ((), ("none",)):
        return []
    shape = dict(in_channels=data.in_channels, num_classes=data.num_classes,
                 input_size=data.input_size)
    if names != ("auto",):
        out = []
        for ref in names:
            spec = preset_spec(ref, cfg.space, **shape)
            out.append((ref, spec, measure(cfg, get_space(spec["space"]).build(spec), data,
                                           latency=cfg.latency)))
        return out
    space = get_space(cfg.space)
    budget = cfg.budget_value
    best, cheapest = [], None
    for member in (getattr(space, "members", None) or {space.name: space}).values():
        fitting = []
        for name in getattr(member, "presets", {}):
            spec = member.preset(name, **shape)
            model = member.build(spec)
            if budget.metric == "macs" and (low := macs_lower_bound(
                    model, data.input_shape)) > budget.limit:
                cheapest = min(cheapest or (low, name), (low, name))
                continue
            cost = measure(cfg, model, data, latency=cfg.latency or
                           budget.metric == "latency_ms")
            if budget.fits(cost):
                fitting.append((cost.value(budget.metric), name, spec, cost))
        if fitting:
            _, name, spec, cost = max(fitting, key=lambda f: f[0])
            best.append((cost.value(budget.metric), name, spec, cost))
    best.sort(key=lambda b: -b[0])
    if not best:
        log.info("references: no hand-designed preset of the %s space fits %s%s, so the "
                 "search has no starting line to compare with", cfg.space, cfg.budget,
                 "" if cheapest is None else
                 f" (the cheapest, {cheapest[1]}, costs {cheapest[0] / 1e6:.2f}M MACs)")
    return [(name, spec, cost) for _, name, spec, cost in best[:MAX_AUTO]]


def train_references(study: optuna.Study, cfg: SearchConfig, ctx: TrainContext,
                     emit: Event) -> None:
    """Train the study's references once, with the study's brief recipe; keep their results
    in the study and tell it each one its space can draw, as a finished trial."""
    done = dict(study.user_attrs.get(StudyAttr.REFERENCES, {}))
    data = ctx.data
    told = {t.user_attrs.get(TrialAttr.REFERENCE) for t in study.get_trials(deepcopy=False)}
    for ref, spec, cost in chosen_references(cfg, data):
        if ref not in done:
            tcfg = cfg.train_config(len(data.train_y))
            emit(ReferenceStart(ref, cost, spec))
            losses: list[float] = []
            report = step_events(emit)

            def progress(step: int, total: int, loss: float, losses: list = losses,
                         report=report) -> None:
                losses.append(loss)
                report(step, total, loss)
            out = train_candidate(ctx, spec, tcfg, init=cfg.seed, progress=progress)
            done[ref] = {"spec": spec, "cost": cost.to_dict(), "val_accuracy": out.val_accuracy,
                         "train_seconds": out.result.seconds, "kd": tcfg.method,
                         "within_budget": cfg.budget_value.fits(cost)}
            why = did_not_train(study, tcfg, data, out.val_accuracy, losses)
            if why is not None:  # no starting line: kept with its reason, told to no one
                done[ref]["did_not_train"] = why
            study.set_user_attr(StudyAttr.REFERENCES, done)
            emit(ReferenceEnd(ref, out.val_accuracy, cost))
        if ref not in told and done[ref]["within_budget"] and "did_not_train" not in done[ref]:
            _add_reference(study, cfg, ref, spec, cost, done[ref], data.input_size)


def _add_reference(study: optuna.Study, cfg: SearchConfig, name: str, spec: dict, cost: Cost,
          result: dict, input_size: int) -> None:
    """Add the reference to the study as a finished trial with its accuracy and costs, so
    that the sampler learns from it (where the space can draw it; else the report alone
    shows it)."""
    space = get_space(cfg.space)
    params_of = getattr(space, "params_of", None)
    params = params_of(spec, input_size) if params_of is not None else None
    if params is None:
        log.info("reference %s is outside the %s space's grid: shown in the report, not told "
                 "to the sampler", name, cfg.space)
        return
    dists = {k: d for k, d in space.distributions().items() if k in params}
    excess = float(cfg.budget_value.excess(cost))
    trial = optuna.trial.create_trial(
        state=TrialState.COMPLETE, params=params, distributions=dists,
        values=[result["val_accuracy"], *(float(cost.value(c)) for c in cfg.cost_columns)],
        user_attrs={TrialAttr.REFERENCE: name, TrialAttr.SPEC: spec,
                    TrialAttr.SPEC_ID: spec_id(spec), TrialAttr.COST: cost.to_dict(),
                    TrialAttr.VAL_ACCURACY: result["val_accuracy"],
                    TrialAttr.TRAIN_SECONDS: result["train_seconds"],
                    TrialAttr.KD: result["kd"], TrialAttr.TRAINED: False},
        system_attrs=constraint_attrs("budget", excess))
    study.add_trial(trial)
