from __future__ import annotations

import dataclasses

import optuna
import pytest
import torch
from optuna.trial import TrialState

import kdnas.search.loop as study_mod
import kdnas.search.trial as trial_mod
import kdnas.search.storage as storage_mod
from kdnas.core.settings import SearchConfig
from kdnas.core.errors import KdnasError
from kdnas.search.loop import run_search
from kdnas.search.storage import fail_stale_trials, load_record, open_study, trained_count


@pytest.fixture
def setup(tmp_path, teacher_and_data, digits_teacher):
    teacher, data = teacher_and_data
    cfg = SearchConfig(study="t", teacher=str(digits_teacher), data="digits",
                       budget="0.5MFLOPs", trials=3, epochs=1, val_fraction=0.2,
                       workdir=str(tmp_path / "runs"), reports=str(tmp_path / "reports"),
                       latency=False, references=("none",))
    return cfg, teacher, data


def test_no_candidate_over_budget_is_ever_trained(setup, monkeypatch):
    """With a sampler blind to the budget, many proposals are over it: each is recorded as
    infeasible through set_constraint, and the trainer never sees one."""
    cfg, teacher, data = setup
    cfg = dataclasses.replace(cfg, budget="2MFLOPs", trials=2, max_proposals=200)
    monkeypatch.setattr(study_mod, "make_sampler",
                        lambda cfg, data, **_: optuna.samplers.RandomSampler(seed=0))
    trained_macs = []
    real_train = trial_mod.train_candidate

    def spy(ctx, spec, *a, **k):
        from kdnas.cost import count_macs
        from search_spaces import build

        trained_macs.append(count_macs(build(spec), data.input_shape))
        return real_train(ctx, spec, *a, **k)

    monkeypatch.setattr(trial_mod, "train_candidate", spy)
    out = run_search(cfg, teacher, data)
    trials = out.study.get_trials()
    infeasible = [t for t in trials if not t.user_attrs.get("trained")]
    assert len(trained_macs) == 2 and all(m <= 2e6 for m in trained_macs)
    assert infeasible, "a random sampler should propose something over 2M MACs"
    for t in infeasible:
        assert t.constraints["budget"] > 0 and t.user_attrs["cost"]["macs"] > 2e6
    for t in trials:
        if t.user_attrs.get("trained"):
            assert t.constraints["budget"] <= 0
    front = out.study.best_trials  # Optuna's own front honours the constraint
    assert front and all(t.user_attrs["trained"] for t in front)
    # the signals are recorded only on request (--signals): none here, and no time on them
    record = load_record(out.study)
    assert all(t.signals == {} and t.time.get("signals", 0) == 0
               for t in record.trials if t.trained)


@pytest.mark.slow
def test_budget_aware_sampler_rarely_proposes_over_budget(setup):
    cfg, teacher, data = setup
    out = run_search(dataclasses.replace(cfg, trials=4), teacher, data)
    assert out.trained == 4
    assert out.infeasible <= 1


@pytest.mark.slow
def test_resume_keeps_trials_and_continues_the_count(setup):
    cfg, teacher, data = setup
    first = run_search(dataclasses.replace(cfg, trials=2), teacher, data)
    numbers = [t.number for t in first.study.get_trials()]
    second = run_search(dataclasses.replace(cfg, trials=4), teacher, data)
    trials = second.study.get_trials()
    assert [t.number for t in trials][: len(numbers)] == numbers
    assert trained_count(second.study) == 4
    assert (cfg.study_dir / "manifest.json").exists()
    assert "resumed" in (cfg.study_dir / "manifest.json").read_text()
    # weights of every trained trial are kept in the study folder
    for t in trials:
        if t.user_attrs.get("trained"):
            saved = torch.load(cfg.study_dir / t.user_attrs["weights"], weights_only=True)
            assert saved["spec"] == t.user_attrs["spec"]
    third = run_search(dataclasses.replace(cfg, trials=4), teacher, data)
    assert len(third.study.get_trials()) == len(trials)  # nothing left to do


def test_resume_with_other_settings_is_refused(setup):
    cfg, teacher, data = setup
    run_search(dataclasses.replace(cfg, trials=1), teacher, data)
    with pytest.raises(KdnasError, match="other settings.*budget"):
        run_search(dataclasses.replace(cfg, trials=2, budget="1MFLOPs"), teacher, data)


def test_budget_below_the_space_is_refused_before_training(setup):
    cfg, teacher, data = setup
    with pytest.raises(KdnasError, match=r"cheapest candidate.*costs .*MACs"):
        run_search(dataclasses.replace(cfg, budget="10kFLOPs"), teacher, data)
    assert not (cfg.study_dir / "study.db").exists()


def test_trials_of_a_dead_worker_are_marked_failed(setup):
    cfg, _, _ = setup
    study = open_study(cfg, create=True)
    t = study.ask()
    t.set_user_attr("worker", f"{storage_mod.socket.gethostname()}:999999999")
    alive = study.ask()
    alive.set_user_attr("worker", storage_mod.worker_id())
    assert fail_stale_trials(study) == 1
    states = {tr.number: tr.state for tr in study.get_trials()}
    assert states == {t.number: TrialState.FAIL, alive.number: TrialState.RUNNING}


def test_search_with_a_user_space_and_export(setup, tmp_path):
    from pathlib import Path

    from kdnas.ship.export import export_trial
    from kdnas.report import pick_trial

    cfg, teacher, data = setup
    ref = f"{Path(__file__).resolve().parent.parent / 'docs/examples/plain_cnn.py'}:PlainCNN"
    cfg = dataclasses.replace(cfg, space=ref, trials=2, budget="0.2MFLOPs")
    out = run_search(cfg, teacher, data)
    assert out.trained == 2
    for t in out.study.get_trials():
        if t.user_attrs.get("trained"):
            assert t.user_attrs["spec"]["space"] == ref
            assert t.user_attrs["cost"]["macs"] <= 0.2e6
    record = load_record(out.study)
    r = export_trial(record, cfg, pick_trial(record, "best"), data, tmp_path / "x")
    assert r.max_abs_diff["pt2"] < 1e-4 and r.max_abs_diff["onnx"] < 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("space", ["mobilenet", "shufflenet"])
def test_search_other_families(setup, space):
    cfg, teacher, data = setup
    out = run_search(dataclasses.replace(cfg, space=space, trials=2, budget="2MFLOPs"),
                     teacher, data)
    assert out.trained == 2 and out.infeasible == 0


def test_kd_auto_searches_the_method_and_shares_one_teacher_cache(setup):
    from kdnas.search.trial import AUTO_METHODS

    cfg, teacher, data = setup
    out = run_search(dataclasses.replace(cfg, kd="auto", trials=3), teacher, data)
    trained = [t for t in out.study.get_trials() if t.user_attrs.get("trained")]
    assert len(trained) == 3
    for t in trained:
        assert t.params["kd"] in AUTO_METHODS and t.user_attrs["kd"] == t.params["kd"]
        assert 0.1 <= t.params["kd_weight_scale"] <= 10
    caches = [d for d in (cfg.study_dir / "teacher_cache").iterdir() if d.is_dir()]
    assert len(caches) == 1 and (caches[0] / "COMPLETE").exists()


@pytest.mark.slow
def test_latency_budget_and_objectives(setup):
    """--budget in ms gates on measured latency before training; --objectives latency,macs
    makes a three-objective study whose report front is accuracy versus latency."""
    from kdnas.report import front_frame, trials_frame

    cfg, teacher, data = setup
    # 5 ms at batch 1, one thread: digits students of up to about 0.8M MACs (at 50 ms the
    # coverage aims at the largest the space holds, 40 s of training for two trials)
    cfg = dataclasses.replace(cfg, budget="5ms", objectives=("latency", "macs"), latency=True,
                              trials=2)
    out = run_search(cfg, teacher, data)
    assert len(out.study.directions) == 3
    trained = [t for t in out.study.get_trials() if t.user_attrs.get("trained")]
    for t in trained:
        cost = t.user_attrs["cost"]
        assert t.values[1] == pytest.approx(cost["latency_ms"]) and t.values[2] == cost["macs"]
        assert cost["latency_ms"] <= 5 and cost["latency_setting"].startswith("cpu, 1 threads")
    front = front_frame(trials_frame(load_record(out.study)), "latency_ms")
    assert len(front) >= 1


def test_training_time_as_an_objective(setup):
    """--objectives macs,train_time: every candidate is told its step time (measured before
    training, the same figure the trial records), the study's metric is named for it, and
    the report draws accuracy against it."""
    from kdnas.report import write_report

    cfg, teacher, data = setup
    cfg = dataclasses.replace(cfg, objectives=("macs", "train_time"), trials=2,
                              study="train-time")
    out = run_search(cfg, teacher, data)
    assert out.study.metric_names == ["val_accuracy", "macs", "train_step_ms"]
    told = [t for t in out.study.get_trials() if t.values is not None]
    assert told
    for t in told:
        assert t.values[2] == pytest.approx(t.user_attrs["cost"]["train_step_ms"])
        assert t.values[2] > 0
    record = load_record(out.study)
    assert set(record.hypervolume_reference) == {"train_step_ms"}  # MACs: the budget's
    report = write_report(record, cfg)
    assert (report / "pareto_train_time.png").stat().st_size > 1000
    assert "training step time" in (report / "pareto.md").read_text()


def test_unknown_objective_is_refused():
    with pytest.raises(KdnasError, match="objectives"):
        SearchConfig(objectives=("energy",))


def test_references_are_trained_once_and_reported(setup):
    from kdnas.report import references_frame, trials_frame, write_report

    cfg, teacher, data = setup
    cfg = dataclasses.replace(cfg, trials=1, references=("resnet8", "mobilenet:mobilenetv2_half"))
    out = run_search(cfg, teacher, data)
    refs = references_frame(load_record(out.study))
    assert list(refs.name) == ["resnet8", "mobilenet:mobilenetv2_half"]
    assert (refs.val_accuracy > 0).all() and refs.macs.notna().all()
    assert trained_count(out.study) == 1  # references are not search trials
    assert len(trials_frame(load_record(out.study))) == len(out.study.get_trials())
    before = out.study.user_attrs["references"]
    again = run_search(dataclasses.replace(cfg, trials=1), teacher, data)
    assert again.study.user_attrs["references"] == before  # not retrained
    page = (write_report(load_record(again.study), cfg) / "report.html").read_text()
    assert "Hand-designed students" in page and "mobilenetv2_half" in page


def test_a_resumed_search_draws_new_candidates(setup):
    cfg, teacher, data = setup
    first = run_search(dataclasses.replace(cfg, trials=1), teacher, data)
    spec0 = first.study.get_trials()[0].user_attrs["spec"]
    again = run_search(dataclasses.replace(cfg, trials=2), teacher, data)
    specs = [t.user_attrs["spec"] for t in again.study.get_trials()]
    assert specs[0] == spec0 and specs[1] != spec0


def test_a_repeated_candidate_is_not_trained_again(setup, monkeypatch):
    """A sampler that proposes one candidate only: it is trained once, every repeat reuses
    its result, and the count says so."""
    cfg, teacher, data = setup
    cfg = dataclasses.replace(cfg, trials=2, max_proposals=4, space="resnet")
    space = __import__("search_spaces").get_space("resnet")
    smallest = {k: min(d.choices) for k, d in space.distributions().items()}
    monkeypatch.setattr(study_mod, "make_sampler", lambda cfg, data, **_: (
        optuna.samplers.PartialFixedSampler(smallest, optuna.samplers.RandomSampler(seed=0))))
    calls = []
    real_train = trial_mod.train_candidate
    monkeypatch.setattr(trial_mod, "train_candidate",
                        lambda *a, **k: calls.append(1) or real_train(*a, **k))
    out = run_search(cfg, teacher, data)
    record = load_record(out.study)
    assert len(calls) == 1 and out.trained == 1 and out.duplicates == 3
    first, *repeats = record.trials
    assert first.state == "trained" and [t.state for t in repeats] == ["duplicate"] * 3
    assert all(t.val_accuracy == first.val_accuracy and t.spec_id == first.spec_id
               for t in repeats)
    from kdnas.report import summary

    info = summary(record, cfg)
    assert info["trials_by_state"] == {"trained": 1, "duplicate": 3}
    assert info["front_size"] == 1


def test_noise_is_measured_on_the_knee_and_a_chance_level_front_is_called_so(setup):
    from kdnas.report import summary
    from kdnas.report.frames import noise_text

    cfg, teacher, data = setup
    # 2 steps of training: every student sits near chance (10 classes)
    out = run_search(dataclasses.replace(cfg, epochs=None, steps=2, trials=2), teacher, data)
    record = load_record(out.study)
    info = summary(record, cfg)
    noise = out.study.user_attrs["noise"]
    assert noise["trial"] == info["knee_trial"] and noise["seeds"] == [0, 1]
    assert noise["spread"] == pytest.approx(abs(noise["accuracies"][0] -
                                                noise["accuracies"][1]))
    assert "near chance" in info["caveat"] and "--steps, now 2" in info["caveat"]
    assert "seed spread" in noise_text(noise)


def test_a_front_far_above_chance_and_outside_the_spread_has_no_caveat():
    from kdnas.core.records import StudyRecord, TrialRecord
    from kdnas.report import summary

    cfg = SearchConfig(study="c", budget="1MFLOPs", latency=False)

    def trial(n, acc, macs):
        return TrialRecord(n, "trained", spec=None, spec_id=str(n),
                           cost={"macs": macs, "params": 1}, budget_excess=-0.5,
                           val_accuracy=acc, recipe={"steps": 400})

    def record(noise):
        return StudyRecord("c", (trial(0, 0.80, 2e5), trial(1, 0.90, 5e5)), num_classes=10,
                           noise=noise)

    narrow = {"trial": 1, "seeds": [0, 1], "accuracies": [0.90, 0.88], "spread": 0.02}
    assert summary(record(narrow), cfg)["caveat"] is None
    wide = dict(narrow, accuracies=[0.90, 0.78], spread=0.12)
    assert "within the seed spread" in summary(record(wide), cfg)["caveat"]


def test_a_teacher_cache_over_its_limit_is_not_written(setup, caplog):
    """--cache-limit: a study whose cache would exceed it runs the teacher in every trial,
    says so once, and writes nothing to disk but a marker. (With FitNets: its stage features
    make the cache large; a logit method's fits in a few kB here.)"""
    cfg, teacher, data = setup
    out = run_search(dataclasses.replace(cfg, trials=2, cache_limit_gb=1e-4, kd="feature"),
                     teacher, data)
    assert out.trained == 2
    warned = [r for r in caplog.records if "teacher cache would take" in r.message]
    assert len(warned) == 1
    cache = cfg.study_dir / "teacher_cache"
    assert [p for p in cache.iterdir() if not p.name.startswith(".")] == []


def test_the_default_cache_limit_is_half_the_free_disk_where_the_study_writes(setup, caplog,
                                                                              monkeypatch):
    """--cache-limit auto (the default): a cache larger than half the free disk of the study's
    file system is not written (said once, for the study); with room, it is written."""
    import collections

    import kdnas.distill.cache as cache_mod

    cfg, teacher, data = setup
    assert cfg.cache_limit_gb == "auto"
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(cache_mod.shutil, "disk_usage", lambda p: usage(10**6, 0, 2 * 10**4))
    assert cache_mod.disk_limit(cfg.study_dir / "teacher_cache" / "x") == 10**4
    out = run_search(dataclasses.replace(cfg, trials=2, kd="feature"), teacher, data)
    assert out.trained == 2
    assert len([r for r in caplog.records if "teacher cache would take" in r.message
                and "of the free disk" in r.message]) == 1
    cache = cfg.study_dir / "teacher_cache"
    assert [p for p in cache.iterdir() if not p.name.startswith(".")] == []
    monkeypatch.setattr(cache_mod.shutil, "disk_usage", lambda p: usage(10**12, 0, 10**11))
    run_search(dataclasses.replace(cfg, trials=3, kd="feature"), teacher, data)
    assert any((p / "COMPLETE").exists() for p in cache.iterdir() if p.is_dir())


def test_each_trial_records_where_its_time_went_and_the_report_shows_it(setup, monkeypatch):
    """The phases add up to the trial's time (nothing counted twice, little unaccounted),
    and pareto.md states the time per trial. (The step-time estimate is taken from 200-step
    trials on; these have 9 steps, so the threshold is lowered here and checked below.)"""
    import pandas as pd

    from kdnas.report import write_report
    from kdnas.report.frames import time_per_trial

    cfg, teacher, data = setup
    monkeypatch.setattr(trial_mod, "ESTIMATE_MIN_STEPS", 1)
    out = run_search(dataclasses.replace(cfg, trials=2, signals=True), teacher, data)
    record = load_record(out.study)
    for t in record.trials:
        if not t.trained:
            continue
        phases = {k: v for k, v in t.time.items() if k != "total"}
        assert {"propose", "estimate", "student", "teacher", "data", "eval", "storage"} \
            <= set(phases)
        assert t.cost["train_step_ms"] > 0  # measured before training
        assert all(v >= 0 for v in phases.values())
        assert sum(phases.values()) == pytest.approx(t.time["total"], rel=0.02, abs=0.02)
        assert t.time["total"] >= t.train_seconds
        assert phases["student"] > 0 and phases["propose"] > 0
    out_dir = write_report(record, cfg)
    text = (out_dir / "pareto.md").read_text()
    assert "s per trained trial (median of 2): " in text
    assert "student forward/backward" in text and "proposal (sampling" in text
    assert "the training time told before each trial" in text
    est = time_per_trial(record)["estimate"]
    assert est["trials"] == 2 and est["median_ratio"] > 0 and est["told"]
    frame = pd.read_csv(out_dir / "trials.csv")
    assert frame.loc[frame.state == "trained", "train_step_ms"].gt(0).all()
    assert frame.loc[frame.state == "trained", "estimate_seconds"].gt(0).all()
    # every trained trial's signals, with their cost, in the record and the table
    from kdnas.core.attrs import SIGNAL_NAMES
    trained = frame[frame.state == "trained"]
    for name in SIGNAL_NAMES:
        assert trained[f"signal_{name}"].notna().all(), name
    assert trained["signals_seconds"].gt(0).all()
    assert all(t.time["signals"] > 0 for t in record.trials if t.trained)
    # the brief training's learning curves: drawn, and read in one sentence
    assert (out_dir / "learning_curves.png").stat().st_size > 10_000
    assert "Learning curves (learning_curves.png): " in text
    assert "learning curves of the brief training" in (out_dir / "report.html").read_text()


def test_the_report_says_which_front_students_were_still_learning():
    """A front student whose accuracy rose by more than twice the curve subset's standard
    error over its last interval is named as still learning; a levelled-off front is said
    to be unlikely to reorder."""
    from kdnas.core.records import StudyRecord, TrialRecord
    from kdnas.report import summary
    from kdnas.report.frames import curve_text

    cfg = SearchConfig(study="c", budget="1MFLOPs", latency=False)

    def trial(n, acc, macs, last_two):
        pts = tuple({"step": s, "val_subset_accuracy": a, "val_images": 256}
                    for s, a in zip((320, 400)[:len(last_two)], last_two, strict=True))
        return TrialRecord(n, "trained", spec=None, spec_id=str(n), budget_excess=-0.5,
                           cost={"macs": macs, "params": 1}, val_accuracy=acc,
                           recipe={"steps": 400}, learning_curve=pts)

    # 256 images: 2 standard errors = 1/16 = 6.25 points
    climbing = StudyRecord("c", (trial(0, 0.60, 2e5, (0.50, 0.55)),
                                 trial(1, 0.70, 5e5, (0.55, 0.65))), num_classes=10)
    c = summary(climbing, cfg)["curves"]
    assert c["climbing"] == [1] and c["threshold"] == pytest.approx(0.0625)
    assert c["last_steps"] == 80 and c["steps"] == 400
    assert "1 of the front's 2 students" in curve_text(c) and "(trials 1)" in curve_text(c)
    assert "may change with longer training" in curve_text(c)
    flat = StudyRecord("c", (trial(0, 0.60, 2e5, (0.60, 0.60)),
                             trial(1, 0.70, 5e5, (0.70, 0.71))), num_classes=10)
    c = summary(flat, cfg)["curves"]
    assert c["climbing"] == [] and "levelled off" in curve_text(c)
    assert summary(StudyRecord("c", (trial(0, 0.6, 2e5, ()),)), cfg)["curves"] is None


def test_teacher_accuracy_is_kept_across_runs(setup, tmp_path, monkeypatch):
    """The teacher check evaluates a teacher on a split once: a repeated search reads the
    figure back; other normalisation (other inputs) is evaluated afresh."""
    from kdnas.distill import evaluate
    from kdnas.teacher.prepare import teacher_accuracy

    monkeypatch.setenv("KDNAS_CACHE", str(tmp_path / "cache"))
    _, teacher, data = setup
    acc, cached = teacher_accuracy(teacher, data)
    assert not cached
    assert acc == evaluate(teacher.module, data, "val", channels_last=teacher.channels_last)
    assert teacher_accuracy(teacher, data) == (acc, True)
    other = data.with_normalization([m + 0.5 for m in data.mean], data.std)
    assert teacher_accuracy(teacher, other)[1] is False


def test_short_trials_skip_the_step_time_estimate(setup):
    """A 9-step trial would spend a third of its time estimating its steps: no estimate."""
    cfg, teacher, data = setup
    out = run_search(dataclasses.replace(cfg, trials=1, study="short"), teacher, data)
    trained = [t for t in load_record(out.study).trials if t.trained]
    assert trained and all(t.cost.get("train_step_ms") is None for t in trained)
    assert all(t.time["estimate"] < 0.01 for t in trained)


def test_the_training_time_told_follows_what_the_trials_took(setup, monkeypatch):
    """The first trial is told its student's step time x its steps; each later one that, scaled
    by what this process's earlier trials took against the same product (the teacher, the
    validation and a busier machine are in a trial's time, not in the probe)."""
    import statistics

    from kdnas.report.frames import time_per_trial

    cfg, teacher, data = setup
    monkeypatch.setattr(trial_mod, "ESTIMATE_MIN_STEPS", 1)
    out = run_search(dataclasses.replace(cfg, trials=3, study="told", noise_check=False),
                     teacher, data)
    record = load_record(out.study)
    trained = sorted((t for t in record.trials if t.trained), key=lambda t: t.number)
    assert len(trained) == 3
    raw = [t.cost["train_step_ms"] * t.recipe["steps"] / 1e3 for t in trained]
    took = [t.train_seconds / r for t, r in zip(trained, raw, strict=True)]
    assert trained[0].estimate_seconds == pytest.approx(raw[0], abs=0.006)
    assert trained[1].estimate_seconds == pytest.approx(raw[1] * took[0], abs=0.006)
    assert trained[2].estimate_seconds == pytest.approx(
        raw[2] * statistics.median(took[:2]), abs=0.006)
    est = time_per_trial(record)["estimate"]
    assert est["told"] and est["trials"] == 3


def test_a_library_search_keeps_the_teacher_accuracy_in_its_record(setup):
    """A caller that skips the CLI (a benchmark script) still gets the teacher's accuracy in
    the study: measured when the study is made, on the validation split."""
    from kdnas.distill import evaluate

    cfg, teacher, data = setup
    assert teacher.meta.get("val_accuracy_measured") is None
    cfg = dataclasses.replace(cfg, trials=1, noise_check=False, steps=5, epochs=None)
    out = run_search(cfg, teacher, data)
    acc = load_record(out.study).teacher_val_accuracy
    assert acc > 0.85 and acc == pytest.approx(
        evaluate(teacher.module, data, "val", channels_last=teacher.channels_last))


def test_a_candidate_that_does_not_train_is_retried_stabler_then_failed_off_the_front(
        setup, monkeypatch):
    """Trial 0 fails its first training and trains with the stabler recipe (half the peak
    learning rate); the next fails both: it is failed with its reason, counted (never
    trained again on resume), kept off the front and out of the sampler's accuracies."""
    from kdnas.report import trials_frame, write_report

    cfg, teacher, data = setup
    cfg = dataclasses.replace(cfg, trials=2, noise_check=False)
    monkeypatch.setattr(trial_mod, "CHECK_MIN_STEPS", 1)
    lrs, verdicts = [], iter([True, False, True, True])
    real_train = trial_mod.train_candidate

    def spy(ctx, spec, recipe, **k):
        lrs.append(recipe.lr)
        return real_train(ctx, spec, recipe, **k)

    monkeypatch.setattr(trial_mod, "train_candidate", spy)
    monkeypatch.setattr(trial_mod, "collapsed", lambda acc, classes, losses: (
        "did not train: forced" if next(verdicts) else None))
    out = run_search(cfg, teacher, data)
    assert lrs == [0.1, 0.05, 0.1, 0.05]
    trials = [t for t in out.study.get_trials() if t.user_attrs.get("spec")]
    ok, bad = trials
    assert ok.state == TrialState.COMPLETE and "forced" in ok.user_attrs["retried"]
    assert bad.state == TrialState.FAIL and "forced" in bad.user_attrs["training_failed"]
    assert trained_count(out.study) == 2
    assert all(t.number != bad.number for t in out.study.best_trials)
    record = load_record(out.study)
    df = trials_frame(record)
    row = df[df.trial == bad.number].iloc[0]
    assert row.state == "did not train" and "forced" in row.note
    assert "stabler recipe" in df[df.trial == ok.number].iloc[0].note
    write_report(record, cfg)
    lrs.clear()
    again = run_search(cfg, teacher, data)  # resumed: nothing is trained twice
    assert lrs == [] and trained_count(again.study) == 2


@pytest.mark.slow
def test_auto_references_are_the_largest_fitting_preset_of_each_family_told_first(setup):
    from kdnas.report import write_report
    from kdnas.search.references import chosen_references
    from kdnas.cost import count_macs
    from search_spaces import get_space

    cfg, teacher, data = setup
    cfg = dataclasses.replace(cfg, space="all", budget="1MFLOPs", trials=1,
                              references=("auto",), noise_check=False)
    picked = chosen_references(cfg, data)
    assert 1 <= len(picked) <= 3
    space = get_space("all")
    for name, spec, cost in picked:
        fam = space.members[spec["space"]]
        assert cost.macs <= 1e6
        bigger = [n for n in fam.presets if count_macs(space.build(fam.preset(
            n, in_channels=1, num_classes=10, input_size=8)), data.input_shape) > cost.macs]
        assert all(count_macs(space.build(fam.preset(n, in_channels=1, num_classes=10,
                                                     input_size=8)), data.input_shape) > 1e6
                   for n in bigger), f"{name} is not the largest {spec['space']} that fits"
    out = run_search(cfg, teacher, data)
    told = [t for t in out.study.get_trials() if t.user_attrs.get("reference")]
    refs = out.study.user_attrs["references"]
    assert set(refs) == {n for n, _, _ in picked} and told
    assert all(t.number < min(s.number for s in out.study.get_trials()
                              if s.user_attrs.get("trained")) for t in told)
    assert trained_count(out.study) == 1  # references are not counted as search trials
    page = (write_report(load_record(out.study), cfg) / "report.html").read_text()
    assert "Against hand design" in page and "best hand-designed reference" in page
    none = run_search(dataclasses.replace(cfg, study="n", references=("none",)), teacher, data)
    assert not none.study.user_attrs.get("references")
