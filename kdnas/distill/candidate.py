"""The one way to train a candidate: every caller in the product (search trials, references,
the noise check, promotions to longer rungs, full distillation) and the experiments builds a
:class:`TrainContext` once and calls :func:`train_candidate` with a spec and a recipe (the
benchmark's timings of the loop itself, ``kdnas.bench``, call ``fit`` on a built module).

A candidate is built from its spec with a seeded initialisation, trained by
:func:`kdnas.distill.trainer.fit` (distilled from the context's teacher through the space's
stage taps, reading the teacher's outputs from the context's cache when the recipe has one),
and returned as a :class:`CandidateOutcome`: the trained module, what the training measured
and its connector weights, so that :func:`save_weights` can keep everything a later rung needs
to train it on.

Rungs: :func:`train_on` trains a candidate on from the weights :func:`save_weights` wrote to a
longer rung (the brief recipe continued, :func:`continuation`); :func:`climb` trains one up a
list of rungs, keeping each rung's weights and resuming from the last one kept. Promotions,
the noise check and every experiment train rungs through these two.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from kdnas.core.files import atomic_path
from kdnas.core.settings import CURVE_POINTS, TrainConfig, reads_features
from kdnas.device import channels_last_for, precision_for, resolve
from kdnas.distill.cache import TeacherCache
from kdnas.distill.signals import curve_signals, score_all
from kdnas.distill.trainer import FitResult, fit
from search_spaces import get_space

# a candidate's initialisation: seeded by the study's seed and the trial's number, so that two
# trials of a study never share one and the same command builds the same weights
INIT_SEED_STRIDE = 100003
# a continuation's data order: seeded apart from the first rung's (and every other rung's)
SEGMENT_SEED_STRIDE = 7919

Progress = Callable[[int, int, float], None]  # (step, total steps, training loss)


def init_seed(seed: int, number: int) -> int:
    """The initialisation seed of trial ``number`` of a study with seed ``seed``."""
    return seed * INIT_SEED_STRIDE + number


@dataclass(frozen=True)
class TrainContext:
    """What every candidate of a study is trained with: the teacher (a
    :class:`kdnas.teacher.Teacher`, or None for cross-entropy alone), the data (a
    :class:`kdnas.data.DataBundle` with the teacher's normalisation) and where the teacher's
    outputs are cached (``cache_root``; None: no cache)."""

    teacher: object | None
    data: object
    cache_root: Path | None = None
    cache_limit_bytes: int | None = None
    cache_features: bool = True  # False: the cache keeps the teacher's logits only
    # the search's brief runs: each family at its space's ``brief_lr_scale`` of the recipe's
    # learning rate (kdnas distill trains every family at the recipe's own)
    family_lr: bool = False

    def cache_for(self, recipe: TrainConfig) -> TeacherCache | None:
        """The teacher cache of ``recipe``: keyed by everything that changes the teacher's
        outputs at each step (teacher, data and its augmentation, the recipe's data order,
        batch and steps), so every candidate trained with that recipe shares it."""
        if self.cache_root is None or self.teacher is None or recipe.method == "none":
            return None
        if not self.cache_features and reads_features(recipe.method):
            return None  # a logits-only cache cannot serve it: the teacher runs instead
        t, d = self.teacher, self.data
        key = json.dumps([t.digest, d.digest(), d.mean, d.std, d.pad, d.flip,
                          recipe.train_fraction, recipe.seed, recipe.batch_size,
                          recipe.total_steps(len(d.train_y)), [x.module for x in t.taps]]
                         + ([] if self.cache_features else ["logits only"]))
        return TeacherCache(Path(self.cache_root), hashlib.sha1(key.encode()).hexdigest()[:16],
                            limit_bytes=self.cache_limit_bytes, features=self.cache_features)


@dataclass
class CandidateOutcome:
    """A trained candidate: its module (on the CPU), what ``fit`` measured, its feature
    loss's connector weights (for a continuation) and the whole call's seconds."""

    spec: dict
    model: nn.Module
    result: FitResult
    extra: dict
    seconds: float
    steps_before: int = 0  # steps it had been trained before this call (a continuation)
    signals: dict = field(default_factory=dict)  # name -> {"value", "seconds"} at its init

    @property
    def val_accuracy(self) -> float:
        return self.result.val_accuracy

    @property
    def total_steps(self) -> int:
        return self.steps_before + self.result.steps


def train_candidate(ctx: TrainContext, spec: dict, recipe: TrainConfig, *, init: int,
                    start: str | Path | None = None, checkpoint: Path | None = None,
                    progress: Progress | None = None, signals: bool = False
                    ) -> CandidateOutcome:
    """Build ``spec`` with initialisation seed ``init`` (see :func:`init_seed`) and train it
    with ``recipe``. ``signals``: score the new candidate at its initialisation first
    (:func:`kdnas.distill.signals.score_all`; the training is the same with or without) and
    read its learning curve's (``curve_signals``) after.
    ``start``: weights written by :func:`save_weights` to train on from (a promotion to a
    longer rung; ``recipe`` is then a :func:`continuation`; not scored). ``checkpoint``:
    saved every epoch, and a run that finds it resumes there."""
    t0 = time.perf_counter()
    space = get_space(spec["space"])
    recipe = dataclasses.replace(  # per family, on CUDA only (kdnas.device)
        recipe, precision=precision_for(spec["space"]), channels_last=recipe.channels_last
        and channels_last_for(spec["space"], resolve(recipe.device)))
    if ctx.family_lr:  # the search's runs, promotions up the rungs included
        recipe = brief_recipe(recipe, spec)
    torch.manual_seed(init)
    model = space.build(spec)
    state, before = None, 0
    scores = score_all(model, ctx.data, teacher=ctx.teacher) if signals and start is None \
        else {}
    if start is not None:
        saved = torch.load(start, map_location="cpu", weights_only=True)
        state = {"student": saved["state_dict"], "extra": saved.get("extra") or {}}
        before = int(saved.get("steps", 0))
    keep: dict = {}
    result = fit(model, ctx.data, recipe, teacher=ctx.teacher, student_taps=space.taps(spec),
                 cache=ctx.cache_for(recipe), checkpoint=checkpoint, start=state,
                 progress=progress, keep=keep)
    if scores:
        scores.update(curve_signals(result.points))
    return CandidateOutcome(spec, model, result, keep.get("extra", {}),
                            time.perf_counter() - t0, before, scores)


def brief_recipe(recipe: TrainConfig, spec: dict) -> TrainConfig:
    """``recipe`` as the search's brief runs train ``spec``'s family: at its space's
    ``brief_lr_scale`` of the learning rate."""
    scale = getattr(get_space(spec["space"]), "brief_lr_scale", 1.0)
    return recipe if scale == 1.0 else dataclasses.replace(recipe, lr=recipe.lr * scale)


def save_weights(path: Path, outcome: CandidateOutcome) -> None:
    """Write the trained student atomically: its spec and weights (what export reads), its
    connector weights and the steps it has been trained (what a continuation reads)."""
    with atomic_path(path) as tmp:
        torch.save({"spec": outcome.spec,
                    "state_dict": {k: v.contiguous()
                                   for k, v in outcome.model.state_dict().items()},
                    "extra": outcome.extra, "steps": outcome.total_steps}, tmp)


def continuation(recipe: TrainConfig, *, done: int, to: int) -> TrainConfig:
    """The recipe that trains a candidate on from ``done`` steps to ``to`` steps in all: the
    same settings over the new steps only, with a fresh warm-up and cosine decay (a warm
    restart, as in SGDR), on a data order of its own, and a learning curve of as many points
    as the first rung's."""
    if to <= done:
        raise ValueError(f"a continuation must add steps: {done} -> {to}")
    steps = to - done
    every = max(1, steps // CURVE_POINTS)
    return dataclasses.replace(recipe, steps=steps, seed=recipe.seed + SEGMENT_SEED_STRIDE * done,
                               eval_every=every if recipe.eval_every else None)


def rung_weights(folder: Path, factor: int) -> Path:
    """Where :func:`climb` keeps a candidate's weights at rung ``factor`` (x the brief steps)."""
    return Path(folder) / f"rung{factor}x.pt"


def train_on(ctx: TrainContext, spec: dict, recipe: TrainConfig, *, init: int,
             start: str | Path, to: int, checkpoint: Path | None = None,
             progress: Progress | None = None) -> CandidateOutcome:
    """Train ``spec`` on from the weights at ``start`` (written by :func:`save_weights`, which
    records how many steps they have had) to ``to`` steps in all. ``recipe`` is the recipe of
    the first rung (the brief one); the new steps follow :func:`continuation`. ``init`` is the
    candidate's own initialisation seed (the module is built with it, then loaded)."""
    done = int(torch.load(start, map_location="cpu", weights_only=True).get("steps", 0))
    return train_candidate(ctx, spec, continuation(recipe, done=done, to=to), init=init,
                           start=start, checkpoint=checkpoint, progress=progress)


OnRung = Callable[[int, CandidateOutcome, float], None]  # (factor, outcome, seconds)


def climb(ctx: TrainContext, spec: dict, recipe: TrainConfig, *, init: int,
          factors: list[int] | tuple[int, ...], folder: Path,
          have: Callable[[int], bool] = lambda factor: False,
          on_rung: OnRung | None = None,
          progress: Callable[[int], Progress | None] = lambda factor: None,
          checkpoints: bool = False) -> CandidateOutcome | None:
    """Train ``spec`` up ``factors`` (rungs in multiples of ``recipe.steps``: the first with
    ``recipe`` itself, each next one on from the last one's weights), keeping each rung's
    weights in ``folder`` (:func:`rung_weights`) and calling ``on_rung`` as each finishes.

    Rungs the caller already has (``have(factor)``, leading ones only) are skipped when the
    last of them left its weights; where those weights are gone (a new checkout, a cleared
    folder) every rung is trained again from the first. ``checkpoints``: each rung also saves
    a checkpoint every epoch in ``folder`` and resumes from it. Returns the last rung trained
    (None when every rung was had)."""
    factors = list(factors)
    if not factors or factors[0] != 1:
        raise ValueError(f"rungs start at the brief recipe (1x): {factors}")
    first = 0
    while first < len(factors) and have(factors[first]):
        first += 1
    if first == len(factors):
        return None
    if first and not rung_weights(folder, factors[first - 1]).exists():
        first = 0
    out = None
    for k in range(first, len(factors)):
        f = factors[k]
        t0 = time.perf_counter()
        ckpt = Path(folder) / f"rung{f}x-checkpoint.pt" if checkpoints else None
        if k == 0:
            out = train_candidate(ctx, spec, recipe, init=init, checkpoint=ckpt,
                                  progress=progress(f))
        else:
            out = train_on(ctx, spec, recipe, init=init,
                           start=rung_weights(folder, factors[k - 1]),
                           to=f * recipe.steps, checkpoint=ckpt, progress=progress(f))
        save_weights(rung_weights(folder, f), out)
        if ckpt is not None:
            ckpt.unlink(missing_ok=True)
        if on_rung is not None:
            on_rung(f, out, time.perf_counter() - t0)
    return out
