"""The search loop's decisions, in seconds: the trainer is replaced by a stand-in that
returns at once (the loop's one seam, ``train_candidate``), so what is checked is what the
loop decides: which candidate is trained, reused, left to another worker, failed or queued
again, and what the study records."""

from __future__ import annotations

import dataclasses
import zlib

import optuna
import pytest
from optuna.trial import TrialState

import kdnas.search.loop as loop_mod
import kdnas.search.trial as trial_mod
from kdnas.core.errors import KdnasError
from kdnas.distill.candidate import CandidateOutcome
from kdnas.distill.trainer import FitResult
from kdnas.search.loop import run_search
from kdnas.search.storage import load_record, open_study, retry_trial, worker_id
from search_spaces import get_space, spec_id


@pytest.fixture
def fake(monkeypatch):
    """A trainer that answers at once with an accuracy fixed by the spec; ``calls`` lists
    the specs it was asked to train, ``fail`` a set of call indices that raise."""
    state = {"calls": [], "fail": set()}

    def train(ctx, spec, recipe, *, init, **kw):
        state["calls"].append(spec)
        if len(state["calls"]) - 1 in state["fail"]:
            raise RuntimeError("out of memory in a conv")
        acc = 0.5 + (zlib.crc32(spec_id(spec).encode()) % 400) / 1000
        result = FitResult(acc, 0.01, recipe.steps, [{"epoch": 1, "train_loss": 1.0}],
                           [{"step": recipe.steps, "images": recipe.steps * 128,
                             "val_accuracy": acc}], {"student": 0.01})
        return CandidateOutcome(spec, get_space(spec["space"]).build(spec), result, {}, 0.01)

    monkeypatch.setattr(trial_mod, "train_candidate", train)
    return state


@pytest.fixture
def cfg(search_cfg):
    return dataclasses.replace(search_cfg, study="d", trials=4, steps=5)


def _one_candidate_sampler(monkeypatch):
    """A sampler that proposes resnet's smallest candidate every time (use with a study on
    the resnet space)."""
    space = get_space("resnet")
    smallest = {k: min(d.choices) for k, d in space.distributions().items()}
    monkeypatch.setattr(loop_mod, "make_sampler", lambda cfg, data, **_: (
        optuna.samplers.PartialFixedSampler(smallest, optuna.samplers.RandomSampler(seed=0))))


def test_each_trained_candidate_is_told_and_recorded(cfg, teacher_and_data, fake):
    teacher, data = teacher_and_data
    out = run_search(cfg, teacher, data)
    record = load_record(out.study)
    trained = [t for t in record.trials if t.trained]
    assert out.trained == len(trained) == len(fake["calls"]) == 4
    assert [t.spec for t in trained] == fake["calls"]  # each told what it trained
    for t in trained:
        assert t.values[0] == t.val_accuracy and t.cost["macs"] <= 0.5e6
        assert (cfg.study_dir / t.weights).exists() and t.recipe["steps"] == 5


def test_a_repeated_candidate_reuses_its_twins_result(cfg, teacher_and_data, fake,
                                                      monkeypatch):
    teacher, data = teacher_and_data
    _one_candidate_sampler(monkeypatch)
    out = run_search(dataclasses.replace(cfg, trials=2, max_proposals=4, space="resnet"),
                     teacher, data)
    record = load_record(out.study)
    assert len(fake["calls"]) == 1 and out.duplicates == 3
    first, *repeats = record.trials
    assert [t.state for t in repeats] == ["duplicate"] * 3
    assert all(t.val_accuracy == first.val_accuracy for t in repeats)


def test_a_candidate_another_worker_is_training_is_left_to_it(cfg, teacher_and_data, fake,
                                                              monkeypatch):
    """A RUNNING trial of a live worker holds the only candidate: this worker's proposal of
    it is a surplus (pruned, not trained), and the study does not count it."""
    teacher, data = teacher_and_data
    _one_candidate_sampler(monkeypatch)
    small = dataclasses.replace(cfg, trials=1, max_proposals=2, space="resnet")
    study = open_study(small, create=True)
    space = get_space("resnet")
    spec = space.smallest(in_channels=data.in_channels, num_classes=data.num_classes,
                          input_size=data.input_size)
    other = study.ask()
    other.set_user_attr("worker", worker_id())  # alive: this process
    other.set_user_attr("spec_id", spec_id(spec))
    other.set_user_attr("training", True)
    small2 = dataclasses.replace(small, trials=2)
    out = run_search(small2, teacher, data)
    pruned = [t for t in out.study.get_trials() if t.state == TrialState.PRUNED]
    assert pruned and "which another worker is training" in pruned[0].user_attrs["surplus"]
    assert fake["calls"] == []


def test_a_failed_trial_keeps_its_reason_and_three_in_a_row_stop(cfg, teacher_and_data,
                                                                 fake):
    teacher, data = teacher_and_data
    fake["fail"] = {1}
    out = run_search(dataclasses.replace(cfg, trials=2), teacher, data)
    record = load_record(out.study)
    failed = [t for t in record.trials if t.state == "failed"]
    assert out.trained == 2 and len(failed) == 1
    assert "RuntimeError: out of memory in a conv" in failed[0].note
    fake["fail"] = {3, 4, 5}
    with pytest.raises(KdnasError, match="3 trials in a row failed.*run the same command"):
        run_search(dataclasses.replace(cfg, trials=6), teacher, data)
    assert load_record(open_study(cfg, create=False)).trials  # the study keeps its trials


def test_a_queued_retry_trains_the_same_candidate_again(cfg, teacher_and_data, fake):
    """A dead worker's trial, queued again by retry_trial, is the next one trained: the same
    parameters (so the same spec), and its record says which trial it retries."""
    teacher, data = teacher_and_data
    cfg = dataclasses.replace(cfg, space="resnet")  # the trial's parameters are resnet's
    space = get_space("resnet")
    smallest = {k: min(d.choices) for k, d in space.distributions().items()}
    study = open_study(cfg, create=True)
    study.enqueue_trial(smallest)
    dead = study.ask()
    for name, dist in space.distributions().items():
        dead.suggest_categorical(name, dist.choices)
    dead.set_user_attr("worker", "elsewhere:1")
    study.tell(dead, state=TrialState.FAIL)
    assert retry_trial(study, study.get_trials()[-1], "its worker died")
    run_search(dataclasses.replace(cfg, trials=1), teacher, data)
    record = load_record(open_study(cfg, create=False))
    retried = [t for t in record.trials if t.note and t.note.startswith("retry of trial")]
    assert len(retried) == 1 and retried[0].state == "trained"
    assert "retry of trial 0: its worker died" in retried[0].note
    expected = space.sample(optuna.trial.FixedTrial(smallest), in_channels=data.in_channels,
                            num_classes=data.num_classes, input_size=data.input_size)
    assert fake["calls"][0] == expected == retried[0].spec


def test_a_candidate_the_sampler_counted_is_not_built_and_counted_again(cfg, teacher_and_data,
                                                                        fake, monkeypatch):
    """The budget-aware sampler builds and counts each candidate it proposes; the trial takes
    that count (and measures only the latency it lacks) instead of counting again."""
    teacher, data = teacher_and_data
    again, latency = [], []
    real_measure, real_latency = trial_mod.measure, trial_mod.with_latency
    monkeypatch.setattr(trial_mod, "measure", lambda *a, **k: again.append(1) or real_measure(
        *a, **k))
    monkeypatch.setattr(trial_mod, "with_latency", lambda *a, **k: latency.append(1)
                        or real_latency(*a, **k))
    out = run_search(dataclasses.replace(cfg, latency=True), teacher, data)
    record = load_record(out.study)
    assert sum(t.trained for t in record.trials) == 4
    assert again == [] and len(latency) == len(record.trials)
    assert all(t.cost.get("latency_ms") and t.cost["macs"] > 0 for t in record.trials)


def test_trial_timeout_is_auto_off_or_seconds():
    from kdnas.core.settings import SearchConfig

    cfg = SearchConfig(teacher="t.pt")
    assert cfg.trial_limit(30.0) == 10 * 30 + 120 and cfg.trial_limit(None) is None
    assert dataclasses.replace(cfg, trial_timeout="off").trial_limit(30.0) is None
    assert dataclasses.replace(cfg, trial_timeout="90").trial_limit(None) == 90.0
    for bad in ("0", "-5", "soon"):
        with pytest.raises(KdnasError, match="--trial-timeout"):
            dataclasses.replace(cfg, trial_timeout=bad)


def test_a_trial_past_its_time_limit_is_failed_with_the_reason_and_the_search_goes_on(
        cfg, teacher_and_data, monkeypatch):
    """The first candidate trains slowly (its progress reports keep coming, past the limit):
    it is failed with the reason and the next candidates are trained."""
    import time

    teacher, data = teacher_and_data
    calls = []

    def train(ctx, spec, recipe, *, init, progress=None, **kw):
        calls.append(spec)
        for step in range(1, 6 if len(calls) == 1 else 2):
            if len(calls) == 1:
                time.sleep(0.3)
            progress(step, 5, 1.0)
        result = FitResult(0.7, 0.01, recipe.steps, [{"epoch": 1, "train_loss": 1.0}],
                           [{"step": recipe.steps, "images": 640, "val_accuracy": 0.7}],
                           {"student": 0.01})
        return CandidateOutcome(spec, get_space(spec["space"]).build(spec), result, {}, 0.01)

    monkeypatch.setattr(trial_mod, "train_candidate", train)
    out = run_search(dataclasses.replace(cfg, trial_timeout="0.5", trials=2), teacher, data)
    failed = [t for t in out.study.trials if t.state == TrialState.FAIL]
    assert len(failed) == 1
    assert "still training after its limit" in failed[0].user_attrs["error"]
    assert sum(t.user_attrs.get("trained", False) for t in out.study.trials) == 2
