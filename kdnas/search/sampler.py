"""Budget-aware sampling: propose only candidates that fit, before a trial is created.

:class:`FeasibleSampler` wraps Optuna's TPE sampler. For spaces that declare their
distributions, it samples all parameters jointly (TPE after its start-up trials, seeded random
before), builds the spec, counts its cost, and rejects and resamples until the candidate fits
the budget. Over-budget proposals therefore rarely reach the study; the ones that do (when no
fitting sample is found in ``max_tries``) are still recorded as infeasible and never trained.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from kdnas.core.attrs import TrialAttr
from kdnas.core.settings import SearchConfig
from kdnas.optuna_internals import trials as study_trials
from kdnas.cost import macs_lower_bound
from kdnas.search.costs import measure
from search_spaces import get_space, spec_id
from search_spaces.multi import FAMILY, own_parameters

log = logging.getLogger(__name__)


def random_params(distributions: dict[str, BaseDistribution], rng: np.random.RandomState
                  ) -> dict[str, Any]:
    out = {}
    for name, d in distributions.items():
        if isinstance(d, CategoricalDistribution):
            out[name] = d.choices[rng.randint(len(d.choices))]
        elif isinstance(d, optuna.distributions.IntDistribution):
            out[name] = int(rng.randint(d.low, d.high + 1))
        elif isinstance(d, optuna.distributions.FloatDistribution):
            out[name] = float(rng.uniform(d.low, d.high))
        else:  # pragma: no cover - all Optuna distributions are handled above
            raise TypeError(f"unsupported distribution {d!r}")
    return out


class FeasibleSampler(optuna.samplers.BaseSampler):
    """TPE that proposes only parameter sets for which ``fits(params)`` is true.

    ``distributions`` is the space's full parameter space; ``fits`` builds and costs the
    candidate. After ``max_tries`` rejected samples, the last one is *repaired*: numeric
    parameters are stepped down at random until it fits.
    """

    def __init__(self, inner: optuna.samplers.TPESampler,
                 distributions: dict[str, BaseDistribution], fits: Callable[[dict], bool], *,
                 n_startup_trials: int, seed: int | None = None, max_tries: int = 8,
                 key: Callable[[dict], str] | None = None,
                 built: dict[str, tuple[Any, Any]] | None = None) -> None:
        self.inner = inner
        self.distributions = distributions
        self.fits = fits
        self.key = key  # the spec id of a parameter set: a trained one is not proposed again
        # spec id -> (module, cost) that ``fits`` just counted, for the trial to take
        self.built: dict[str, tuple[Any, Any]] = {} if built is None else built
        self.n_startup_trials = n_startup_trials
        self.max_tries = max_tries
        self._seed = seed
        self._rng = np.random.RandomState(seed)
        self.rejected = 0
        self.proposed = 0

    def take_built(self, key: str):
        """The module and cost ``fits`` made for spec ``key`` (so the trial does not build
        and count its candidate again), or None."""
        return self.built.pop(key, None)

    def reseed_rng(self) -> None:
        self._rng.seed()
        self.inner.reseed_rng()

    def infer_relative_search_space(self, study, trial) -> dict[str, BaseDistribution]:
        return dict(self.distributions)

    def sample_relative(self, study, trial, search_space) -> dict[str, Any]:
        if not search_space or trial.params or trial.system_attrs.get("fixed_params"):
            return {}  # an enqueued or retried candidate: its parameters are given
        done = len(study_trials(study, (TrialState.COMPLETE,), use_cache=True))
        taken = set()
        if self.key is not None:  # trained, or being trained by another worker
            taken = {t.user_attrs.get(TrialAttr.SPEC_ID) for t in study_trials(
                study, (TrialState.COMPLETE, TrialState.RUNNING), use_cache=False)
                if t.user_attrs.get(TrialAttr.TRAINED) or t.user_attrs.get(TrialAttr.TRAINING)}
        if self._seed is not None:  # draws depend on the trial number: workers that ask
            # at the same moment (with the same seed) draw different candidates
            self._rng = np.random.RandomState((self._seed + 7 * trial.number) % 2**32)
        params: dict[str, Any] = {}
        for _ in range(self.max_tries):
            params = self._draw(study, trial, search_space, tpe=done >= self.n_startup_trials)
            self.proposed += 1
            if self.fits(params) and (not taken or self.key(params) not in taken):
                return params
            self.rejected += 1
        return self.repair(params, search_space)

    def _draw(self, study, trial, search_space, *, tpe: bool) -> dict[str, Any]:
        """One draw: TPE (after the start-up trials) or seeded random. Over several families
        the family is drawn first, then that family's own parameters, each by TPE over the
        trials that have them (multivariate TPE leaves out trials that lack a parameter of
        the space it is given, so one draw over every family's parameters would learn from
        no trial at all)."""
        def draw(group: dict, params: dict) -> dict:
            got = dict(self.inner.sample_relative(study, trial, group)) if tpe else {}
            got.update(random_params({k: v for k, v in group.items() if k not in got},
                                     self._rng))
            return {**params, **got}

        if FAMILY not in search_space:
            return draw(search_space, {})
        params = draw({FAMILY: search_space[FAMILY]}, {})
        return draw(own_parameters(search_space, params[FAMILY]), params)

    def repair(self, params: dict[str, Any], search_space) -> dict[str, Any]:
        """Step random numeric parameters down one choice at a time until the candidate fits
        (numeric choices of a space grow its cost: depth, width, expansion, kernel)."""
        p, ok = step_down(params, search_space, self.fits, self._rng)
        if not ok:
            log.info("no candidate within budget found; proposing the smallest tried")
        return p

    def sample_independent(self, study, trial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self.inner.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial: FrozenTrial) -> None:
        self.inner.before_trial(study, trial)

    def after_trial(self, study, trial: FrozenTrial, state: TrialState, values) -> None:
        self.inner.after_trial(study, trial, state, values)


def step_down(params: dict[str, Any], dists: dict[str, BaseDistribution],
              fits: Callable[[dict], bool], rng: np.random.RandomState,
              frozen: frozenset | set = frozenset()) -> tuple[dict[str, Any], bool]:
    """Step numeric parameters (other than ``frozen`` ones), chosen at random from ``rng``,
    down one choice at a time until ``fits``; returns the parameters and whether they fit
    (False when nothing can go lower)."""
    p = dict(params)
    while not fits(p):
        movable = [(k, v) for k, d in dists.items()  # (a family's own, over several)
                   if k in p and k not in frozen and (v := _lower(d, p[k])) is not None]
        if not movable:
            return p, False
        k, v = movable[rng.randint(len(movable))]
        p[k] = v
    return p, True


def _lower(d: BaseDistribution, value: Any) -> Any:
    """The next smaller value of a numeric parameter, or None."""
    if isinstance(d, CategoricalDistribution):
        nums = [c for c in d.choices if isinstance(c, (int, float)) and not isinstance(c, bool)]
        if len(nums) != len(d.choices) or not isinstance(value, (int, float)):
            return None
        below = [c for c in nums if c < value]
        return max(below) if below else None
    if isinstance(d, optuna.distributions.IntDistribution):
        return value - d.step if value - d.step >= d.low else None
    return None


def make_sampler(cfg: SearchConfig, data, *, resumed_at: int = 0, worker: int = 0
                 ) -> optuna.samplers.BaseSampler:
    """Seeded multi-objective TPE; budget-aware when the space declares its distributions.

    ``resumed_at`` (trials already in the study) shifts the seed, so that a resumed run draws
    new candidates instead of replaying the first run's, and a fresh run stays reproducible;
    ``worker`` (its index among several) gives each worker its own draws.
    """
    seed = cfg.seed + 7919 * resumed_at + 104729 * worker
    n_startup = min(10, max(3, cfg.trials // 3))
    tpe = optuna.samplers.TPESampler(seed=seed, multivariate=True,
                                     n_startup_trials=n_startup)
    space = get_space(cfg.space)
    if not hasattr(space, "distributions"):
        return tpe
    budget = cfg.budget_value
    cache: dict[str, bool] = {}
    built: dict[str, tuple] = {}  # the last few counted, for the trial to take

    def key(params: dict) -> str:
        return spec_id(space.sample(optuna.trial.FixedTrial(params),
                                    in_channels=data.in_channels,
                                    num_classes=data.num_classes, input_size=data.input_size))

    def fits(params: dict) -> bool:
        k = key(params)
        if k not in cache:
            spec = space.sample(optuna.trial.FixedTrial(params), in_channels=data.in_channels,
                                num_classes=data.num_classes, input_size=data.input_size)
            model = space.build(spec)
            if budget.metric == "macs" and \
                    macs_lower_bound(model, data.input_shape) > budget.limit:
                cache[k] = False  # over budget on its convolutions alone: no full count
            else:
                cost = measure(cfg, model, data, latency=budget.metric == "latency_ms")
                cache[k] = budget.fits(cost)
                if cache[k]:
                    while len(built) >= 4:
                        built.pop(next(iter(built)))
                    built[k] = (model, cost)
        return cache[k]

    return FeasibleSampler(tpe, space.distributions(), fits, n_startup_trials=n_startup,
                           seed=seed, key=key, built=built)
