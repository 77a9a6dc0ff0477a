"""Every use of Optuna's private API, in one place.

kdnas needs a few things Optuna 5 has no public API for; each is wrapped here, and
``tests/test_optuna_internals.py`` checks each against the installed Optuna, so a release that
changes one fails there by name instead of deep inside a search. Nothing else in kdnas may
touch a private Optuna name (``tools/check_layout.py`` checks that).

- the storage behind a study and a live trial's storage id: heartbeats, failing a dead
  worker's trial by id, re-reading a trial's state after an interrupt;
- the trial list read through the storage's cache (``Study._get_trials(use_cache=...)``):
  the sampler reads the study on every proposal;
- the Pareto front and the hypervolume: the same computations as ``study.best_trials`` and
  Optuna's hypervolume plots, so the report agrees with the study and optuna-dashboard;
- the list form of a trial's constraint that optuna-dashboard 0.21 reads, and a constraint
  on a trial made with ``create_trial`` (which has no ``set_constraint``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import optuna
from optuna._hypervolume import compute_hypervolume as _hypervolume
from optuna.study._multi_objective import _is_pareto_front
from optuna.trial._trial import _CONSTRAINTS_KEY
from optuna.trial import FrozenTrial, TrialState


def storage(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage a study reads and writes."""
    return study._storage


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """A trial's id in its storage (not its number within the study)."""
    return trial._trial_id


def frozen(study: optuna.Study, trial: optuna.Trial | FrozenTrial) -> FrozenTrial:
    """The trial as its storage holds it now."""
    return storage(study).get_trial(trial_id(trial))


def trials(study: optuna.Study, states: Sequence[TrialState] | None = None, *,
           use_cache: bool) -> list[FrozenTrial]:
    """The study's trials without a copy; ``use_cache``: read through the storage's cache of
    finished trials (cheap on every proposal; a running trial's attributes may be stale)."""
    return study._get_trials(deepcopy=False, states=None if states is None else tuple(states),
                             use_cache=use_cache)


def set_dashboard_constraint(study: optuna.Study, trial: optuna.Trial, value: float) -> None:
    """optuna-dashboard (0.21) reads feasibility from the older list form of the value
    ``trial.set_constraint`` stores."""
    storage(study).set_trial_system_attr(trial_id(trial), "constraints", [float(value)])


def constraint_attrs(key: str, value: float) -> dict[str, object]:
    """The system attributes that ``trial.set_constraint(key, value)`` and
    :func:`set_dashboard_constraint` would write, for a trial made with ``create_trial``."""
    return {f"{_CONSTRAINTS_KEY}:{key}": float(value), "constraints": [float(value)]}


def pareto_mask(losses: np.ndarray) -> np.ndarray:
    """True for the rows (values to minimise) on the Pareto front."""
    return _is_pareto_front(np.asarray(losses, float), assume_unique_lexsorted=False)


def hypervolume(losses: np.ndarray, reference: np.ndarray, *, assume_pareto: bool = False
                ) -> float:
    """The volume the rows (values to minimise) dominate up to ``reference``."""
    return float(_hypervolume(np.asarray(losses, float), np.asarray(reference, float),
                              assume_pareto=assume_pareto))
