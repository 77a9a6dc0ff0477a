"""What the search tells its caller as it goes: one typed record per event, passed to
``on_event(event)``. The CLI's progress display (:mod:`kdnas.cli.progress`) is the main
listener; a script can match on the types it cares about (``isinstance(e, TrialEnd)``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kdnas.core.budget import Cost


@dataclass(frozen=True)
class StudyStart:
    trained: int  # candidates the study already holds
    target: int
    stale: int  # trials of dead processes failed (their candidates queued again)
    lead: str | None = None  # the machine that trains references, promotions and the noise
    # check, when it is another one than this


@dataclass(frozen=True)
class Waiting:
    """The last candidates are being trained by other workers."""

    trained: int
    target: int


@dataclass(frozen=True)
class TrialStart:
    trial: int
    index: int  # which of the study's ``target`` trained candidates this will be
    target: int
    cost: Cost
    spec: dict
    kd: str
    estimate: float | None  # expected training seconds (step time x steps)
    retry_of: int | None  # the trial whose candidate this trains again


@dataclass(frozen=True)
class Step:
    step: int
    total: int
    loss: float


@dataclass(frozen=True)
class TrialEnd:
    trial: int
    index: int
    target: int
    accuracy: float
    seconds: float
    cost: Cost
    front_size: int  # Optuna's own front of the study (constraints honoured) after the trial
    best_accuracy: float | None  # the best feasible accuracy so far


@dataclass(frozen=True)
class TrainingFailed:
    """A candidate did not train (:func:`kdnas.front.collapsed`): trained again with the
    stabler recipe (``again``), or, after that, recorded as failed."""

    trial: int
    reason: str
    again: bool


@dataclass(frozen=True)
class Infeasible:
    trial: int
    cost: Cost
    spec: dict
    reason: str


@dataclass(frozen=True)
class Duplicate:
    trial: int
    twin: int  # the trial that trained the candidate: its result is reused


@dataclass(frozen=True)
class ReferenceStart:
    name: str
    cost: Cost
    spec: dict


@dataclass(frozen=True)
class ReferenceEnd:
    name: str
    accuracy: float
    cost: Cost


@dataclass(frozen=True)
class NoiseStart:
    trial: int
    seed: int


@dataclass(frozen=True)
class NoiseEnd:
    trial: int
    seeds: list[int]
    accuracies: list[float]
    spread: float


@dataclass(frozen=True)
class PromotionStart:
    trial: int
    rung: int  # the rung it is promoted to, as a multiple of the brief steps
    steps: int  # steps in all at that rung


@dataclass(frozen=True)
class PromotionEnd:
    trial: int
    rung: int
    accuracy: float
    seconds: float


@dataclass(frozen=True)
class PromotionFailed:
    """A promotion that failed (diverged, out of memory): the candidate keeps its last rung."""

    trial: int
    rung: int
    reason: str


SearchEvent = (StudyStart | Waiting | TrialStart | Step | TrialEnd | TrainingFailed
               | Infeasible | Duplicate
               | ReferenceStart | ReferenceEnd | NoiseStart | NoiseEnd | PromotionStart
               | PromotionFailed
               | PromotionEnd)
Event = Callable[[SearchEvent], None]


def step_events(emit: Event) -> Callable[[int, int, float], None]:
    """A trainer's progress callback that reports each read-back as a :class:`Step`."""
    return lambda step, total, loss: emit(Step(step, total, loss))
