"""Feasible fraction and MAC spread of proposals, per space and budget (32x32x3, 10 classes).

For each space and budget, a study proposes candidates the way `kdnas search` does (seeded
TPE behind the budget-aware sampler), with a stand-in objective instead of training (log of
params, so the sampler is pushed towards the budget as accuracy would push it). Reported:

* feasible: share of trials (what the study records and would train) within budget;
* raw rejected: share of the sampler's internal draws that were over budget and resampled
  (the cost of the trick, in MAC counts, not in training);
* MACs of feasible candidates as % of the budget: min / median / max;
* and, for comparison, the feasible share of plain seeded TPE without the trick.

    python -m benchmarks.space_coverage [--proposals 40]   # writes reports/benchmarks/
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
import warnings
from pathlib import Path

import optuna

from kdnas.core.budget import fmt_count, parse_budget
from kdnas.core.settings import SearchConfig
from kdnas.cost import count_macs, count_params
from kdnas.search.sampler import make_sampler
from search_spaces import get_space

BUDGETS = ("5MMACs", "20MMACs", "50MMACs", "200MMACs")
SPACES = ("resnet", "mobilenet", "shufflenet")


class _Shape:
    """Just what the sampler needs of a data set."""

    def __init__(self, channels: int = 3, size: int = 32) -> None:
        self.in_channels, self.num_classes, self.input_size = channels, 10, size
        self.input_shape = (channels, size, size)


def propose(space_name: str, budget: str, proposals: int, *, aware: bool = True,
            seed: int = 0, coverage: bool = True, channels: int = 3, size: int = 32
            ) -> tuple[list[tuple[str, float]], optuna.samplers.BaseSampler]:
    """``proposals`` candidates of one study as ``kdnas search`` proposes them, told a stand-in
    objective (log params, maximised: pushed towards the budget as accuracy would push it)
    instead of training: each one's family and MACs, and the sampler."""
    space = get_space(space_name)
    limit = parse_budget(budget).limit
    shape = _Shape(channels, size)
    cfg = SearchConfig(space=space_name, budget=budget, trials=proposals, seed=seed)
    sampler = (make_sampler(cfg, shape, coverage=coverage) if aware else
               optuna.samplers.TPESampler(seed=seed, multivariate=True,
                                          n_startup_trials=min(10, max(3, proposals // 3))))
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    out = []
    for _ in range(proposals):
        trial = study.ask()
        spec = space.sample(trial, in_channels=channels, num_classes=10, input_size=size)
        model = space.build(spec)
        m, p = count_macs(model, shape.input_shape), count_params(model)
        trial.set_constraint("budget", m / limit - 1)
        study.tell(trial, [math.log(p), m])
        out.append((spec["space"], m))
    return out, sampler


def run(space_name: str, budget: str, proposals: int, *, aware: bool) -> dict:
    limit = parse_budget(budget).limit
    rows, sampler = propose(space_name, budget, proposals, aware=aware)
    macs = [m for _, m in rows]
    feasible = [m for m in macs if m <= limit]
    out = {"feasible": len(feasible) / len(macs)}
    if feasible:
        pct = sorted(100 * m / limit for m in feasible)
        out.update(min=pct[0], median=statistics.median(pct), max=pct[-1])
    if aware:
        out["raw_rejected"] = sampler.rejected / max(1, sampler.proposed)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--proposals", type=int, default=40)
    ap.add_argument("--out", default="reports/benchmarks/space_coverage.md")
    ap.add_argument("--spaces", nargs="+", default=list(SPACES))
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t0 = time.perf_counter()
    rows = []
    for space in args.spaces:
        smallest = count_macs(get_space(space).build(get_space(space).smallest(
            in_channels=3, num_classes=10, input_size=32)), (3, 32, 32))
        for budget in BUDGETS:
            if parse_budget(budget).limit < smallest:
                rows.append(f"| {space} | {budget} | below the cheapest candidate "
                            f"({fmt_count(smallest)} MACs) | | | |")
                continue
            a = run(space, budget, args.proposals, aware=True)
            b = run(space, budget, args.proposals, aware=False)
            spread = (f"{a['min']:.0f} / {a['median']:.0f} / {a['max']:.0f}"
                      if "min" in a else "-")
            rows.append(f"| {space} | {budget} | {100 * a['feasible']:.0f}% | "
                        f"{100 * a['raw_rejected']:.0f}% | {spread} | "
                        f"{100 * b['feasible']:.0f}% |")
            print(rows[-1], flush=True)
    text = "\n".join([
        "# Search-space coverage: feasible proposals per budget",
        "",
        f"`python -m benchmarks.space_coverage --proposals {args.proposals} --spaces "
        f"{' '.join(args.spaces)}`, 32x32x3 input, "
        "10 classes, seed 0. Stand-in objective: maximise log(params), minimise MACs, with the "
        "budget as an Optuna constraint (no training). MACs counted by fvcore at batch 1.",
        "",
        "| space | budget | feasible (budget-aware) | raw draws rejected | feasible MACs % of "
        "budget, min / median / max | feasible (plain TPE) |",
        "| --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
        f"Wall time {time.perf_counter() - t0:.0f} s.",
        ""])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
