"""What a study holds, as plain records: reports and shipping read these, not an Optuna study,
so they need no storage and no sampler. :func:`kdnas.search.storage.load_record` makes them."""

from __future__ import annotations

from dataclasses import dataclass, field

from kdnas.core.attrs import Outcome
from kdnas.core.errors import KdnasError


@dataclass(frozen=True)
class TrialRecord:
    """One trial: its candidate, cost, gate result and (if trained) accuracy and weights."""

    number: int
    state: str  # an Outcome (trained, infeasible, ...), or Optuna's state name (running)
    spec: dict | None = None
    spec_id: str | None = None
    cost: dict = field(default_factory=dict)  # Cost.to_dict()
    budget_excess: float | None = None  # <= 0: within budget
    val_accuracy: float | None = None
    train_seconds: float | None = None
    estimate_seconds: float | None = None  # the training time told before it trained
    kd: str | None = None
    feature_weight: float | None = None
    weights: str | None = None  # path of the trained student
    curve: tuple = ()
    learning_curve: tuple = ()  # validation accuracy by steps during the brief training
    recipe: dict = field(default_factory=dict)  # steps, images, batch size, train fraction
    started: float | None = None  # POSIX seconds
    completed: float | None = None
    values: tuple[float, ...] = ()  # the objective values told to the study
    note: str | None = None  # why it failed, or which failed trial it retries
    time: dict = field(default_factory=dict)  # seconds by phase: cost, student, teacher, ...
    # --rungs: the highest rung reached (a multiple of the brief steps; None without rungs),
    # the brief accuracy, and every rung's result (factor -> accuracy, steps, seconds,
    # weights). With rungs, val_accuracy and weights are the highest rung's.
    rung: int | None = None
    brief_accuracy: float | None = None
    rungs: dict = field(default_factory=dict)
    signals: dict = field(default_factory=dict)  # name -> {"value", "seconds"}

    @property
    def trained(self) -> bool:
        return self.state == Outcome.TRAINED

    @property
    def within_budget(self) -> bool | None:
        return None if self.budget_excess is None else self.budget_excess <= 0


@dataclass(frozen=True)
class StudyRecord:
    """A study's trials and what it stored beside them."""

    name: str
    trials: tuple[TrialRecord, ...]
    references: dict = field(default_factory=dict)  # name -> result of a reference student
    teacher_val_accuracy: float | None = None
    normalization: dict | None = None  # {"mean": [...], "std": [...]}
    hypervolume_reference: dict | None = None  # cost column -> value fixed at creation
    num_classes: int | None = None
    val_images: int | None = None  # the validation split every accuracy is measured on
    noise: dict | None = None  # the knee trained again with another seed (search/noise.py)
    distilled: dict = field(default_factory=dict)  # name -> a `kdnas distill` run's result
    exported: dict = field(default_factory=dict)  # folder -> a `kdnas export` run's result

    def trial(self, number: int) -> TrialRecord:
        for t in self.trials:
            if t.number == number:
                return t
        last = max((t.number for t in self.trials), default=-1)
        raise KdnasError(f"study {self.name!r} has no trial {number} (it has 0..{last})")

    def trained_trial(self, number: int) -> TrialRecord:
        """The trial, which must have been trained (export and full distillation need it)."""
        t = self.trial(number)
        if not t.trained:
            raise KdnasError(f"trial {number} was not trained (state: {t.state}, e.g. over "
                             "budget or interrupted): pick a trained trial, see pareto.md")
        return t
