"""Optuna's private names that kdnas uses, checked against the installed Optuna: a release
that moves or changes one fails here, by name (kdnas/optuna_internals.py)."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from kdnas import optuna_internals as oi


@pytest.fixture
def study():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s = optuna.create_study(directions=["maximize", "minimize"])
    for acc, cost in ((0.5, 1.0), (0.7, 2.0), (0.6, 3.0)):
        s.add_trial(optuna.trial.create_trial(
            values=[acc, cost], distributions={}, params={}))
    return s


def test_storage_trial_id_and_frozen_read_the_live_trial(study):
    trial = study.ask()
    assert isinstance(oi.storage(study), optuna.storages.BaseStorage)
    assert oi.frozen(study, trial).state == TrialState.RUNNING
    oi.set_dashboard_constraint(study, trial, 0.25)
    assert oi.frozen(study, trial).system_attrs["constraints"] == [0.25]
    study.tell(trial, state=TrialState.FAIL)
    assert oi.frozen(study, trial).state == TrialState.FAIL
    assert oi.trial_id(trial) == oi.trial_id(oi.frozen(study, trial))


def test_a_created_trials_constraint_reads_as_set_constraints():
    study = optuna.create_study(directions=["maximize", "minimize"])
    t = study.ask()
    t.set_constraint("budget", -2.0)
    study.tell(t, [0.5, 1.0])
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.COMPLETE, values=[0.6, 2.0],
        system_attrs=oi.constraint_attrs("budget", 3.0)))
    asked, made = study.get_trials()
    assert asked.constraints["budget"] == -2.0 and made.constraints["budget"] == 3.0
    assert made.system_attrs["constraints"] == [3.0]
    assert [t.number for t in study.best_trials] == [0]  # Optuna honours it: 1 is infeasible


def test_the_cached_trial_list_matches_the_public_one(study):
    for cache in (True, False):
        got = oi.trials(study, (TrialState.COMPLETE,), use_cache=cache)
        assert [t.number for t in got] == [t.number for t in study.get_trials(
            states=(TrialState.COMPLETE,))]


def test_pareto_mask_agrees_with_best_trials(study):
    losses = np.array([[-t.values[0], t.values[1]] for t in study.trials])
    mask = oi.pareto_mask(losses)
    assert {t.number for t, m in zip(study.trials, mask, strict=True) if m} == \
        {t.number for t in study.best_trials} == {0, 1}


def test_hypervolume_of_two_boxes_by_hand():
    # points (1, 2) and (2, 1) under reference (3, 3): 2 + 2 - 1 = 3
    assert oi.hypervolume(np.array([[1.0, 2.0], [2.0, 1.0]]), np.array([3.0, 3.0])) == \
        pytest.approx(3.0)
