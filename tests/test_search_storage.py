"""The study's storage as other tools read it: records for reports, and optuna-dashboard."""

from __future__ import annotations

import dataclasses
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest

import kdnas.search.loop as loop_mod
from kdnas.core.errors import KdnasError
from kdnas.core.settings import SearchConfig
from kdnas.report import front_frame, trials_frame
from kdnas.search.loop import run_search
from kdnas.search.storage import load_record


@pytest.fixture(scope="module")
def mixed_study(tmp_path_factory, digits, digits_teacher):
    """A study with trained and infeasible trials: a budget-blind sampler proposes
    candidates over a 2M-MAC budget, which are recorded and never trained."""
    from kdnas.teacher import attach_to_data, load_teacher

    teacher = load_teacher(digits_teacher)
    data = digits.with_normalization(teacher.mean, teacher.std)
    attach_to_data(teacher, data)
    tmp = tmp_path_factory.mktemp("storage")
    cfg = SearchConfig(study="dash", teacher=str(digits_teacher), data="digits",
                       budget="2MFLOPs", trials=2, epochs=1, val_fraction=0.2,
                       workdir=str(tmp / "runs"), reports=str(tmp / "reports"), latency=False,
                       max_proposals=200, objectives=("macs", "params"),
                       references=("none",))  # Optuna's front would hold a reference
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop_mod, "make_sampler",
                   lambda cfg, data, **_: optuna.samplers.RandomSampler(seed=0))
        out = run_search(cfg, teacher, data)
    assert any(not t.user_attrs.get("trained") for t in out.study.get_trials())
    return out.study, cfg


def test_records_match_the_study(mixed_study):
    study, cfg = mixed_study
    record = load_record(study)
    assert [t.number for t in record.trials] == [t.number for t in study.get_trials()]
    for t, r in zip(study.get_trials(), record.trials, strict=True):
        assert r.trained == bool(t.user_attrs.get("trained"))
        assert r.within_budget == (t.constraints["budget"] <= 0)
        assert r.cost == t.user_attrs["cost"]


def test_report_front_is_optunas_front_over_every_objective(mixed_study):
    """With two cost objectives the front is 3-D: Optuna's best_trials (which honour the
    budget constraint), not a 2-D front of the first cost that would drop some of them."""
    study, cfg = mixed_study
    front = front_frame(trials_frame(load_record(study)), cfg.cost_columns)
    assert sorted(front.trial) == sorted(t.number for t in study.best_trials)


def test_the_pick_below_the_report_agrees_with_the_reports_front(mixed_study):
    """kdnas.front picks from the records alone (what the search and export read); the
    report's frame of the same study shows the same knee and the same best student."""
    from kdnas.front import pick_trial

    study, cfg = mixed_study
    record = load_record(study)
    front = front_frame(trials_frame(record), cfg.cost_columns)
    assert pick_trial(record, "knee", cfg.cost_columns) == int(
        front.loc[front.knee.idxmax(), "trial"])
    assert pick_trial(record, "best", cfg.cost_columns) == int(
        front.loc[front.val_accuracy.idxmax(), "trial"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_optuna_dashboard_shows_names_and_infeasible_trials(mixed_study):
    pytest.importorskip("optuna_dashboard")
    study, cfg = mixed_study
    url = f"sqlite:///{Path(cfg.study_dir, 'study.db').resolve()}"
    port = _free_port()
    exe = shutil.which("optuna-dashboard", path=str(Path(sys.executable).parent))
    proc = subprocess.Popen([exe, url, "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        detail = None
        for _ in range(100):  # up to about 20 s for the server to answer
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/"
                                            f"{study._study_id}", timeout=2) as r:
                    detail = json.loads(r.read())
                break
            except OSError:
                time.sleep(0.2)
        assert detail is not None, "optuna-dashboard did not answer"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert detail["objective_names"] == ["val_accuracy", "macs", "params"]
    by_number = {t["number"]: t for t in detail["trials"]}
    for t in study.get_trials():
        shown = by_number[t.number]["constraints"]
        assert shown == [t.constraints["budget"]]  # the list the dashboard reads
        assert (max(shown) <= 0) == bool(t.user_attrs.get("trained")  # or a hand design
                                         or t.user_attrs.get("reference"))


def test_resumed_study_keeps_its_hypervolume_reference(mixed_study):
    from kdnas.report import summary

    study, cfg = mixed_study
    ref = study.user_attrs["hypervolume_reference"]
    assert set(ref) == {"params"}  # MACs are bounded by the budget itself
    info = summary(load_record(study), cfg)
    assert info["hypervolume_reference"]["macs"] == 2e6
    assert info["hypervolume_reference"]["params"] == ref["params"]
    assert 0 < info["hypervolume"] < 1
    again = summary(load_record(study), dataclasses.replace(cfg))
    assert again["hypervolume"] == info["hypervolume"]


def test_workers_racing_to_create_the_tables_retry(monkeypatch, tmp_path):
    """Two workers on a new PostgreSQL database both create Optuna's tables; the loser gets
    "relation already exists" (SQLSTATE 42P07) and must retry, not stop. Any other
    programming error is the user's: it is reported, not retried."""
    import sqlalchemy.exc

    import kdnas.search.storage as storage_mod

    class DuplicateTable(Exception):
        sqlstate = "42P07"

    real, calls = storage_mod.PatientRDBStorage, []

    def racing(url, **kw):
        calls.append(url)
        if len(calls) == 1:
            raise sqlalchemy.exc.ProgrammingError("CREATE TABLE studies", {},
                                                  DuplicateTable('relation "studies" exists'))
        return real(url, **kw)

    monkeypatch.setattr(storage_mod.time, "sleep", lambda s: None)
    monkeypatch.setattr(storage_mod, "PatientRDBStorage", racing)
    url = f"sqlite:///{tmp_path / 's.db'}"
    assert storage_mod.make_storage(url) is not None and len(calls) == 2

    def broken(url, **kw):
        raise sqlalchemy.exc.ProgrammingError("SELECT", {}, Exception("syntax error"))

    monkeypatch.setattr(storage_mod, "PatientRDBStorage", broken)
    with pytest.raises(KdnasError, match="syntax error"):
        storage_mod.make_storage(url)


def test_a_storage_call_waits_out_an_unreachable_database_but_not_a_refusal(monkeypatch,
                                                                             caplog):
    """Unreachable (OperationalError, or Optuna's StorageInternalError caused by one): waited
    out with backoff and one line; a refusal (an integrity error) raised at once; past the
    patience, the error is raised."""
    import sqlalchemy.exc

    import kdnas.search.patient_storage as ps

    waits = []
    monkeypatch.setattr(ps.time, "sleep", waits.append)
    down = sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("connection refused"))
    calls = []

    def flaky(self, n_fail, error):
        calls.append(1)
        if len(calls) <= n_fail:
            raise error
        return "ok"

    patient = ps._patient(flaky)
    wrapped = optuna.exceptions.StorageInternalError("commit failed")
    wrapped.__cause__ = down
    for error in (down, wrapped):
        calls.clear()
        assert patient(None, 3, error) == "ok" and len(calls) == 4
    assert waits[:3] == [1.0, 2.0, 4.0]
    assert "cannot be reached" in caplog.text and "is back after" in caplog.text
    refused = sqlalchemy.exc.IntegrityError("INSERT", {}, Exception("duplicate key"))
    calls.clear()
    with pytest.raises(sqlalchemy.exc.IntegrityError):
        patient(None, 1, refused)
    assert len(calls) == 1
    monkeypatch.setattr(ps, "PATIENCE_SECONDS", 5.0)
    calls.clear()
    with pytest.raises(sqlalchemy.exc.OperationalError):
        patient(None, 100, down)
    assert len(calls) == 4  # waited 1 + 2 + 4 = 7 s > 5 s, then gave up


def test_a_storage_call_made_inside_another_is_waited_out_once_by_the_outer(monkeypatch):
    """Optuna's storage methods call one another: only the outermost call waits and retries,
    so a nested one does not stack its own wait on top (4 tries within 5 s, not 4 x 4)."""
    import sqlalchemy.exc

    import kdnas.search.patient_storage as ps

    monkeypatch.setattr(ps.time, "sleep", lambda s: None)
    monkeypatch.setattr(ps, "PATIENCE_SECONDS", 5.0)
    down = sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("connection refused"))
    inner_calls = []

    @ps._patient
    def inner(self):
        inner_calls.append(1)
        raise down

    @ps._patient
    def outer(self):
        return inner(self)

    with pytest.raises(sqlalchemy.exc.OperationalError):
        outer(None)
    assert len(inner_calls) == 4  # waits of 1, 2 and 4 s, then past the 5 s of patience
