"""Multi-fidelity promotion in the search (``--rungs``): who is trained on, from what, what the
record and the report then say, and that an interrupted promotion is trained again and a
finished one never is."""

from __future__ import annotations

import dataclasses

import pytest

import kdnas.search.trial as trial_mod
import kdnas.distill.candidate as candidate_mod
from kdnas.core.errors import KdnasError
from kdnas.core.config import load_config
from kdnas.distill.candidate import CandidateOutcome
from kdnas.distill.trainer import FitResult
from kdnas.report import pick_trial, summary, trials_frame, write_report
from kdnas.search.loop import run_search
from kdnas.search.storage import load_record, open_study
from search_spaces import get_space, spec_id


@pytest.fixture
def fake(monkeypatch):
    """A trainer that answers at once: accuracy grows with the steps trained in all; a
    promotion starts from the weights file it is given (recorded in ``starts``)."""
    state = {"calls": [], "starts": [], "stop_at": None}

    def train(ctx, spec, recipe, *, init, start=None, **kw):
        state["calls"].append((spec_id(spec), recipe.steps))
        if state["stop_at"] is not None and len(state["calls"]) == state["stop_at"]:
            raise KeyboardInterrupt
        before = 0
        if start is not None:
            import torch

            before = torch.load(start, weights_only=True)["steps"]
            state["starts"].append(str(start))
        total = before + recipe.steps
        acc = min(0.99, 0.3 + int(spec_id(spec), 16) % 300 / 1000 + total / 1000)
        result = FitResult(acc, 0.01, recipe.steps, [], [{"step": recipe.steps,
                                                          "val_accuracy": acc}], {})
        return CandidateOutcome(spec, get_space(spec["space"]).build(spec), result, {}, 0.01,
                                before)

    for mod in (trial_mod, candidate_mod):
        monkeypatch.setattr(mod, "train_candidate", train)
    return state


@pytest.fixture
def cfg(search_cfg):
    return dataclasses.replace(search_cfg, study="g", trials=6, steps=10, rungs=(1, 3),
                               budget="1MFLOPs")


def test_rungs_are_validated():
    assert load_config(None, {"rungs": "1,4,8"}).rungs == (1, 4, 8)
    for bad in ("4,8", "1", "1,4,4", "1,x"):
        with pytest.raises(KdnasError, match="rungs"):
            load_config(None, {"rungs": bad})


def test_the_best_of_each_band_are_trained_on_and_the_front_is_read_at_the_top(
        cfg, teacher_and_data, fake):
    teacher, data = teacher_and_data
    run_search(cfg, teacher, data)
    record = load_record(open_study(cfg, create=False))
    trained = [t for t in record.trials if t.trained]
    promoted = [t for t in trained if t.rung == 3]
    assert 2 <= len(promoted) < len(trained)
    for t in promoted:  # trained on from its own brief weights, to 30 steps in all
        assert t.brief_accuracy < t.val_accuracy == t.rungs[3]["val_accuracy"]
        assert t.rungs[3]["steps"] == 30 and t.weights == f"trials/{t.number}/rung3x.pt"
        assert (cfg.study_dir / t.weights).exists()
    assert sorted(fake["starts"]) == sorted(str(cfg.study_dir / f"trials/{t.number}/student.pt")
                                            for t in promoted)
    assert all(steps == 20 for _, steps in fake["calls"][len(trained):])  # 10 -> 30 steps
    df = trials_frame(record)
    from kdnas.report import front_frame

    front = front_frame(df, cfg.cost_columns)
    assert set(front.trial) <= {t.number for t in promoted}
    assert pick_trial(record, "knee") in {t.number for t in promoted}
    info = summary(record, cfg)
    assert info["rungs"]["reached"] == {"1": len(trained), "3": len(promoted)}
    out = write_report(record, cfg)
    md = (out / "pareto.md").read_text()
    assert "## Rungs" in md and "| 3x |" in md and "Rungs</h2>" in (out / "report.html"
                                                                      ).read_text()


def test_an_interrupted_promotion_is_trained_again_and_a_finished_one_never(
        cfg, teacher_and_data, fake):
    teacher, data = teacher_and_data
    fake["stop_at"] = 6 + 2  # the second promotion is cut off
    out = run_search(cfg, teacher, data)
    assert out.interrupted
    first = dict(open_study(cfg, create=False).user_attrs.get("rungs", {}))
    assert len(first) == 1
    fake["stop_at"] = None
    calls = len(fake["calls"])
    run_search(cfg, teacher, data)
    again = open_study(cfg, create=False).user_attrs["rungs"]
    assert set(first) < set(again) and again[next(iter(first))] == first[next(iter(first))]
    trained_now = fake["calls"][calls:]  # only the promotions not recorded, each once
    assert len(trained_now) == len(again) - len(first) and all(s == 20 for _, s in trained_now)
    finished = load_record(open_study(cfg, create=False)).trial(int(next(iter(first))))
    assert (finished.spec_id, 20) not in trained_now
    calls = len(fake["calls"])
    run_search(cfg, teacher, data)
    assert len(fake["calls"]) == calls  # everything done: nothing trained again


@pytest.mark.slow
def test_a_real_search_with_rungs_exports_its_top_rung_knee(tmp_path, digits_teacher):
    """Real training up two rungs, then `kdnas export --pick knee`: export rebuilds the top
    rung's weights and checks their accuracy against the record."""
    from kdnas.cli import main

    common = ["--workdir", str(tmp_path / "runs")]
    assert main(["search", "--teacher", str(digits_teacher), "--budget", "0.5MFLOPs",
                 "--trials", "4", "--steps", "20", "--rungs", "1,2", "--study", "r",
                 "--no-latency", "--reports", str(tmp_path / "reports"), *common]) == 0
    record = load_record(open_study(load_config(None, {"study": "r",
                                                       "workdir": str(tmp_path / "runs")}),
                                    create=False))
    knee = pick_trial(record, "knee")
    assert record.trial(knee).rung == 2
    # the noise check trained the knee again up the same rungs, with another seed
    assert record.noise["trial"] == knee
    assert record.noise["accuracies"][0] == record.trial(knee).val_accuracy
    assert main(["export", "--study", "r", "--pick", "knee", "--format", "pt2", "--out",
                 str(tmp_path / "exp"), *common]) == 0


def test_only_the_machine_that_made_the_study_trains_its_promotions(cfg, teacher_and_data,
                                                                    fake):
    """Machines sharing a database each run worker 0: the one that made the study (its
    lead_host) trains the promotions, the others train candidates only."""
    teacher, data = teacher_and_data
    run_search(dataclasses.replace(cfg, trials=3), teacher, data)
    study = open_study(cfg, create=False)
    assert study.user_attrs["lead_host"] == __import__("socket").gethostname()
    promoted = dict(study.user_attrs.get("rungs", {}))
    study.set_user_attr("lead_host", "another-machine")
    seen = []
    run_search(cfg, teacher, data, on_event=seen.append)
    study = open_study(cfg, create=False)
    assert sum(1 for t in load_record(study).trials if t.trained) == 6
    assert study.user_attrs.get("rungs", {}) == promoted  # nothing promoted here
    assert seen[0].lead == "another-machine"
    study.set_user_attr("lead_host", __import__("socket").gethostname())
    run_search(cfg, teacher, data)
    assert set(open_study(cfg, create=False).user_attrs["rungs"]) > set(promoted)


def test_a_promotion_that_fails_keeps_the_candidates_last_rung_and_the_search_goes_on(
        cfg, teacher_and_data, fake, monkeypatch, capsys):
    """The first promotion diverges: it is recorded as failed with the reason, never tried
    again, the candidate stays at rung 1x with its brief accuracy, and the other promotions
    and the report go on."""
    from kdnas.cli.progress import SearchProgress

    teacher, data = teacher_and_data
    real = candidate_mod.train_candidate
    promotions = []

    def diverges(ctx, spec, recipe, *, init, start=None, **kw):
        if start is not None:
            promotions.append(spec_id(spec))
            if len(promotions) == 1:
                raise KdnasError("training diverged: loss nan at step 3 of 20")
        return real(ctx, spec, recipe, init=init, start=start, **kw)

    monkeypatch.setattr(candidate_mod, "train_candidate", diverges)
    run_search(cfg, teacher, data, on_event=SearchProgress(cfg))
    study = open_study(cfg, create=False)
    failed = [n for n, r in study.user_attrs["rungs"].items() if "failed" in r.get("3", {})]
    assert len(failed) == 1 and "diverged" in study.user_attrs["rungs"][failed[0]]["3"][
        "failed"]
    record = load_record(study)
    t = record.trial(int(failed[0]))
    assert t.rung == 1 and t.val_accuracy == t.brief_accuracy and not t.rungs
    assert any(r.rung == 3 for r in record.trials if r.trained)  # the others went on
    assert "promotion of trial" in capsys.readouterr().out
    n = len(promotions)
    run_search(cfg, teacher, data)
    assert len(promotions) == n  # a failed promotion is not tried again
    write_report(record, cfg)
