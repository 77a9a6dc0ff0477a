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


def _coverage_study(seed=0, startup=8, families=()):
    from kdnas.search.sampler import Coverage

    dists = {"a": CategoricalDistribution((1, 2, 3, 4, 5, 6, 7, 8)),
             "b": CategoricalDistribution((1, 2, 3, 4, 5, 6, 7, 8))}
    size = lambda p: p["a"] * p["b"]  # noqa: E731
    tpe = optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=startup)
    sampler = FeasibleSampler(tpe, dists, lambda p: size(p) <= 64, n_startup_trials=startup,
                              seed=seed, coverage=Coverage(size, 64, families))
    return optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)


def test_start_up_draws_cover_every_quarter_of_the_budget_top_first():
    """Uniform draws of a*b over 1..8 put most products low; with coverage the start-up
    phase lands one draw in each quarter of the budget in turn, the top quarter first."""
    study = _coverage_study()
    sizes = []
    for _ in range(8):
        t = study.ask()
        a, b = (t.suggest_categorical(k, tuple(range(1, 9))) for k in ("a", "b"))
        sizes.append(a * b)
        study.tell(t, [a + b, a * b])
    bands = [3, 1, 2, 0, 3, 1, 2, 0]  # the band each draw aims at (edges belong to both)
    assert all(16 * q <= s <= 16 * (q + 1) for q, s in zip(bands, sizes, strict=True)), sizes
    assert sum(s >= 32 for s in sizes) >= 4  # half in the upper half (uniform draws: a quarter)


def test_walk_steps_numeric_choices_into_the_band_and_no_further():
    import numpy as np

    from kdnas.search.sampler import walk

    dists = {"a": CategoricalDistribution((1, 2, 4, 8)), "b": CategoricalDistribution((1, 2, 4, 8)),
             "kind": CategoricalDistribution(("x", "y"))}
    size = lambda p: p["a"] * p["b"]  # noqa: E731
    up = walk({"a": 1, "b": 1, "kind": "y"}, dists, size, 32, 64, np.random.RandomState(0))
    assert 32 <= size(up) <= 64 and up["kind"] == "y"  # a non-numeric choice never moves
    down = walk({"a": 8, "b": 8, "kind": "x"}, dists, size, 1, 4, np.random.RandomState(0))
    assert size(down) <= 4
    assert walk({"a": 2, "b": 4}, dists, size, 4, 16, np.random.RandomState(0)) == \
        {"a": 2, "b": 4}  # already inside: unchanged


def test_proposals_at_a_budget_spread_over_its_upper_half_and_every_family():
    """The real space, as kdnas search proposes (stand-in objective, no training): at
    12.5M MACs at least 40% of the proposals cost at least half the budget, from all three
    families; without coverage far fewer do (reports/search_coverage.md, at 50M: 0.24)."""
    import warnings

    from benchmarks.space_coverage import propose

    warnings.simplefilter("ignore")
    rows, _ = propose("all", "12.5MMACs", 12, seed=1)
    upper = [f for f, m in rows if 6.25e6 <= m <= 12.5e6]
    assert all(m <= 12.5e6 for _, m in rows)
    assert len(upper) >= 0.4 * len(rows) and set(upper) == {"resnet", "mobilenet", "shufflenet"}
    only, _ = propose("resnet", "12.5MMACs", 6, seed=1)  # a restricted space stays so
    assert {f for f, _ in only} == {"resnet"} and all(m <= 12.5e6 for _, m in only)
