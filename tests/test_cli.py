from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from kdnas.cli import main
from kdnas.teacher import save_checkpoint
from search_spaces import get_space


def test_help_lists_commands_and_explains_the_budget_units(capsys):
    with pytest.raises(SystemExit) as e:
        main(["search", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "50MMACs" in out and "multiply" in out and "--trials" in out
    r = subprocess.run([sys.executable, "-m", "kdnas", "--help"], capture_output=True,
                       text=True, check=True)
    for cmd in ("search", "report", "export", "teacher", "demo"):
        assert cmd in r.stdout


@pytest.mark.slow
def test_search_report_export_as_users_type_them(tmp_path, digits_teacher, capsys):
    """`kdnas search --teacher model.pt --budget …` works without --data: the data set comes
    from the teacher checkpoint."""
    common = ["--workdir", str(tmp_path / "runs")]
    code = main(["search", "--teacher", str(digits_teacher), "--budget", "0.5MFLOPs",
                 "--trials", "3", "--epochs", "1", "--study", "cli",
                 "--reports", str(tmp_path / "reports"), *common])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "recorded in the teacher checkpoint" in out
    assert "teacher validation accuracy" in out and "stages.0" in out
    rep = tmp_path / "reports" / "cli"
    for f in ("trials.csv", "pareto.csv", "pareto.md", "pareto.png", "summary.json"):
        assert (rep / f).stat().st_size > 0
    trials = pd.read_csv(rep / "trials.csv")
    front = pd.read_csv(rep / "pareto.csv")
    assert (trials.state == "trained").sum() == 3
    assert len(front) >= 1 and (front.macs <= 0.5e6).all()
    assert (front.flops == 2 * front.macs).all()
    assert (trials[trials.state == "trained"].macs <= 0.5e6).all()

    _check_html_report(rep / "report.html", n_front=len(front))
    data = json.loads((rep / "report.json").read_text())
    assert len(data["pareto"]) == len(front) and len(data["trials"]) == len(trials)
    assert data["summary"]["trained_over_budget"] == 0

    (rep / "pareto.md").unlink()
    assert main(["report", "--study", "cli", *common]) == 0
    assert (rep / "pareto.md").exists()

    out_dir = tmp_path / "exported"
    assert main(["export", "--study", "cli", "--pick", "knee", "--out", str(out_dir),
                 "--int8", "--calibration-images", "64", *common]) == 0
    assert (out_dir / "student.pt2").exists() and (out_dir / "spec.json").exists()
    out = capsys.readouterr().out
    assert "re-counted, match the study" in out and "int8 (student.int8.onnx)" in out
    assert f"report: {rep / 'report.html'} lists this export" in out
    # the report is written again with the shipped student's fp32 and int8 figures
    page = (rep / "report.html").read_text()
    assert "<h2>Exported students</h2>" in page and str(out_dir) in page
    int8 = json.loads((out_dir / "spec.json").read_text())["int8"]
    pr = int8["paired"]
    assert (f"images right by one file alone: fp32 {pr['only_fp32']}, int8 {pr['only_int8']}"
            in out)
    assert ("left in float" in out) == bool(int8["float_ops"])
    row = page[page.index("<h2>Exported students</h2>"):]
    assert f"{100 * int8['int8']['accuracy']:.2f}%" in row
    assert f"{int8['int8']['latency_p50_ms']:.3g} ms ({int8['speedup_p50']:.2f}x)" in row
    assert f"McNemar p {pr['mcnemar_p']:.2g}" in row


def _check_html_report(path, *, n_front):
    """Self-contained: every image is embedded and decodes, nothing is fetched."""
    import base64
    import io
    import re
    from html.parser import HTMLParser

    from PIL import Image

    class Collect(HTMLParser):
        def __init__(self):
            super().__init__()
            self.srcs, self.rows, self.links = [], 0, []

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if tag == "img":
                self.srcs.append(a["src"])
            if tag == "tr":
                self.rows += 1
            if tag in ("script", "link") or (tag == "a" and "href" in a):
                self.links.append(tag)

    page = path.read_text()
    c = Collect()
    c.feed(page)
    assert c.links == [] and not re.search(r"(src|href)=.(https?:|//)", page)
    assert len(c.srcs) >= 2
    for src in c.srcs:
        assert src.startswith("data:image/png;base64,")
        img = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        img.load()
        assert img.size[0] > 300
    assert c.rows == n_front + 1  # header + one row per front student
    assert "Spearman" in page and "hypervolume" in page


@pytest.mark.parametrize("argv,needle", [
    (["search", "--budget", "50MFLOPs"], "--teacher is needed"),
    (["search", "--teacher", "nope.pt"], "does not exist"),
    (["search", "--teacher", "x.pt", "--budget", "fifty"], "cannot read budget"),
    (["export", "--study", "never-made"], "no study 'never-made'"),
])
def test_user_errors_print_one_line_and_exit_2(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_teacher_without_recorded_data_needs_data(tmp_path, capsys):
    space = get_space("resnet")
    spec = space.preset("resnet8", in_channels=1, num_classes=10, input_size=8)
    path = tmp_path / "t.pt"
    save_checkpoint(path, space.build(spec), spec=spec, classes=[str(i) for i in range(10)],
                    input_shape=(1, 8, 8), mean=[0.3], std=[0.37], data=None)
    assert main(["search", "--teacher", str(path), "--workdir", str(tmp_path)]) == 2
    assert "--data is needed" in capsys.readouterr().err


@pytest.mark.slow
def test_cifar10_imagefolder_end_to_end(tmp_path, cifar_subset, capsys):
    """Real CIFAR-10 JPEGs: train a teacher, search under 5M MACs, report, export."""
    teacher = tmp_path / "teacher.pt"
    assert main(["teacher", "train", "--data", f"imagefolder:{cifar_subset}", "--arch",
                 "resnet14", "--epochs", "4", "--out", str(teacher)]) == 0
    common = ["--workdir", str(tmp_path / "runs")]
    # 60 steps (4 epochs of 1,800 images): one epoch (15 steps) leaves every method at
    # chance here (9-12% on 200 images, feature KD and dkd-ls alike, two seeds each), where
    # 60 steps gave 17.5-24% for both
    assert main(["search", "--teacher", str(teacher), "--budget", "5MFLOPs", "--trials", "3",
                 "--steps", "60", "--study", "c10", "--reports", str(tmp_path / "reports"),
                 "--no-noise-check", *common]) == 0  # the noise check: test_search_loop
    out = capsys.readouterr().out
    assert "teacher validation accuracy" in out
    front = pd.read_csv(tmp_path / "reports" / "c10" / "pareto.csv")
    assert len(front) >= 1 and (front.macs <= 5e6).all()
    assert (front.val_accuracy > 0.15).any()  # chance is 10%; one image 0.5 points
    assert main(["export", "--study", "c10", "--pick", "best", "--out",
                 str(tmp_path / "exp"), *common]) == 0
    program = torch.export.load(str(tmp_path / "exp" / "student.pt2")).module()
    assert program(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.slow
def test_demo_runs_from_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # 90 steps a candidate instead of 270: the same chain (teacher, references, search,
    # noise check, report, export, resume) in a third of the training
    assert main(["demo", "--trials", "3", "--steps", "90"]) == 0
    out = capsys.readouterr().out
    assert "demo done" in out
    assert (tmp_path / "exports" / "demo" / "knee" / "student.pt2").exists()
    assert (tmp_path / "reports" / "demo" / "pareto.png").exists()
    # running it again resumes: nothing new is trained
    assert main(["demo", "--trials", "3", "--steps", "90"]) == 0
    assert "3 of 3 candidates already trained" in capsys.readouterr().out


def test_bad_inputs_are_one_message_each_and_leave_the_study_alone(tmp_path, digits_teacher,
                                                                     monkeypatch, capsys):
    """Every bad input a user can give: exit 2, one line saying what was wrong and what to
    do, no traceback, and the existing study exactly as it was."""
    import optuna
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    base = ["--budget", "0.5MFLOPs", "--no-latency", "--no-noise-check", "--steps", "20"]
    assert main(["search", "--teacher", str(digits_teacher), "--study", "k", "--trials", "1",
                 *base]) == 0
    url = f"sqlite:///{tmp_path / 'runs' / 'k' / 'study.db'}"

    def snapshot():
        s = optuna.load_study(study_name="k", storage=url)
        return [(t.number, t.state, t.user_attrs, t.values) for t in s.trials], s.user_attrs

    before = snapshot()
    blob = digits_teacher.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(blob[: len(blob) // 2])
    (tmp_path / "corrupt.pt").write_bytes(bytes(range(256)) * 40)
    torch.save(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)),
               tmp_path / "pickled.pt")
    for split, classes in (("train", "ab"), ("test", "ac")):
        for c in classes:
            (tmp_path / "diff" / split / c).mkdir(parents=True)
            Image.new("L", (8, 8)).save(tmp_path / "diff" / split / c / "0.png")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    (tmp_path / "empty" / "test").mkdir()
    teacher = ["search", "--teacher", str(digits_teacher), *base]
    cases = [
        (["search", "--teacher", "truncated.pt", *base], "cannot read truncated.pt"),
        (["search", "--teacher", "corrupt.pt", *base], "cannot read corrupt.pt"),
        (["search", "--teacher", "pickled.pt", *base], "--trust-pickle"),
        ([*teacher, "--budget", "1kMACs"], "below the cheapest candidate"),
        ([*teacher, "--data", "imagefolder:missing"], "does not exist"),
        ([*teacher, "--data", "imagefolder:empty"], "no class folders"),
        ([*teacher, "--data", "imagefolder:diff"], "class folders of"),
        ([*teacher, "--data", "cifar10:diff"], "not torchvision's CIFAR-10 layout"),
        ([*teacher, "--study", "k", "--budget", "0.3MFLOPs"], "other settings"),
        ([*teacher, "--study", "k", "--workers", "0"], "--workers must be at least 1"),
        (["export", "--study", "k", "--trial", "99"], "99"),
        (["distill", "--study", "k", "--trial", "99"], "99"),
    ]
    for argv, needle in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err, (argv, err)
        assert err.startswith("kdnas: error:"), err
    assert snapshot() == before


def test_the_shipped_study_configs_parse_and_the_package_finds_them():
    """studies/ (top level, seen by the package as kdnas/studies, and copied into a wheel
    from there) holds the demo's config and a CIFAR-10 example; each is a valid study."""
    from kdnas.cli.commands import DEMO_CONFIG
    from kdnas.core.config import load_config

    root = Path(__file__).resolve().parent.parent / "studies"
    assert DEMO_CONFIG.resolve() == (root / "demo.toml").resolve()
    found = sorted(f.name for f in root.glob("*.toml"))
    assert found == ["cifar10-50m.toml", "demo.toml"]
    for name in found:
        cfg = load_config(root / name, {})
        assert cfg.budget_value.limit > 0 and cfg.trials >= 1
    assert load_config(root / "cifar10-50m.toml", {}).budget_value.limit == 50e6


def test_each_setting_is_declared_once_and_its_flag_reaches_the_config():
    """The parser's flags, the config's fields and the resume check all come from the
    declarations in kdnas.core.settings: a flag of every declared setting, each given value
    in the config, and the settings a resumed study must keep."""
    from kdnas.cli.parser import build_parser
    from kdnas.core.config import load_config
    from kdnas.core.settings import SearchConfig, fixed_settings, flag_settings

    parser = build_parser()
    search = parser._subparsers._group_actions[0].choices["search"]
    dests = {a.dest for a in search._actions} - {"help", "config", "workers", "worker_index"}
    assert dests == {f.name for f in flag_settings()}
    args = parser.parse_args(["search", "--no-latency", "--trust-pickle", "--lr", "0.05",
                              "--objectives", "macs,params", "--cache-limit", "2",
                              "--no-teacher-cache", "--references", "resnet8,resnet20"])
    cfg = load_config(None, {f.name: getattr(args, f.name) for f in flag_settings()})
    assert (cfg.latency, cfg.trust_pickle, cfg.lr, cfg.objectives, cfg.cache_limit_gb,
            cfg.teacher_cache, cfg.references) == (False, True, 0.05, ("macs", "params"), 2.0,
                                                   False, ("resnet8", "resnet20"))
    assert load_config(None, {f.name: None for f in flag_settings()}) == SearchConfig()
    fixed = set(fixed_settings())
    assert {"budget", "space", "seed", "lr", "kd", "objectives", "split_seed"} <= fixed
    assert not fixed & {"trials", "workdir", "storage", "device", "references"}


def test_the_progress_display_has_a_line_for_every_search_event(capsys):
    """Events are typed records (kdnas.search.events); the CLI's display handles each one."""
    import typing

    from kdnas.cli.progress import SearchProgress
    from kdnas.core.budget import Cost
    from kdnas.core.settings import SearchConfig
    from kdnas.search import events as ev

    kinds = typing.get_args(ev.SearchEvent)
    assert {k.__name__ for k in kinds} - {"Step"} == {
        n[4:] for n in dir(SearchProgress) if n.startswith("_on_")}
    show, cost = SearchProgress(SearchConfig()), Cost(1_500_000, 20_000)
    spec = {"space": "resnet", "block": "basic", "in_channels": 3, "num_classes": 10,
            "stem": "cifar", "stages": [{"depth": 1, "width": 8}] * 3}
    for e in (ev.StudyStart(2, 5, 1, "gpu-box"), ev.Waiting(4, 5),
              ev.TrialStart(7, 3, 5, cost, spec, "fitnets", 12.0, 6), ev.Step(1, 10, 2.3),
              ev.TrialEnd(7, 3, 5, 0.8125, 11.5, cost, 2, 0.84),
              ev.Infeasible(8, cost, spec, "over budget"), ev.Duplicate(9, 7),
              ev.ReferenceStart("resnet8", cost, spec), ev.ReferenceEnd("resnet8", 0.8, cost),
              ev.NoiseStart(7, 1), ev.NoiseEnd(7, [0, 1], [0.8125, 0.80], 0.0125)):
        show(e)
    out = capsys.readouterr().out
    for needle in ("2 of 5 candidates already trained", "trained on gpu-box", "trial 3/5 (#7)",
                   "1.5M MACs",
                   "again (trial 6 was cut off)", "val acc 81.25% in 11.5s | front 2 | best "
                   "within budget 84.00%", "over budget, not trained",
                   "the same candidate as trial 7", "reference resnet8", "seed spread of 1.25"):
        assert needle in out, needle


def test_a_distilled_student_near_chance_is_called_what_it_is():
    """A full distillation that learnt nothing (3 epochs of DIST on digits: 9.7%) is
    reported as such, with what to do; a trained one is not."""
    from kdnas.cli.commands import distilled_warning

    msg = distilled_warning({"val_accuracy": 0.0972, "epochs": 3.0}, 10)
    assert "near chance (9.7% with 10 classes, after 3 epochs)" in msg and "--epochs" in msg
    assert distilled_warning({"val_accuracy": 0.92, "epochs": 20.0}, 10) is None
    assert distilled_warning({"val_accuracy": 0.30, "epochs": 3.0}, 2) is not None


def test_the_console_shows_kdnas_info_and_third_party_warnings_only():
    """ONNX Runtime's quantizer logs 'Performing symbolic shape inference...' at INFO for
    every candidate of an int8-latency search: not kdnas' line, so not on the console."""
    import logging

    from kdnas.cli import console_logging

    root, before = logging.getLogger(), logging.getLogger().level
    try:
        root.setLevel(logging.DEBUG)  # whatever it was before
        console_logging(verbose=False)
        ort = logging.getLogger("onnxruntime.quantization.shape_inference")
        assert not ort.isEnabledFor(logging.INFO) and ort.isEnabledFor(logging.WARNING)
        assert logging.getLogger("kdnas.search.references").isEnabledFor(logging.INFO)
        assert not logging.getLogger("kdnas.cost").isEnabledFor(logging.DEBUG)
        console_logging(verbose=True)
        assert logging.getLogger("kdnas.cost").isEnabledFor(logging.DEBUG)
    finally:
        root.setLevel(before)
        for ours in ("kdnas", "search_spaces", "benchmarks"):
            logging.getLogger(ours).setLevel(logging.NOTSET)
