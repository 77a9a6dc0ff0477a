"""One study over several families (``--space all`` or ``resnet,mobilenet``): the family is a
parameter, each family's own parameters are conditional on it, the budget gate and the front
are one."""

from __future__ import annotations

import dataclasses

import optuna
import pytest

from kdnas.core.errors import KdnasError
from kdnas.search.costs import smallest_cost
from kdnas.search.loop import run_search
from kdnas.search.sampler import step_down
from kdnas.search.storage import load_record
from search_spaces import get_space, preset_spec, spec_id
from search_spaces.multi import own_parameters

SHAPE = {"in_channels": 3, "num_classes": 10, "input_size": 32}


def test_a_family_spec_is_its_own_spaces_spec():
    """Sampling family F with prefixed parameters gives exactly the spec F's own space
    gives for the same values: building, taps, export and reports need nothing new."""
    multi = get_space("all")
    assert multi.name == "resnet,mobilenet,shufflenet"
    dists = multi.distributions()
    for fam in ("resnet", "mobilenet", "shufflenet"):
        own = get_space(fam)
        params = {k: d.choices[len(d.choices) // 2] for k, d in own.distributions().items()}
        fixed = {"family": fam, **{f"{fam}.{k}": v for k, v in params.items()}}
        spec = multi.sample(optuna.trial.FixedTrial(fixed), **SHAPE)
        assert spec == own.sample(optuna.trial.FixedTrial(params), **SHAPE)
        assert set(own_parameters(dists, fam)) == {f"{fam}.{k}" for k in params}
        assert [t.module for t in multi.taps(spec)] == [t.module for t in own.taps(spec)]
    assert get_space("mobilenet,resnet").name == "mobilenet,resnet"


def test_bad_lists_and_presets_say_what_to_do():
    with pytest.raises(KdnasError, match="at least two"):
        get_space("resnet,resnet")
    with pytest.raises(KdnasError, match="unknown search space 'vgg'"):
        get_space("resnet,vgg")
    assert preset_spec("resnet8", "all", **SHAPE)["space"] == "resnet"
    assert preset_spec("mobilenetv2_half", "all", **SHAPE)["space"] == "mobilenet"
    with pytest.raises(KdnasError, match="no space of resnet,mobilenet has a preset 'x'"):
        preset_spec("x", "resnet,mobilenet", **SHAPE)


def test_the_budget_floor_is_the_cheapest_family(digits):
    from kdnas.core.settings import SearchConfig

    cfg = SearchConfig(space="all", budget="1MFLOPs", latency=False)
    spec, cost = smallest_cost(cfg, digits)
    each = [smallest_cost(dataclasses.replace(cfg, space=f), digits)[1].macs
            for f in ("resnet", "mobilenet", "shufflenet")]
    assert cost.macs == min(each) and spec["space"] == ("resnet", "mobilenet",
                                                        "shufflenet")[each.index(min(each))]


def test_repair_steps_down_only_the_drawn_familys_parameters():
    multi = get_space("resnet,mobilenet")
    dists = multi.distributions()
    big = {"family": "mobilenet", **{k: max(d.choices) if all(
        isinstance(c, int) and not isinstance(c, bool) for c in d.choices) else d.choices[0]
        for k, d in own_parameters(dists, "mobilenet").items()}}
    steps = []

    def fits(p):
        steps.append(p)
        return len(steps) > 5

    p, ok = step_down(big, dists, fits, __import__("numpy").random.RandomState(0))
    assert ok and p["family"] == "mobilenet" and not any(k.startswith("resnet.") for k in p)


def test_one_search_over_families_draws_each_within_one_budget(search_cfg, teacher_and_data,
                                                               monkeypatch):
    """Every trained candidate is within the one budget, more than one family is trained,
    and the front is one front over them (a stand-in trainer: the loop's decisions only)."""
    import kdnas.search.trial as trial_mod
    from kdnas.distill.candidate import CandidateOutcome
    from kdnas.distill.trainer import FitResult

    def train(ctx, spec, recipe, *, init, **kw):
        acc = 0.5 + int(spec_id(spec), 16) % 400 / 1000
        r = FitResult(acc, 0.01, recipe.steps, [], [{"step": recipe.steps,
                                                     "val_accuracy": acc}], {})
        return CandidateOutcome(spec, get_space(spec["space"]).build(spec), r, {}, 0.01)

    monkeypatch.setattr(trial_mod, "train_candidate", train)
    teacher, data = teacher_and_data
    cfg = dataclasses.replace(search_cfg, space="all", trials=8, steps=5, budget="1MFLOPs")
    out = run_search(cfg, teacher, data)
    record = load_record(out.study)
    trained = [t for t in record.trials if t.trained]
    assert len(trained) == 8 and all(t.cost["macs"] <= 1e6 for t in trained)
    assert len({t.spec["space"] for t in trained}) >= 2
    assert {t.params["family"] for t in out.study.get_trials() if t.user_attrs.get("trained")} \
        == {t.spec["space"] for t in trained}
    front = [t for t in out.study.best_trials if t.user_attrs.get("trained")]
    assert front and {t.number for t in front} <= {t.number for t in trained}
    from kdnas.report import summary

    families = {record.trial(t.number).spec["space"] for t in front}
    info = summary(record, cfg)
    assert ("mixes families" in (info["caveat"] or "")) == (len(families) > 1)


@pytest.mark.slow
def test_a_real_search_over_two_families_reports_and_exports(tmp_path, digits_teacher,
                                                              capsys):
    """As a user types it: `--space resnet,shufflenet`, real training, then the report and
    the export of the front's best, whatever its family."""
    from kdnas.cli import main

    common = ["--workdir", str(tmp_path / "runs")]
    assert main(["search", "--teacher", str(digits_teacher), "--space", "resnet,shufflenet",
                 "--budget", "1MFLOPs", "--trials", "4", "--steps", "30", "--study", "m",
                 "--no-latency", "--no-noise-check", "--reports", str(tmp_path / "reports"),
                 *common]) == 0
    assert "space: resnet,shufflenet" in capsys.readouterr().out
    import pandas as pd

    trials = pd.read_csv(tmp_path / "reports" / "m" / "trials.csv")
    assert (trials[trials.state == "trained"].macs <= 1e6).all()
    assert main(["export", "--study", "m", "--pick", "best", "--format", "pt2", "--out",
                 str(tmp_path / "exp"), *common]) == 0


def test_a_front_of_several_families_says_brief_accuracies_do_not_rank_across_them():
    from kdnas.core.records import StudyRecord, TrialRecord
    from kdnas.core.settings import SearchConfig
    from kdnas.report import summary

    def trial(n, space, macs, acc):
        spec = get_space(space).smallest(**SHAPE)
        return TrialRecord(n, "trained", spec=spec, spec_id=f"s{n}",
                           cost={"macs": macs, "params": 1000}, budget_excess=-0.5,
                           val_accuracy=acc, values=(acc, macs))

    cfg = SearchConfig(space="all", budget="1MFLOPs", noise_check=False)
    mixed = StudyRecord("m", (trial(0, "resnet", 4e5, 0.90), trial(1, "mobilenet", 2e5, 0.85)),
                        num_classes=10)
    assert "mixes families (mobilenet, resnet)" in summary(mixed, cfg)["caveat"]
    # the measured worth of the ranking is quoted for the method the front was ranked with
    assert "not measured for ?" in summary(mixed, cfg)["caveat"]
    for kd, tau in (("dkd-ls", "0.66"), ("fitnets", "0.54")):
        ranked = dataclasses.replace(mixed, trials=tuple(
            dataclasses.replace(t, kd=kd) for t in mixed.trials))
        assert f"with {kd}, Kendall tau {tau}" in summary(ranked, cfg)["caveat"]
    dkd = dataclasses.replace(mixed, trials=tuple(
        dataclasses.replace(t, kd="dkd-ls") for t in mixed.trials))
    assert "0.44 when run again" in summary(dkd, cfg)["caveat"]  # one run's tau is noisy
    one = StudyRecord("o", (trial(0, "resnet", 4e5, 0.90), trial(1, "resnet", 2e5, 0.85)),
                      num_classes=10)
    assert summary(one, cfg)["caveat"] is None
    laddered = StudyRecord("l", tuple(dataclasses.replace(t, rung=3) for t in mixed.trials),
                           num_classes=10)
    assert "read after 3x the brief steps (--rungs)" in summary(laddered, cfg)["caveat"]
