from __future__ import annotations

import dataclasses

import pytest
import torch

from kdnas.core.kd_methods import DISTILL_DEFAULT, SEARCH_DEFAULT, canonical_method
from kdnas.core.settings import SearchConfig
from kdnas.ship.final import distill_trial, final_method, method_tag
from kdnas.report import pick_trial, write_report
from kdnas.search.loop import run_search
from kdnas.search.storage import load_record


@pytest.fixture(scope="module")
def study_with_a_student(tmp_path_factory, digits_teacher):
    from kdnas.teacher.prepare import prepare

    tmp = tmp_path_factory.mktemp("final")
    cfg = SearchConfig(study="f", teacher=str(digits_teacher), budget="1MFLOPs", trials=1,
                       epochs=1, workdir=str(tmp / "runs"), reports=str(tmp / "reports"),
                       latency=False)
    cfg, teacher, data, _ = prepare(cfg)
    out = run_search(cfg, teacher, data)
    return load_record(out.study), cfg, teacher, data, tmp


def test_the_final_method_is_the_distill_default_not_the_searchs_unless_asked():
    """The search ranks with one method and the final student trains with another (the
    defaults are measured separately); a study that searched the method keeps its trial's;
    --kd overrides both; the trial's feature weight goes along only with its own method."""
    assert SearchConfig().kd == SEARCH_DEFAULT != DISTILL_DEFAULT
    assert final_method(None, "dkd-ls", "dkd-ls") == (DISTILL_DEFAULT, False)
    assert final_method(None, "feature", "feature") == (
        DISTILL_DEFAULT, canonical_method(DISTILL_DEFAULT) == "fitnets")
    assert final_method(None, "auto", "at") == ("at", True)
    assert final_method(None, "auto", None) == (DISTILL_DEFAULT, False)  # a reference
    assert final_method("dkd", "feature", "feature") == ("dkd", False)
    assert final_method("fitnets", "auto", "feature") == ("fitnets", True)
    # the default keeps the folders earlier versions wrote; others get their own
    assert method_tag("feature") == method_tag("fitnets") == ""
    assert method_tag("dkd-ls") == "-dkd-ls"


def test_a_new_distill_default_never_resumes_another_methods_checkpoints(monkeypatch):
    """The untagged folder is FitNets' (every final student before --kd), whatever the
    default becomes: a new default gets its own folder, earlier FitNets runs keep theirs."""
    from kdnas.ship import final

    monkeypatch.setattr(final, "DISTILL_DEFAULT", "dist")
    assert final_method(None, "dkd-ls", "dkd-ls") == ("dist", False)
    # DIST's final runs take its paper's weighting (part D): the folder says so, so the
    # earlier "-dist" runs (Hinton's mixing) are never resumed with it
    assert method_tag("dist") == "-dist-ce1" and method_tag("feature") == ""


def test_a_final_student_trains_with_its_methods_final_cross_entropy_weight():
    from kdnas.core.settings import KD_BY_NAME, SearchConfig
    from kdnas.ship.final import FullRecipe, _Pick, final_train_config

    cfg = SearchConfig(study="s", teacher="t.pt", data="digits", budget="1MFLOPs")
    full = FullRecipe(epochs=2.0, lr=None, batch_size=None, schedule="cosine", seed=None)
    for kd in ("dist", "dkd", "logit", "feature", "dkd-ls"):
        pick = _Pick({}, "x", kd, None, {}, None, {})
        tcfg = final_train_config(pick, cfg, full, seed=3)
        expected = KD_BY_NAME["fitnets" if kd == "feature" else kd].final_ce_weight
        assert tcfg.ce_weight == expected and tcfg.kd == kd and tcfg.seed == 3
        assert tcfg.epochs == 2.0 and tcfg.kd_alpha == cfg.kd_alpha
    assert final_train_config(_Pick({}, "x", "dist", None, {}, None, {}), cfg, full,
                              seed=0).ce_weight == 1.0


@pytest.mark.slow
def test_interrupted_distillation_resumes_to_the_same_student(study_with_a_student):
    study, cfg, teacher, data, tmp = study_with_a_student
    trial = pick_trial(study, "best")
    steps_per_epoch = -(-len(data.train_y) // cfg.batch_size)

    def interrupt_in_epoch_two(step, total, loss):
        if step == steps_per_epoch + 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distill_trial(study, cfg, trial, teacher, data, epochs=3, out_dir=tmp / "a",
                      formats=("pt2",), progress=interrupt_in_epoch_two)
    ckpt = (cfg.study_dir / "distill" / f"trial-{trial}{method_tag(DISTILL_DEFAULT)}"
            / "checkpoint.pt")
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1
    resumed = distill_trial(study, cfg, trial, teacher, data, epochs=3, out_dir=tmp / "a",
                            formats=("pt2",))
    other = dataclasses.replace(cfg, workdir=str(tmp / "runs-b"))
    straight = distill_trial(study, other, trial, teacher, data, epochs=3, out_dir=tmp / "b",
                             formats=("pt2",))
    assert resumed["test_accuracy"] == straight["test_accuracy"]
    a = torch.load(tmp / "a" / "student_state_dict.pt", weights_only=True)
    b = torch.load(tmp / "b" / "student_state_dict.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [c["epoch"] for c in resumed["curve"]] == [1, 2, 3]
    # ranked with the search's default, trained in full with the distill default
    assert study.trained_trial(trial).kd in (None, SEARCH_DEFAULT) and cfg.kd == SEARCH_DEFAULT
    assert resumed["recipe"]["kd"] == canonical_method(DISTILL_DEFAULT)
    # kept in the study (as `kdnas distill` does), the report shows it with its test accuracy
    from kdnas.search.storage import add_distilled, load_record, open_study

    live = open_study(cfg, create=False)
    add_distilled(live, resumed)
    write_report(load_record(live), cfg)
    page = (cfg.report_dir / "report.html").read_text()
    assert "Fully distilled" in page and f"{100 * resumed['test_accuracy']:.2f}%" in page
    card = (tmp / "a" / "MODEL_CARD.md").read_text()
    assert "test accuracy" in card and "after full distillation, 3 epochs" in card


def test_interrupted_teacher_training_resumes_to_the_same_teacher(tmp_path, monkeypatch,
                                                                   capsys):
    """`kdnas teacher train` interrupted in epoch 2, then the same command: it goes on from
    the saved epoch and writes the teacher an uninterrupted run writes; so are the early
    teachers it keeps (--keep-early), one written before the interruption, one after."""
    import kdnas.cli.progress as progress_mod
    from kdnas.cli import main
    from kdnas.teacher import load_teacher
    from kdnas.teacher.train import early_path, resume_path

    argv = ["teacher", "train", "--data", "digits", "--arch", "resnet8", "--epochs", "3",
            "--keep-early", "0.25,0.5", "--out", str(tmp_path / "a.pt")]
    real_call = progress_mod.StepBar.__call__

    def interrupt_in_epoch_two(self, step, total, loss):
        if step == total // 3 + 2:
            raise KeyboardInterrupt
        return real_call(self, step, total, loss)

    with monkeypatch.context() as m:
        m.setattr(progress_mod.StepBar, "__call__", interrupt_in_epoch_two)
        assert main(argv) == 130
    out = capsys.readouterr().out
    assert "run the same command to resume" in out
    assert resume_path(tmp_path / "a.pt", "resnet8").exists() and not (tmp_path / "a.pt").exists()
    assert main(argv) == 0
    assert "resuming the training saved in" in capsys.readouterr().out
    assert not resume_path(tmp_path / "a.pt", "resnet8").exists()
    assert main(argv[:-1] + [str(tmp_path / "b.pt")]) == 0
    a = torch.load(tmp_path / "a.pt", weights_only=False)
    b = torch.load(tmp_path / "b.pt", weights_only=False)
    sa, sb = a.get("state_dict", a), b.get("state_dict", b)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    for f in (0.25, 0.5):
        ea, eb = (torch.load(early_path(tmp_path / n, f), weights_only=False)
                  for n in ("a.pt", "b.pt"))
        assert ea["early"]["fraction"] == f and ea["early"]["step"] >= f * ea["early"][
            "of_steps"] and ea["val_accuracy"] == eb["val_accuracy"]
        assert all(torch.equal(ea["state_dict"][k], eb["state_dict"][k]) for k in sa)
        assert not all(torch.equal(ea["state_dict"][k], sa[k]) for k in sa)
    assert early_path(tmp_path / "a.pt", 0.25).name == "a-at25pct.pt"
    early = load_teacher(str(early_path(tmp_path / "a.pt", 0.25)))  # a teacher like any
    assert early.meta["val_accuracy"] < a["val_accuracy"]


@pytest.mark.slow
def test_references_and_seeds_are_distilled_side_by_side(study_with_a_student, capsys):
    """`kdnas distill --reference resnet8 --seed 1` trains the hand-designed bar with the
    study's teacher and recipe; every seed keeps its own checkpoint and record."""
    from kdnas.cli import main

    study, cfg, teacher, data, tmp = study_with_a_student
    base = ["distill", "--study", cfg.study, "--workdir", cfg.workdir, "--epochs", "1",
            "--format", "pt2"]
    for extra in (["--reference", "resnet8", "--seed", "1"], ["--pick", "best", "--seed", "1"],
                  ["--pick", "best", "--seed", "2"], ["--pick", "best", "--kd", "dkd-ls"]):
        assert main(base + extra + ["--out", str(tmp / "-".join(extra))]) == 0
    out = capsys.readouterr().out
    assert "reference resnet8: validation accuracy" in out
    trial = pick_trial(study, "best")
    names = sorted(p.name for p in (cfg.study_dir / "distill").iterdir())
    tag = method_tag(DISTILL_DEFAULT)
    assert {f"ref-resnet8{tag}-seed1", f"trial-{trial}{tag}-seed1", f"trial-{trial}{tag}-seed2",
            f"trial-{trial}-dkd-ls"} <= set(names)
    from kdnas.search.storage import load_record, open_study

    records = load_record(open_study(cfg, create=False)).distilled  # kept in the study
    ref = records[f"ref-resnet8{tag}-seed1"]
    assert ref["reference"] == "resnet8" and ref["recipe"]["seed"] == 1 and ref["macs"] > 0
    seeds = [records[f"trial-{trial}{tag}-seed{s}"] for s in (1, 2)]
    assert seeds[0]["recipe"]["seed"] == 1 and seeds[1]["recipe"]["seed"] == 2
    # the distill default unless --kd says otherwise, each method in its own record
    assert ref["recipe"]["kd"] == seeds[0]["recipe"]["kd"] == canonical_method(DISTILL_DEFAULT)
    assert records[f"trial-{trial}-dkd-ls"]["recipe"]["kd"] == "dkd-ls"
    from kdnas.ship.final import reference_recipe  # the same recipe, told without training
    assert ref["recipe"] == reference_recipe(cfg, "resnet8", data, epochs=1, seed=1)
    assert ref["recipe"] != reference_recipe(cfg, "resnet8", data, epochs=1, seed=2)
    page = (cfg.report_dir / "report.html").read_text()
    assert "reference resnet8" in page


def test_a_seed_names_the_record_checkpoint_and_folder_by_one_rule():
    """`kdnas distill --seed 0` on a seed-0 study is the study's own run: no tag anywhere
    (the folder once said -seed0 while its checkpoint and record did not)."""
    from kdnas.ship.final import seed_tag

    assert seed_tag(None, 0) == "" and seed_tag(0, 0) == "" and seed_tag(1, 0) == "-seed1"
    assert seed_tag(0, 3) == "-seed0"
