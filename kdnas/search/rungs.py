"""Multi-fidelity promotion (``--rungs 1,4,8``): decisions at the fidelity where they hold.

When the study holds its ``--trials`` candidates, each trained with the brief recipe (rung
1x), the best of each cost band (:func:`kdnas.search.promotion.promote`: Pareto rank over
accuracy at the rung and cost, ``1 / promote_eta`` of the band, at least one per family at
the first rung) are trained on from their own weights to the next rung's steps in all
(:func:`kdnas.distill.candidate.train_on`), and so on up the rungs. Each result is kept in
the study (``rungs``: trial -> rung -> accuracy, steps, seconds, weights) as soon as it is
trained, so an interrupted promotion is trained again by the next run and a finished one never
is; the choices depend only on recorded accuracies, so a resumed study makes the same ones.
Promotions run on worker 0, as the references and the noise check do: one claim per promotion.
"""

from __future__ import annotations

import dataclasses
import time

import optuna

from kdnas.core.attrs import StudyAttr
from kdnas.core.settings import SearchConfig
from kdnas.distill.candidate import TrainContext, init_seed, rung_weights, save_weights, train_on
from kdnas.search.events import (
    Event,
    PromotionEnd,
    PromotionFailed,
    PromotionStart,
    step_events,
)
from kdnas.search.promotion import RungResult, promote
from kdnas.search.storage import load_record

COST_BANDS = 3


def trial_recipe(cfg: SearchConfig, n_train: int, t):
    """The brief recipe a trial was trained with (its own method under ``--kd auto``)."""
    return dataclasses.replace(cfg.train_config(n_train), kd=t.kd or cfg.kd,
                               feature_weight=t.feature_weight)


def train_rungs(study: optuna.Study, cfg: SearchConfig, ctx: TrainContext,
                emit: Event) -> dict:
    """Promote the study's trained candidates up ``cfg.rungs`` (see the module text);
    returns the study's rung results."""
    if len(cfg.rungs) < 2:
        return {}
    n_train = len(ctx.data.train_y)
    brief = cfg.brief_steps(n_train)
    state = {k: dict(v) for k, v in study.user_attrs.get(StudyAttr.RUNGS, {}).items()}
    trained = {t.number: t for t in load_record(study).trials if t.trained}
    cost_col = cfg.cost_columns[0]
    here = {n: (t.val_accuracy, t.weights) for n, t in trained.items()}
    for k in range(1, len(cfg.rungs)):
        hi = cfg.rungs[k]
        results = [RungResult(str(n), trained[n].spec["space"], float(trained[n].cost[cost_col]),
                              acc) for n, (acc, _) in here.items()]
        chosen = promote(results, eta=cfg.promote_eta, bands=COST_BANDS,
                         family_quota=1 if k == 1 else 0)
        reached = {}
        for key in chosen:
            n = int(key)
            done = state.get(str(n), {}).get(str(hi))
            if done is None:
                try:
                    done = _train_on(cfg, ctx, trained[n], here[n][1], hi * brief, hi, emit)
                except Exception as e:  # a failed promotion must not lose the study
                    done = {"failed": f"{type(e).__name__}: {e}"}
                    emit(PromotionFailed(n, hi, done["failed"]))
                state.setdefault(str(n), {})[str(hi)] = done
                study.set_user_attr(StudyAttr.RUNGS, state)
            if "failed" not in done:  # a failed one keeps its last rung, and is not tried again
                reached[n] = (done["val_accuracy"], done["weights"])
        here = reached
    return state


def _train_on(cfg: SearchConfig, ctx: TrainContext, t, weights: str, to: int, factor: int,
              emit: Event) -> dict:
    """Train trial ``t``'s candidate on from ``weights`` (relative to the study) to ``to``
    steps in all."""
    emit(PromotionStart(t.number, factor, to))
    folder = cfg.study_dir / "trials" / str(t.number)
    t0 = time.perf_counter()
    out = train_on(ctx, t.spec, trial_recipe(cfg, len(ctx.data.train_y), t),
                   init=init_seed(cfg.seed, t.number), start=cfg.study_dir / weights, to=to,
                   checkpoint=folder / f"rung{factor}x-checkpoint.pt",
                   progress=step_events(emit))
    path = rung_weights(folder, factor)
    save_weights(path, out)
    (folder / f"rung{factor}x-checkpoint.pt").unlink(missing_ok=True)
    result = {"val_accuracy": out.val_accuracy, "steps": out.total_steps,
              "images": out.result.images, "seconds": round(time.perf_counter() - t0, 3),
              "weights": path.relative_to(cfg.study_dir).as_posix(),
              "learning_curve": out.result.points}
    emit(PromotionEnd(t.number, factor, out.val_accuracy, result["seconds"]))
    return result
