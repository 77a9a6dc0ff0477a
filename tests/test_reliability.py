"""Never lose a trial: kill -9 and Ctrl-C mid-trial, workers sharing a study (one machine with
--workers, many machines through PostgreSQL), failing trials, determinism. Real searches on
the digits data, run as users run them."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

import kdnas.search.trial as trial_mod
from kdnas.core.errors import KdnasError
from kdnas.core.settings import SearchConfig
from kdnas.search.loop import run_search
from kdnas.search.storage import load_record, make_storage, trained_count

ROOT = Path(__file__).resolve().parent.parent


def search_argv(teacher: Path, work: Path, *extra: str) -> list[str]:
    return ["search", "--teacher", str(teacher), "--data", "digits", "--val-fraction", "0.2",
            "--budget", "0.5MFLOPs", "--study", "k", "--workdir", str(work / "runs"),
            "--reports", str(work / "reports"), "--no-latency", "--no-noise-check", *extra]


def start(argv: list[str], threads: int | None = None) -> subprocess.Popen:
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    return subprocess.Popen([sys.executable, "-m", "kdnas", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)


def study_at(url: str, study: str = "k") -> optuna.Study | None:
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return None  # looking must not create the database kdnas is about to create
    try:
        return optuna.load_study(study_name=study, storage=url)
    except Exception:  # not created yet
        return None


def wait_for_training(url: str, proc: subprocess.Popen, number: int, study: str = "k"
                      ) -> optuna.FrozenTrial:
    """Block until trial ``number`` is training (its candidate drawn, costed, started)."""
    deadline = time.monotonic() + 600
    name = study
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        study = study_at(url, name)
        if study is not None:
            for t in study.get_trials(states=(TrialState.RUNNING,)):
                if t.number == number and t.user_attrs.get("training"):
                    return t
        time.sleep(0.1)
    raise AssertionError(f"trial {number} never started training")


def trained_specs(study: optuna.Study) -> list[str]:
    return [t.user_attrs["spec_id"] for t in study.get_trials(states=(TrialState.COMPLETE,))
            if t.user_attrs.get("trained")]


@pytest.fixture
def ctrl_c_reaches_children():
    """A shell that starts the tests in the background (a script's ``&``) ignores SIGINT, and
    the kdnas processes started here would inherit that and never see the Ctrl-C. Catch it in
    this process for the test: a caught signal is reset on exec, so the children get Python's
    own handler, as in a terminal."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


@pytest.mark.slow
@pytest.mark.usefixtures("ctrl_c_reaches_children")
def test_ctrl_c_and_kill_9_mid_trial_lose_no_candidate(tmp_path, digits_teacher):
    """Ctrl-C in trial 0, then kill -9 in trial 2 of the resumed run, then the same command:
    every finished trial kept, each cut-off trial failed with its reason and its candidate
    trained again, the count reached, no spec trained twice, every weight file readable."""
    # 100 steps (several seconds a trial): each signal lands half a second into a trial
    argv = search_argv(digits_teacher, tmp_path, "--trials", "3", "--steps", "100")
    url = f"sqlite:///{tmp_path / 'runs' / 'k' / 'study.db'}"

    proc = start(argv)
    wait_for_training(url, proc, 0)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "run the same command to resume" in out
    assert (tmp_path / "reports" / "k" / "summary.json").exists()  # report of what finished
    study = study_at(url)
    cut = study.trials[0]
    assert cut.state == TrialState.FAIL and cut.user_attrs["interrupted"]
    queued = [t for t in study.trials if t.state == TrialState.WAITING]
    assert len(queued) == 1 and queued[0].params == cut.params

    proc = start(argv)
    killed = wait_for_training(url, proc, 2)  # 1 is the retry of 0, 2 a new candidate
    time.sleep(0.5)
    proc.kill()  # SIGKILL: no handler runs
    proc.communicate(timeout=60)
    assert study_at(url).trials[2].state == TrialState.RUNNING  # as the dead process left it

    result = subprocess.run([sys.executable, "-m", "kdnas", *argv], capture_output=True,
                            text=True, cwd=ROOT, timeout=900)
    assert result.returncode == 0, result.stderr
    assert "marked failed" in result.stdout
    study = study_at(url)
    trials = study.trials
    assert trials[2].state == TrialState.FAIL and "died" in trials[2].user_attrs["error"]
    for cut_trial in (trials[0], trials[2]):
        retries = [t for t in trials if t.user_attrs.get("retry_of") == cut_trial.number]
        assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
        assert retries[0].params == cut_trial.params and retries[0].user_attrs["trained"]
        if "spec_id" in cut_trial.user_attrs:
            assert retries[0].user_attrs["spec_id"] == cut_trial.user_attrs["spec_id"]
    specs = trained_specs(study)
    assert len(specs) == 3 and len(set(specs)) == 3
    assert killed.user_attrs["spec_id"] in specs
    for t in trials:
        if t.user_attrs.get("trained"):
            w = tmp_path / "runs" / "k" / t.user_attrs["weights"]
            assert torch.load(w, weights_only=True)["spec"] == t.user_attrs["spec"]
    leftovers = [p for p in (tmp_path / "runs").rglob("*") if ".tmp-" in p.name]
    assert leftovers == []


@pytest.fixture
def cfg(search_cfg):
    return search_cfg


@pytest.mark.slow
def test_same_command_same_seed_gives_the_same_specs_and_accuracies(cfg, teacher_and_data,
                                                                    tmp_path):
    teacher, data = teacher_and_data
    runs = []
    for name in ("a", "b"):
        c = dataclasses.replace(cfg, workdir=str(tmp_path / name))
        out = run_search(c, teacher, data)
        runs.append([(t.user_attrs["spec_id"], t.user_attrs.get("val_accuracy"))
                     for t in out.study.get_trials()])
    assert len(runs[0]) >= 3 and runs[0] == runs[1]


@pytest.mark.slow
def test_a_failing_trial_is_recorded_with_its_reason_and_the_search_goes_on(
        cfg, teacher_and_data, monkeypatch):
    teacher, data = teacher_and_data
    real_train, calls = trial_mod.train_candidate, []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory in a conv")
        return real_train(*a, **k)

    monkeypatch.setattr(trial_mod, "train_candidate", flaky)
    out = run_search(cfg, teacher, data)
    assert out.trained == 3
    failed = [t for t in load_record(out.study).trials if t.state == "failed"]
    assert len(failed) == 1 and "out of memory in a conv" in failed[0].note


def test_diverging_training_fails_trials_and_stops_with_a_message(cfg, teacher_and_data):
    teacher, data = teacher_and_data
    with pytest.raises(KdnasError, match="3 trials in a row failed.*diverged"):
        run_search(dataclasses.replace(cfg, lr=1e6), teacher, data)
    study = optuna.load_study(study_name="r", storage=f"sqlite:///{cfg.study_dir}/study.db")
    assert [t.state for t in study.trials] == [TrialState.FAIL] * 3
    assert all("diverged" in t.user_attrs["error"] for t in study.trials)
    # each was trained once more at half the learning rate before it was given up
    assert all("with the stabler recipe did not train: training diverged" in
               t.user_attrs["training_failed"] for t in study.trials)


@pytest.mark.slow
def test_a_full_disk_fails_the_trial_with_a_message_and_leaves_no_partial_file(
        cfg, teacher_and_data, monkeypatch, caplog):
    teacher, data = teacher_and_data
    cfg = dataclasses.replace(cfg, steps=10)  # what is written matters here, not training
    run_search(dataclasses.replace(cfg, trials=1), teacher, data)
    before = sorted(p.relative_to(cfg.study_dir) for p in (cfg.study_dir / "trials").rglob("*")
                    if p.is_file())

    def full(obj, f, *a, **k):
        Path(f).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    import kdnas.distill.candidate as candidate_mod

    monkeypatch.setattr(candidate_mod.torch, "save", full)
    with pytest.raises(KdnasError, match="No space left on device"):
        run_search(cfg, teacher, data)
    after = sorted(p.relative_to(cfg.study_dir) for p in (cfg.study_dir / "trials").rglob("*")
                   if p.is_file())
    assert after == before  # the finished trial's weights, and nothing half-written
    assert "Traceback" not in caplog.text
    monkeypatch.undo()
    out = run_search(cfg, teacher, data)  # space again: the study goes on
    assert out.trained == 3


def _hammer(url: str, worker: int, n: int, q) -> None:
    try:
        study = optuna.load_study(study_name="stress", storage=make_storage(url))
        for i in range(n):
            t = study.ask()
            t.set_user_attr("worker", worker)
            study._storage.record_heartbeat(t._trial_id)
            study.tell(t, [float(i), float(worker)])
        q.put(None)
    except Exception as e:  # pragma: no cover - what the test looks for
        q.put(repr(e))


@pytest.mark.slow
def test_sqlite_storage_is_safe_for_the_workers_of_one_machine(tmp_path):
    """Four processes asking and telling as fast as they can on one SQLite study: no lock
    errors, no trial lost, every number unique."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.create_study(study_name="stress", storage=make_storage(url),
                        directions=["maximize", "minimize"])
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_hammer, args=(url, w, 40, q)) for w in range(4)]
    for p in procs:
        p.start()
    errors = [q.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    assert errors == [None] * 4
    trials = optuna.load_study(study_name="stress", storage=url).trials
    assert len(trials) == 160 and len({t.number for t in trials}) == 160
    assert all(t.state == TrialState.COMPLETE for t in trials)


@pytest.mark.slow
def test_workers_share_one_study_and_stop_at_its_count(tmp_path, digits_teacher):
    from kdnas.cli import main

    argv = search_argv(digits_teacher, tmp_path, "--trials", "4", "--steps", "150",
                       "--workers", "2")
    assert main(argv) == 0
    study = study_at(f"sqlite:///{tmp_path / 'runs' / 'k' / 'study.db'}")
    specs = trained_specs(study)
    assert len(specs) == 4 and len(set(specs)) == 4  # the study's count, no spec twice
    workers = {t.user_attrs["worker"] for t in study.trials if t.user_attrs.get("trained")}
    assert len(workers) == 2, workers
    written = [c for c in (tmp_path / "runs" / "k" / "teacher_cache").iterdir() if c.is_dir()]
    assert len(written) == 1 and (written[0] / "COMPLETE").exists()  # written once
    assert "worker 1 done" in (tmp_path / "runs" / "k" / "workers" / "worker-1.log").read_text()
    summary = json.loads((tmp_path / "reports" / "k" / "summary.json").read_text())
    assert summary["trials_by_state"]["trained"] == 4
    at_once = summary["trained_at_once"]  # two processes: at most two at once
    assert at_once["max"] in (1, 2) and 1 <= at_once["mean"] <= at_once["max"]


def test_an_unreachable_storage_is_one_message(tmp_path, digits_teacher, capsys):
    from kdnas.cli import main

    argv = search_argv(digits_teacher, tmp_path, "--trials", "1", "--storage",
                       "postgresql://kd:secret@127.0.0.1:9/nowhere")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "cannot use the storage postgresql://kd:***@127.0.0.1:9/nowhere" in err
    assert "secret" not in err and "Traceback" not in err
    notdb = tmp_path / "notes.db"
    notdb.write_text("my notes, not a database\n" * 100)
    assert main(search_argv(digits_teacher, tmp_path, "--storage", f"sqlite:///{notdb}")) == 2
    assert "cannot use the storage" in capsys.readouterr().err
    assert notdb.read_text().startswith("my notes")  # untouched


# --------------------------------------------------------------- PostgreSQL, many machines

def _pg_bin() -> Path | None:
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / "initdb").exists():
            return d
    return None


class _Postgres:
    """A private cluster: its URL, and stop/start (the database going away and coming back)."""

    def __init__(self, pg: Path, data: Path, log: Path, opts: str, prefix: list[str],
                 url: str) -> None:
        self.pg, self.data, self.log, self.opts, self.prefix = pg, data, log, opts, prefix
        self.url = url

    def start(self) -> None:
        subprocess.run([*self.prefix, str(self.pg / "pg_ctl"), "-D", str(self.data), "-l",
                        str(self.log), "-o", self.opts, "-w", "start"], check=True,
                       capture_output=True)

    def stop(self) -> None:
        subprocess.run([*self.prefix, str(self.pg / "pg_ctl"), "-D", str(self.data), "-m",
                        "fast", "-w", "stop"], check=True, capture_output=True)


@pytest.fixture(scope="module")
def postgres_url(postgres):
    return postgres.url


@pytest.fixture(scope="module")
def postgres():
    """A private PostgreSQL cluster on loopback, from Debian's packages (`.ci/run` installs
    them when missing), run as an unprivileged user when the tests run as root."""
    pg = _pg_bin()
    if pg is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql): the two-worker "
                    "PostgreSQL test did not run")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed (pip install 'kdnas[postgres]'): the "
                    "PostgreSQL test did not run")
    root = Path(tempfile.mkdtemp(prefix="kdnas-pg-"))  # outside pytest's 0700 folders
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    prefix: list[str] = []
    if os.geteuid() == 0:
        import pwd

        pw = pwd.getpwnam("postgres")
        for d in (root, sock):
            os.chown(d, pw.pw_uid, pw.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    port = 20000 + os.getpid() % 20000
    subprocess.run([*prefix, str(pg / "initdb"), "-D", str(data), "-U", "kd", "--auth=trust",
                    "-E", "UTF8"], check=True, capture_output=True)
    cluster = _Postgres(pg, data, root / "log",
                        f"-p {port} -k {sock} -c listen_addresses=127.0.0.1", prefix,
                        f"postgresql://kd@127.0.0.1:{port}/kdnas")
    cluster.start()
    subprocess.run([str(pg / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "kd",
                    "kdnas"], check=True, capture_output=True)
    yield cluster
    subprocess.run([*prefix, str(pg / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"],
                   capture_output=True)
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_two_workers_on_postgres_share_one_study(tmp_path, digits_teacher, postgres_url):
    """Two processes, as on two machines, on one PostgreSQL study: every trial number unique,
    none lost, no spec trained twice, and the front is the one of all trials together."""
    from kdnas.report import front_frame, trials_frame

    procs = [start(search_argv(digits_teacher, tmp_path / f"m{k}", "--trials", "4", "--steps",
                               "120", "--storage", postgres_url, "--seed", "0"),
                   threads=1)  # two "machines" on this one: a core each
             for k in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=900)
        assert p.returncode == 0, err
    study = optuna.load_study(study_name="k", storage=postgres_url)
    trials = study.trials
    assert len({t.number for t in trials}) == len(trials)
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    specs = trained_specs(study)
    assert trained_count(study) == 4 and len(set(specs)) == 4
    assert len({t.user_attrs["worker"] for t in trials if t.user_attrs.get("trained")}) == 2
    record = load_record(study)
    front = set(front_frame(trials_frame(record), ["macs"]).trial)
    assert front == {t.number for t in study.best_trials}


def test_a_trial_whose_machine_went_silent_is_failed_and_its_candidate_queued(
        tmp_path, monkeypatch):
    """Another machine's worker stops sending heartbeats: after the grace period the next
    worker that looks fails its trial and queues the same candidate again."""
    import kdnas.search.storage as storage_mod

    monkeypatch.setattr(storage_mod, "HEARTBEAT_SECONDS", 1)
    monkeypatch.setattr(storage_mod, "GRACE_SECONDS", 1)
    cfg = SearchConfig(study="hb", workdir=str(tmp_path), latency=False)
    study = storage_mod.open_study(cfg, create=True)
    with pytest.warns(UserWarning, match="Heartbeat"):
        t = study.ask()
    t.suggest_int("depth", 1, 9)
    t.set_user_attr("worker", "other-machine:4242")  # not this host: no pid to look at
    study._storage.record_heartbeat(t._trial_id)
    assert storage_mod.fail_stale_trials(study) == 0  # still beating
    assert study.trials[0].state == TrialState.RUNNING
    time.sleep(2.5)
    storage_mod.fail_stale_trials(study)
    failed, queued = study.trials
    assert failed.state == TrialState.FAIL and queued.state == TrialState.WAITING
    assert queued.params == failed.params and queued.user_attrs["retry_of"] == 0
    assert "stopped sending heartbeats" in queued.user_attrs["retry_reason"]


HUNG_SEARCH = """
import sys, time
import kdnas.search.trial as trial
import kdnas.search.watchdog as watchdog
from kdnas.cli import main

watchdog.HANG_FACTOR, watchdog.HANG_GRACE = 1.0, 2.0
def hangs(*a, **k):  # a kernel that never returns: no progress report, no return
    time.sleep(3600)
trial.train_candidate = hangs
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_hung_trial_is_recorded_as_failed_and_the_process_stops_to_be_run_again(
        tmp_path, digits_teacher):
    """A trial that never returns (so the loop cannot check its limit) is failed by the
    watchdog with the reason and the process exits with HUNG_EXIT, saying what to do; the same
    command then trains the study to its count."""
    from kdnas.search.watchdog import HUNG_EXIT

    argv = search_argv(digits_teacher, tmp_path, "--trials", "2", "--steps", "8",
                       "--trial-timeout", "1")
    # the fake kernel sleeps an hour: only the watchdog ends the process within the timeout
    hung = subprocess.run([sys.executable, "-c", HUNG_SEARCH, *argv], capture_output=True,
                          text=True, cwd=ROOT, timeout=600)
    assert hung.returncode == HUNG_EXIT, hung.stderr[-2000:]
    assert "Run the same command to go on" in hung.stderr
    url = f"sqlite:///{tmp_path / 'runs' / 'k' / 'study.db'}"
    study = study_at(url)
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and failed[0].user_attrs["error"].startswith("hung")
    assert not any(t.state == TrialState.RUNNING for t in study.trials)
    # run again (without the 1 s limit, which a busy machine's real trials could pass)
    again = subprocess.run([sys.executable, "-m", "kdnas", *argv, "--trial-timeout", "off"],
                           capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert trained_count(study_at(url)) == 2


HELPER = """
import sys
from pathlib import Path
k, mark = sys.argv[1], Path(sys.argv[2])
runs = mark.with_name(f"runs-{k}")
runs.write_text(runs.read_text() + "x" if runs.exists() else "x")
sys.exit(75 if k == "1" and len(runs.read_text()) < 3 else 0)  # worker 1 hangs twice
"""


def test_a_helper_worker_stopped_by_a_hung_trial_is_started_again(tmp_path, monkeypatch):
    """--workers 3: worker 1 ends twice with HUNG_EXIT (as the watchdog ends it); the parent
    starts it again each time, with its log, and says so; worker 2 ends normally, once."""
    from kdnas.cli import workers

    monkeypatch.setattr(workers.Helpers, "command", lambda self, k: [
        sys.executable, "-c", HELPER, str(k), str(tmp_path / "mark")])
    said: list[str] = []
    helpers = workers.Helpers(said.append)
    helpers.start(["search", "--workers", "3"], 3, tmp_path / "workers")
    assert helpers.wait() == [0, 0]
    assert (tmp_path / "runs-1").read_text() == "xxx" and (tmp_path / "runs-2").read_text() == "x"
    assert len(said) == 2 and "worker 1 stopped on a hung trial" in said[0]
    assert (tmp_path / "workers" / "worker-1.log").exists()
    monkeypatch.setattr(workers, "RESTARTS", 1)  # a limit: the third stop is its exit status
    for f in tmp_path.glob("runs-*"):
        f.unlink()
    helpers = workers.Helpers(said.append)
    helpers.start(["search"], 2, tmp_path / "workers")
    assert helpers.wait() == [75] and (tmp_path / "runs-1").read_text() == "xx"


@pytest.mark.slow
def test_workers_killed_at_random_and_replaced_lose_nothing(tmp_path, digits_teacher):
    """Three workers on one SQLite study, one killed with SIGKILL and replaced every 1-4 s
    (4 times): the study reaches its count, no candidate is trained twice, no trial is left
    RUNNING, each killed candidate is trained again, the front is Optuna's best_trials and the
    teacher cache is complete (benchmarks/chaos.py runs the same at 4 workers and 20 kills)."""
    from benchmarks import chaos

    # trials long enough (150 steps) and looks often enough that four kills land before the
    # study is done on an idle machine too
    argv = chaos.search_argv(digits_teacher, tmp_path, "c", trials=6, steps=150,
                             storage=None)
    url = f"sqlite:///{tmp_path / 'runs' / 'c' / 'study.db'}"
    run = chaos.run_workers(argv, tmp_path, workers=3, kills=4, seed=1, timeout=900,
                            url=url, study="c", say=lambda *_: None, every=(0.3, 1.0))
    assert len(run["kills"]) == 4 and run["processes"] == 7
    res = chaos.check_study(url, "c", 6, tmp_path / "runs" / "c")
    assert all(res["checks"].values()), res
    # each kill hit a training trial (one may finish between the look and the kill)
    assert res["trained"] >= 6 and res["killed_trials"] >= 3 and res["retries"] >= 3


@pytest.mark.slow
def test_postgres_stopped_mid_search_and_started_again_loses_and_repeats_nothing(
        tmp_path, digits_teacher, postgres):
    """The database goes away for 20 s while a worker trains: the worker says so in one line,
    waits with backoff, and goes on when it is back; the study reaches its count with no
    trial lost and none trained twice."""
    argv = search_argv(digits_teacher, tmp_path, "--trials", "4", "--steps", "120",
                       "--storage", postgres.url, "--study", "gone")
    proc = start(argv, threads=1)
    wait_for_training(postgres.url, proc, 0, study="gone")
    postgres.stop()
    time.sleep(20)
    postgres.start()
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    assert err.count("cannot be reached") >= 1 and "is back after" in err
    study = optuna.load_study(study_name="gone", storage=postgres.url)
    specs = trained_specs(study)
    assert len(specs) == 4 and len(set(specs)) == 4
    assert not any(t.state == TrialState.RUNNING for t in study.trials)


@pytest.mark.slow
def test_workers_killed_at_random_on_postgres_lose_nothing(tmp_path, digits_teacher,
                                                           postgres):
    """The chaos run on PostgreSQL, as machines sharing one study would: three workers, four
    SIGKILLs with replacements; the same invariants as on SQLite."""
    from benchmarks import chaos

    argv = chaos.search_argv(digits_teacher, tmp_path, "chaos-pg", trials=6, steps=150,
                             storage=postgres.url)
    run = chaos.run_workers(argv, tmp_path, workers=3, kills=4, seed=2, timeout=900,
                            url=postgres.url, study="chaos-pg", say=lambda *_: None,
                            every=(0.3, 1.0))
    assert len(run["kills"]) == 4
    res = chaos.check_study(postgres.url, "chaos-pg", 6, tmp_path / "runs" / "chaos-pg")
    assert all(res["checks"].values()), res["checks"]
    assert res["killed_trials"] >= 3 and res["retries"] >= 3


def test_a_disk_that_fills_while_the_teacher_cache_is_written_fails_the_trial_cleanly(
        cfg, teacher_and_data, monkeypatch, caplog):
    """ENOSPC at the cache's fourth step: the trial fails with the reason and what to do, its
    half-written cache folder is removed, and the search goes on: the next trial writes the
    cache whole."""
    import kdnas.distill.cache as cache_mod

    teacher, data = teacher_and_data
    cfg = dataclasses.replace(cfg, steps=10, trials=2)
    real, n = cache_mod.torch.save, [0]

    def fills(obj, f, *a, **k):
        n[0] += 1
        if n[0] == 4:
            Path(f).write_bytes(b"half")
            raise OSError(28, "No space left on device")
        return real(obj, f, *a, **k)

    monkeypatch.setattr(cache_mod.torch, "save", fills)
    out = run_search(cfg, teacher, data)
    failed = [t for t in out.study.trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and "No space left on device" in failed[0].user_attrs["error"]
    assert "--no-teacher-cache" in failed[0].user_attrs["error"]
    assert "Traceback" not in caplog.text and out.trained == 2
    root = cfg.study_dir / "teacher_cache"
    caches = [p for p in root.iterdir() if p.is_dir()]  # no half-written folder beside it
    assert len(caches) == 1 and (caches[0] / "COMPLETE").exists()
