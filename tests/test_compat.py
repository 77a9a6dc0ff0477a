"""A study made by an earlier kdnas opens with this one: tests/data/study-0.1.0-ccb564e holds
a study (its SQLite file and manifest) and its digits teacher, made by kdnas at commit ccb564e
(`--kd auto`, 3 trials of 8 steps), before DKD, DIST, LS and RKD joined --kd auto."""

from __future__ import annotations

import shutil
from pathlib import Path

import optuna
import pytest

from kdnas.cli import main

OLD = Path(__file__).resolve().parent / "data" / "study-0.1.0-ccb564e"
OLD_AUTO = ("logit", "fitnets", "at", "sp", "pkt")


def _argv(tmp: Path, *extra: str, budget: str = "0.5MFLOPs") -> list[str]:
    return ["search", "--teacher", str(OLD / "teacher.pt"), "--data", "digits",
            "--val-fraction", "0.2", "--budget", budget, "--study", "prev", "--workdir",
            str(tmp / "runs"), "--reports", str(tmp / "reports"), "--no-latency",
            "--no-noise-check", "--steps", "8", "--kd", "auto", *extra]


@pytest.fixture
def old_study(tmp_path) -> Path:
    (tmp_path / "runs" / "prev").mkdir(parents=True)
    for name in ("study.db", "manifest.json"):
        shutil.copy(OLD / name, tmp_path / "runs" / "prev" / name)
    return tmp_path


def test_a_study_of_the_previous_version_resumes_reports_and_keeps_its_methods(old_study):
    url = f"sqlite:///{old_study / 'runs' / 'prev' / 'study.db'}"
    before = optuna.load_study(study_name="prev", storage=url)
    assert sum(t.user_attrs.get("trained", False) for t in before.trials) == 3
    assert main(_argv(old_study, "--trials", "4")) == 0
    study = optuna.load_study(study_name="prev", storage=url)
    trained = [t for t in study.trials if t.user_attrs.get("trained")]
    assert len(trained) == 4
    # --kd auto searches ten methods now; the old study goes on with the five it searched
    assert all(t.distributions["kd"].choices == OLD_AUTO for t in trained)
    assert main(["report", "--study", "prev", "--workdir", str(old_study / "runs"),
                 "--reports", str(old_study / "reports")]) == 0
    assert "<table" in (old_study / "reports" / "prev" / "report.html").read_text()


def test_the_previous_versions_study_is_refused_with_the_difference_when_settings_differ(
        old_study, capsys):
    try:
        code = main(_argv(old_study, "--trials", "4", budget="0.4MFLOPs"))
    except SystemExit as e:
        code = e.code
    assert code not in (0, None)
    err = capsys.readouterr().err
    assert "already exists with other settings" in err and "budget" in err


def test_a_resumed_study_keeps_its_own_settings_where_none_is_given(old_study, capsys):
    """Resuming without the flags a study was made with (its budget, steps, method and
    space: it was made when the default space was resnet and the default method feature)
    takes the study's own and says so; the new candidates are trained with them."""
    argv = _argv(old_study, "--trials", "4")
    for flag in ("--budget", "--steps", "--kd"):
        i = argv.index(flag)
        del argv[i:i + 2]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "resuming study 'prev' with its own" in out
    assert "budget '0.5MFLOPs'" in out and "steps 8" in out and "kd 'auto'" in out
    study = optuna.load_study(study_name="prev",
                              storage=f"sqlite:///{old_study / 'runs' / 'prev' / 'study.db'}")
    trained = [t for t in study.trials if t.user_attrs.get("trained")]
    assert len(trained) == 4
    assert {t.user_attrs["recipe"]["steps"] for t in trained} == {8}
    assert all(t.user_attrs["spec"]["space"] == "resnet" for t in trained)
    assert all(t.distributions["kd"].choices == OLD_AUTO for t in trained)
