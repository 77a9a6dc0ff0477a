from __future__ import annotations

import optuna
from optuna.distributions import CategoricalDistribution

from kdnas.search.sampler import FeasibleSampler


def _study(fits, seed=0, startup=3):
    dists = {"a": CategoricalDistribution((1, 2, 4, 8)), "b": CategoricalDistribution((1, 2, 4, 8))}
    tpe = optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=startup)
    sampler = FeasibleSampler(tpe, dists, fits, n_startup_trials=startup, seed=seed)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    return study, sampler


def test_only_fitting_candidates_are_proposed():
    def fits(p):
        return p["a"] * p["b"] <= 8  # a quarter of the grid is over budget and more is near

    study, sampler = _study(fits)
    for _ in range(25):
        t = study.ask()
        a, b = t.suggest_categorical("a", (1, 2, 4, 8)), t.suggest_categorical("b", (1, 2, 4, 8))
        assert a * b <= 8
        study.tell(t, [a + b, a * b])
    assert sampler.proposed >= 25


def test_repair_steps_down_until_it_fits():
    calls = []

    def fits(p):
        calls.append(dict(p))
        return p["a"] == 1 and p["b"] == 1  # only the smallest candidate fits

    study, sampler = _study(fits)
    t = study.ask()
    assert (t.suggest_categorical("a", (1, 2, 4, 8)),
            t.suggest_categorical("b", (1, 2, 4, 8))) == (1, 1)
    assert sampler.rejected >= 1


def test_same_seed_proposes_the_same_candidates():
    def run(seed):
        study, _ = _study(lambda p: p["a"] + p["b"] <= 9, seed=seed)
        out = []
        for _ in range(8):
            t = study.ask()
            a = t.suggest_categorical("a", (1, 2, 4, 8))
            b = t.suggest_categorical("b", (1, 2, 4, 8))
            out.append((a, b))
            study.tell(t, [a * 0.1 + b * 0.01, a + b])
        return out

    assert run(3) == run(3)
