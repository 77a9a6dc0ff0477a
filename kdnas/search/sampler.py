"""Budget-aware sampling: propose only candidates that fit, before a trial is created.

:class:`FeasibleSampler` wraps Optuna's TPE sampler. For spaces that declare their
distributions, it samples all parameters jointly (TPE after its start-up trials, seeded random
before), builds the spec, counts its cost, and rejects and resamples until the candidate fits
the budget. Over-budget proposals therefore rarely reach the study; the ones that do (when no
fitting sample is found in ``max_tries``) are still recorded as infeasible and never trained.

Proposals cover the budget (:class:`Coverage`): uniform draws of the parameters crowd at the
small end (at a 50M-MAC budget three quarters of them fall under 22M), so, as AttentiveNAS and
BigNAS first draw a target cost and then an architecture at it, each proposal gets a target:
in the start-up phase a family (in turn) and a quarter of the budget (from the top quarter
down, every family through every quarter), in the model-based phase every other proposal the
upper half. A draw outside its target is walked there one numeric choice at a time
(:func:`walk`), on the budget's own metric, and still has to fit.
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
from kdnas.cost import count_params, macs_lower_bound
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


BANDS = 4  # the start-up phase's targets: equal shares of the budget, top first
BAND_ORDER = (3, 1, 2, 0)
MAX_WALK = 16  # numeric steps a draw may take towards its target


class Coverage:
    """Where proposal ``number`` should land: ``(family or None, low, high)`` on the budget's
    metric, or None (anywhere that fits). ``size(params)`` is the candidate's value on that
    metric (a cheap count is enough: it only aims the draw)."""

    def __init__(self, size: Callable[[dict], float], limit: float,
                 families: tuple[str, ...] = ()) -> None:
        self.size, self.limit, self.families = size, float(limit), tuple(families)

    def target(self, number: int, *, startup: bool) -> tuple[str | None, float, float] | None:
        f = max(1, len(self.families))
        if startup:
            band = BAND_ORDER[(number // f) % BANDS]
            family = self.families[number % f] if self.families else None
            return family, self.limit * band / BANDS, self.limit * (band + 1) / BANDS
        if number % 2 == 0:  # the model's own choice of family, in the budget's upper half
            return None, self.limit / 2, self.limit
        return None


def walk(params: dict[str, Any], dists: dict[str, BaseDistribution],
         size: Callable[[dict], float], low: float, high: float, rng: np.random.RandomState,
         steps: int = MAX_WALK) -> dict[str, Any]:
    """Step numeric parameters, chosen at random, up (below ``low``) or down (above ``high``)
    one choice at a time until ``size`` is within [low, high], for at most ``steps`` steps."""
    p = dict(params)
    for _ in range(steps):
        value = size(p)
        if low <= value <= high:
            break
        move = _higher if value < low else _lower
        movable = [(k, v) for k, d in dists.items()
                   if k in p and (v := move(d, p[k])) is not None]
        if not movable:
            break
        k, v = movable[rng.randint(len(movable))]
        p[k] = v
    return p


class FeasibleSampler(optuna.samplers.BaseSampler):
    """TPE that proposes only parameter sets for which ``fits(params)`` is true.

    ``distributions`` is the space's full parameter space; ``fits`` builds and costs the
    candidate. After ``max_tries`` rejected samples, the last one is *repaired*: numeric
    parameters are stepped down at random until it fits. ``coverage`` aims each draw at a
    part of the budget (:class:`Coverage`); without it, draws go where they fall.
    """

    def __init__(self, inner: optuna.samplers.TPESampler,
                 distributions: dict[str, BaseDistribution], fits: Callable[[dict], bool], *,
                 n_startup_trials: int, seed: int | None = None, max_tries: int = 8,
                 key: Callable[[dict], str] | None = None,
                 built: dict[str, tuple[Any, Any]] | None = None,
                 coverage: Coverage | None = None) -> None:
        self.inner = inner
        self.coverage = coverage
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
                study, (TrialState.COMPLETE, TrialState.RUNNING, TrialState.FAIL),
                use_cache=False)
                if t.user_attrs.get(TrialAttr.TRAINED) or t.user_attrs.get(TrialAttr.TRAINING)
                or t.user_attrs.get(TrialAttr.TRAINING_FAILED)
                or t.user_attrs.get(TrialAttr.REFERENCE)}
        if self._seed is not None:  # draws depend on the trial number: workers that ask
            # at the same moment (with the same seed) draw different candidates
            self._rng = np.random.RandomState((self._seed + 7 * trial.number) % 2**32)
        params: dict[str, Any] = {}
        startup = done < self.n_startup_trials
        target = None if self.coverage is None else \
            self.coverage.target(trial.number, startup=startup)
        for _ in range(self.max_tries):
            params = self._draw(study, trial, search_space, tpe=not startup,
                                family=target and target[0])
            if target is not None:
                params = walk(params, search_space, self.coverage.size, target[1], target[2],
                              self._rng)
            self.proposed += 1
            if self.fits(params) and (not taken or self.key(params) not in taken):
                return params
            self.rejected += 1
        return self.repair(params, search_space)

    def _draw(self, study, trial, search_space, *, tpe: bool, family: str | None = None
              ) -> dict[str, Any]:
        """One draw: TPE (after the start-up trials) or seeded random. Over several families
        the family is drawn first (or given: ``family``), then that family's own parameters,
        each by TPE over the trials that have them (multivariate TPE leaves out trials that
        lack a parameter of the space it is given, so one draw over every family's
        parameters would learn from no trial at all)."""
        def draw(group: dict, params: dict) -> dict:
            got = dict(self.inner.sample_relative(study, trial, group)) if tpe else {}
            got.update(random_params({k: v for k, v in group.items() if k not in got},
                                     self._rng))
            return {**params, **got}

        if FAMILY not in search_space:
            return draw(search_space, {})
        params = {FAMILY: family} if family else draw({FAMILY: search_space[FAMILY]}, {})
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
    return _next(d, value, -1)


def _higher(d: BaseDistribution, value: Any) -> Any:
    """The next larger value of a numeric parameter, or None."""
    return _next(d, value, +1)


def _next(d: BaseDistribution, value: Any, sign: int) -> Any:
    if isinstance(d, CategoricalDistribution):
        nums = [c for c in d.choices if isinstance(c, (int, float)) and not isinstance(c, bool)]
        if len(nums) != len(d.choices) or isinstance(value, bool) \
                or not isinstance(value, (int, float)):
            return None
        beyond = [c for c in nums if sign * (c - value) > 0]
        return (min if sign > 0 else max)(beyond) if beyond else None
    if isinstance(d, optuna.distributions.IntDistribution):
        v = value + sign * d.step
        return v if d.low <= v <= d.high else None
    return None


def make_sampler(cfg: SearchConfig, data, *, resumed_at: int = 0, worker: int = 0,
                 coverage: bool = True) -> optuna.samplers.BaseSampler:
    """Seeded multi-objective TPE; budget-aware when the space declares its distributions.

    ``resumed_at`` (trials already in the study) shifts the seed, so that a resumed run draws
    new candidates instead of replaying the first run's, and a fresh run stays reproducible;
    ``worker`` (its index among several) gives each worker its own draws. ``coverage``
    False: draws go where they fall (as before :class:`Coverage`; for the measurement).
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
    sizes: dict[str, float] = {}
    built: dict[str, tuple] = {}  # the last few counted, for the trial to take

    def spec_of(params: dict) -> dict:
        return space.sample(optuna.trial.FixedTrial(params), in_channels=data.in_channels,
                            num_classes=data.num_classes, input_size=data.input_size)

    def key(params: dict) -> str:
        return spec_id(spec_of(params))

    ms_per_mac: list[float] = []  # latency budget: measured latency over MACs, so far

    def size(params: dict, model=None) -> float:
        """The candidate on the budget's metric, cheaply: convolutions' and linear layers'
        MACs, or params. Under a latency budget: the measured latency where ``fits`` has
        measured it, else its MACs at the median milliseconds per MAC measured so far (a
        coverage walk takes up to 16 steps a draw; measuring each step's latency was most of
        the latency test's 98 s, 27 s after). ``model``: the candidate built."""
        k = key(params)
        if k in sizes:
            return sizes[k]
        model = model if model is not None else space.build(spec_of(params))
        if budget.metric == "params":
            sizes[k] = float(count_params(model))
            return sizes[k]
        macs = float(macs_lower_bound(model, data.input_shape))
        if budget.metric == "macs":
            sizes[k] = macs
            return macs
        if not ms_per_mac:  # the first candidate: measured, to aim the rest
            fits(params)
            return sizes[k]
        return macs * float(np.median(ms_per_mac))

    def fits(params: dict) -> bool:
        k = key(params)
        if k not in cache:
            model = space.build(spec_of(params))
            if budget.metric == "macs" and size(params, model) > budget.limit:
                cache[k] = False  # over budget on its convolutions alone: no full count
            else:
                cost = measure(cfg, model, data, latency=budget.metric == "latency_ms")
                cache[k] = budget.fits(cost)
                if budget.metric == "latency_ms" and cost.latency_ms is not None:
                    sizes[k] = float(cost.latency_ms)
                    ms_per_mac.append(sizes[k] / max(1.0, float(cost.macs)))
                if cache[k]:
                    while len(built) >= 4:
                        built.pop(next(iter(built)))
                    built[k] = (model, cost)
        return cache[k]

    families = tuple(getattr(space, "members", {}))
    return FeasibleSampler(tpe, space.distributions(), fits, n_startup_trials=n_startup,
                           seed=seed, key=key, built=built,
                           coverage=Coverage(size, budget.limit, families) if coverage
                           else None)
