"""Command line: ``kdnas search | report | export | teacher train | demo``.

The CLI owns argument parsing, progress display, exit codes and friendly errors; the work is
done by the library modules. ``main(argv) -> int`` is easy to test.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from kdnas import __version__
from kdnas.errors import KdnasError

log = logging.getLogger("kdnas")

BUDGET_HELP = ("cost limit at batch 1: 50MFLOPs or 50MMACs (the same thing: multiply-"
               "accumulates, the fvcore/torchvision convention; FLOPs = MACs here), 1.5GFLOPs, "
               "0.5Mparams, or 5ms (measured latency)")
DATA_HELP = ("digits (scikit-learn's 8x8 digits, bundled), cifar10:PATH (torchvision's "
             "cifar-10-batches-py layout) or imagefolder:PATH (PATH/train/<class>/*, "
             "PATH/test/<class>/* or val/); decoded image folders are cached in $KDNAS_CACHE "
             "or ~/.cache/kdnas")


DEMO_CONFIG = Path(__file__).resolve().parent.parent / "studies" / "demo.toml"


def _say(msg: str = "") -> None:
    print(msg, flush=True)


# ----------------------------------------------------------------------------- progress
class SearchProgress:
    """Turns study events into a line per trial and a bar for the training steps."""

    def __init__(self, cfg) -> None:
        self.cfg = cfg
        self.bar = None
        self.t_start = time.perf_counter()

    def _open_bar(self) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=None, desc="  training", unit="step", leave=False, disable=None,
                        file=sys.stderr)

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __call__(self, kind: str, info: dict) -> None:
        from kdnas.cost import fmt_count

        if kind == "study_start":
            if info["trained"]:
                _say(f"resuming study {self.cfg.study!r}: {info['trained']} of {info['target']} "
                     "candidates already trained")
        elif kind == "reference_start":
            c = info["cost"]
            _say(f"reference {info['name']}: {fmt_count(c.macs)} MACs, {fmt_count(c.params)} "
                 "params, same brief recipe")
            self._open_bar()
        elif kind == "reference_end":
            self._close_bar()
            _say(f"  val acc {100 * info['accuracy']:.2f}%")
        elif kind == "infeasible":
            c = info["cost"]
            _say(f"  trial {info['trial']}: {fmt_count(c.macs)} MACs, {fmt_count(c.params)} "
                 f"params: over budget, not trained")
        elif kind == "trial_start":
            from search_spaces import describe

            c = info["cost"]
            lat = f", {c.latency_ms:.2f} ms" if c.latency_ms is not None else ""
            _say(f"trial {info['index']}/{info['target']} (#{info['trial']}) "
                 f"{describe(info['spec'])}: {fmt_count(c.macs)} MACs, "
                 f"{fmt_count(c.params)} params{lat}, kd {info['kd']}")
            self._open_bar()
        elif kind == "step":
            if self.bar is not None:
                self.bar.total = info["total"]
                self.bar.update(1)
                if info["step"] % 10 == 0:
                    self.bar.set_postfix(loss=f"{info['loss']:.3f}")
        elif kind == "trial_end":
            self._close_bar()
            from kdnas.report import front_frame, trials_frame

            front = front_frame(trials_frame(info["study"]), self.cfg.cost_columns[0])
            best = f"{100 * front.val_accuracy.max():.2f}%" if len(front) else "-"
            _say(f"  val acc {100 * info['accuracy']:.2f}% in {info['seconds']:.1f}s | "
                 f"front {len(front)} | best within budget {best} | "
                 f"{(time.perf_counter() - self.t_start) / 60:.1f} min so far")


# ----------------------------------------------------------------------------- commands
def cmd_search(args) -> int:

    from kdnas.config import load_config
    from kdnas.cost import fmt_count
    from kdnas.distill import evaluate
    from kdnas.report import write_report
    from kdnas.study import prepare, run_search

    overrides = {k: getattr(args, k) for k in (
        "study", "teacher", "data", "budget", "space", "trials", "seed", "epochs",
        "train_fraction", "batch_size", "lr", "kd", "val_fraction", "storage", "workdir",
        "reports", "latency_threads", "teacher_layers", "teacher_arch", "num_classes",
        "normalize", "feature_weight", "objectives", "latency_batch", "references")}
    if args.no_teacher_cache:
        overrides["teacher_cache"] = False
    if args.no_latency:
        overrides["latency"] = False
    if args.trust_pickle:
        overrides["trust_pickle"] = True
    cfg = load_config(args.config, overrides)
    budget = cfg.budget_obj()
    t0 = time.perf_counter()
    cfg, teacher, data, notes = prepare(cfg)
    for note in notes:
        _say(note)
    _say(f"data: {data.spec}: {len(data.train_y)} train / {len(data.val_y)} val images "
         f"(val carved with seed {cfg.split_seed}), input {tuple(data.input_shape)}, "
         f"{data.num_classes} classes")
    macs = teacher.meta.get("macs")
    _say(f"teacher: {teacher.source} ({teacher.meta.get('format')}"
         + (f", {fmt_count(macs)} MACs)" if macs else ")"))
    if teacher.taps:
        _say("teacher stages tapped for hints: " + ", ".join(
            f"{t.module} ({t.channels} ch, stride {t.stride})" for t in teacher.taps))
    acc = evaluate(teacher.module, data, "val")
    teacher.meta["val_accuracy_measured"] = acc
    _say(f"teacher validation accuracy: {100 * acc:.2f}%")
    if acc < 1.5 / data.num_classes:
        log.warning("the teacher is near chance on this data (%.1f%% with %d classes): check "
                    "the data, its normalisation and the class order", 100 * acc,
                    data.num_classes)
    _say(f"budget: {budget.describe()}; space: {cfg.space}; training each candidate "
         f"{cfg.epochs:g} epoch(s) on {100 * cfg.train_fraction:.0f}% of the train split "
         f"with {cfg.kd} distillation")
    outcome = None
    try:
        outcome = run_search(cfg, teacher, data, on_event=SearchProgress(cfg))
    except KeyboardInterrupt:
        _say("\ninterrupted: writing the report of what finished; run the same command to "
             "resume")
    from kdnas.study import open_study

    study = outcome.study if outcome else open_study(cfg, create=False)
    out = write_report(study, cfg)
    _print_summary(cfg, out, time.perf_counter() - t0)
    return 130 if (outcome is None or outcome.interrupted) else 0


def _print_summary(cfg, out: Path, seconds: float) -> None:
    """The closing lines, from the summary the report just wrote."""
    from kdnas.report import export_command

    s = json.loads((out / "summary.json").read_text())
    states = ", ".join(f"{v} {k}" for k, v in sorted(s["trials_by_state"].items()))
    n = s["front_size"]
    _say(f"\nstudy {cfg.study}: {states}; front of {n} student{'' if n == 1 else 's'}"
         + (f", best val acc {100 * s['best_val_accuracy']:.2f}%, knee trial {s['knee_trial']}"
            if s["front_size"] else "") + f" ({seconds / 60:.1f} min)")
    _say(f"report: {out}/report.html (and pareto.md, pareto.png, pareto.csv, trials.csv, "
         "report.json)")
    if s["front_size"]:
        _say(f"export the knee: {export_command(cfg)}")


def _study_and_config(args):
    from kdnas.config import SearchConfig
    from kdnas.study import open_study, stored_config

    probe = SearchConfig(study=args.study, workdir=args.workdir, storage=args.storage)
    study = open_study(probe, create=False)
    cfg = stored_config(study)
    if cfg is None:
        raise KdnasError(f"study {args.study!r} has no kdnas settings stored: it was not "
                         "made by `kdnas search`")
    import dataclasses

    cfg = dataclasses.replace(cfg, workdir=args.workdir, storage=args.storage,
                              reports=getattr(args, "reports", None) or cfg.reports)
    return study, cfg


def _picked_trial(args, study, cfg) -> int:
    """--trial N, or the trial --pick names on the study's front."""
    from kdnas.report import pick_trial

    if args.trial is not None:
        return args.trial
    return pick_trial(study, args.pick, cfg.cost_columns[0])


def cmd_report(args) -> int:
    from kdnas.report import write_report

    study, cfg = _study_and_config(args)
    out = write_report(study, cfg)
    _print_summary(cfg, out, 0.0)
    return 0


def cmd_export(args) -> int:
    from kdnas.cost import fmt_count
    from kdnas.data import load_data
    from kdnas.export import export_trial

    study, cfg = _study_and_config(args)
    trial = _picked_trial(args, study, cfg)
    norm = study.user_attrs.get("normalization")
    data = load_data(cfg.data, val_fraction=cfg.val_fraction, seed=cfg.split_seed)
    if norm:
        data = data.with_normalization(norm["mean"], norm["std"])
    out = Path(args.out) if args.out else Path("exports") / cfg.study / f"trial-{trial}"
    r = export_trial(study, cfg, trial, data, out, formats=args.format)
    _say(f"exported trial {r.trial}: {fmt_count(r.macs)} MACs ({fmt_count(2 * r.macs)} FLOPs), "
         f"{fmt_count(r.params)} params (re-counted, match the study)")
    _say(f"validation accuracy re-measured {100 * r.val_accuracy:.2f}% "
         f"(study recorded {100 * r.recorded_accuracy:.2f}%)")
    for fmt, diff in r.max_abs_diff.items():
        _say(f"{fmt} export matches the PyTorch model: max abs difference of logits on "
             f"validation images {diff:.2g}")
    for f in r.files:
        _say(f"  {f}")
    return 0


def cmd_distill(args) -> int:
    from kdnas.final import distill_trial
    from kdnas.report import write_report
    from kdnas.study import prepare

    study, cfg = _study_and_config(args)
    trial = _picked_trial(args, study, cfg)
    cfg, teacher, data, notes = prepare(cfg)
    for note in notes:
        _say(note)
    out = Path(args.out) if args.out else Path("exports") / cfg.study / f"trial-{trial}-distilled"
    _say(f"distilling trial {trial} of study {cfg.study} for {args.epochs:g} epochs on the full "
         f"train split ({len(data.train_y)} images); checkpoint every epoch in "
         f"{cfg.study_dir / 'distill' / f'trial-{trial}'}: run the same command to resume")
    info = distill_trial(study, cfg, trial, teacher, data, epochs=args.epochs, out_dir=out,
                         lr=args.lr, batch_size=args.batch_size, schedule=args.schedule,
                         formats=args.format,
                         progress=_train_progress(f"distilling trial {trial}"))
    write_report(study, cfg)
    _say(f"trial {trial}: validation accuracy {100 * info['val_accuracy']:.2f}% (search: "
         f"{100 * (info['search_val_accuracy'] or 0):.2f}%), test accuracy "
         f"{100 * info['test_accuracy']:.2f}%")
    for f in info["files"]:
        _say(f"  {f}")
    return 0


def _train_progress(desc: str):
    """A bar on a terminal; elsewhere (logs, CI) a line at every tenth of the run."""
    from tqdm import tqdm

    state = {"bar": None, "t0": time.perf_counter()}
    tty = sys.stderr.isatty()

    def progress(step: int, total: int, loss: float) -> None:
        if tty:
            if state["bar"] is None:
                state["bar"] = tqdm(total=total, desc=desc, unit="step", file=sys.stderr)
            state["bar"].update(1)
            if step % 10 == 0:
                state["bar"].set_postfix(loss=f"{loss:.3f}")
            if step >= total:
                state["bar"].close()
        elif step == total or step % max(1, total // 10) == 0:
            spent = time.perf_counter() - state["t0"]
            eta = spent / step * (total - step)
            _say(f"  {desc}: step {step}/{total}, loss {loss:.3f}, {spent:.0f}s spent, "
                 f"about {eta:.0f}s to go")

    return progress


def train_teacher(data_spec: str, arch: str, *, epochs: float, out: Path, lr: float = 0.1,
                  batch_size: int = 128, val_fraction: float = 0.1, split_seed: int = 0,
                  seed: int = 0, progress=None) -> tuple[Path, float]:
    """Train a teacher from the resnet space's presets and save a kdnas checkpoint."""
    import torch

    from kdnas.cost import count_macs
    from kdnas.data import load_data
    from kdnas.distill import TrainConfig, fit
    from kdnas.teacher import save_checkpoint
    from search_spaces.resnet import PRESETS, ResNetSpace

    if arch not in PRESETS:
        raise KdnasError(f"unknown teacher architecture {arch!r}: choose one of "
                         f"{', '.join(PRESETS)}")
    data = load_data(data_spec, val_fraction=val_fraction, seed=split_seed)
    spec = ResNetSpace().preset(arch, in_channels=data.in_channels,
                                num_classes=data.num_classes, input_size=data.input_size)
    torch.manual_seed(seed)
    model = ResNetSpace().build(spec)
    result = fit(model, data, TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size,
                                          kd="none", seed=seed), progress=progress)
    save_checkpoint(out, model, spec=spec, classes=data.classes,
                    input_shape=data.input_shape, mean=data.mean, std=data.std,
                    data=data_spec, val_accuracy=result.val_accuracy,
                    extra={"split": {"val_fraction": val_fraction, "seed": split_seed},
                           "arch": arch, "epochs": epochs,
                           "macs": count_macs(model, data.input_shape)})
    return Path(out), result.val_accuracy


def cmd_teacher_train(args) -> int:
    out = Path(args.out or f"teachers/{args.arch}-{args.data.split(':')[0]}.pt")
    path, acc = train_teacher(args.data, args.arch, epochs=args.epochs, out=out, lr=args.lr,
                              batch_size=args.batch_size, val_fraction=args.val_fraction,
                              seed=args.seed, progress=_train_progress(f"training {args.arch}"))
    _say(f"teacher {args.arch}: validation accuracy {100 * acc:.2f}%; written to {path}")
    _say(f"next: kdnas search --teacher {path} --budget 50MFLOPs")
    return 0


def cmd_demo(args) -> int:
    from kdnas.data import cache_dir

    teacher = cache_dir() / "demo" / "teacher-digits-resnet20.pt"
    if not teacher.exists():
        _say(f"training a small teacher (resnet20) on the bundled digits data, cached at "
             f"{teacher}")
        _, acc = train_teacher("digits", "resnet20", epochs=30, out=teacher, val_fraction=0.2,
                               progress=_train_progress("training teacher"))
        _say(f"teacher validation accuracy {100 * acc:.2f}%")
    else:
        _say(f"using the cached demo teacher {teacher}")
    argv = ["search", "--config", str(args.config), "--teacher", str(teacher),
            "--study", args.study, "--workdir", args.workdir, "--reports", args.reports]
    if args.trials:
        argv += ["--trials", str(args.trials)]
    _say("running: kdnas " + " ".join(argv))
    code = main(argv)
    if code != 0:
        return code
    code = main(["export", "--study", args.study, "--pick", "knee", "--workdir", args.workdir,
                 "--out", str(Path("exports") / args.study / "knee")])
    if code == 0:
        _say(f"\ndemo done: study in {args.workdir}/{args.study}/, report in "
             f"{args.reports}/{args.study}/report.html, exported knee student in "
             f"exports/{args.study}/knee/ (student.onnx, student.pt2, MODEL_CARD.md)")
    return code


# ----------------------------------------------------------------------------- parser
def _str_list(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kdnas", description="Find the best small student network for a teacher you have: "
        "a multi-objective architecture search under a cost budget, each candidate trained "
        "briefly with feature distillation from the teacher.")
    p.add_argument("--version", action="version", version=f"kdnas {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("search", help="search students for a teacher under a budget",
                       description="Search student architectures for a teacher under a budget. "
                       "Running the same command again resumes the study.")
    s.add_argument("--config", help="study config TOML (see studies/); flags override it")
    s.add_argument("--teacher", help="the teacher: a kdnas checkpoint (from `kdnas teacher "
                   "train`), a state_dict with --teacher-arch, torchvision:NAME:FILE, a "
                   "torch.export program (.pt2), a TorchScript archive, or a pickled module "
                   "with --trust-pickle")
    s.add_argument("--teacher-arch", help="architecture of a state_dict teacher: a torchvision "
                   "model name (resnet18) or your class as my_pkg.models:Net or file.py:Net")
    s.add_argument("--num-classes", type=int, help="classes of that architecture's head "
                   "(default: read from the weights)")
    s.add_argument("--trust-pickle", action="store_true", help="allow loading a whole pickled "
                   "module; unpickling runs code from the file, so only for files you trust")
    s.add_argument("--normalize", help="input normalisation the teacher was trained with: "
                   "imagenet, cifar10, none, MEAN,STD or M1,M2,M3:S1,S2,S3 (default: a kdnas "
                   "checkpoint's own, else the data's statistics)")
    s.add_argument("--data", help=DATA_HELP + "; default: the data recorded in the teacher")
    s.add_argument("--budget", help=BUDGET_HELP + " (default 50MFLOPs)")
    s.add_argument("--trials", type=int, help="candidates to train in all, counting those of "
                   "earlier runs of this study; over-budget proposals are not counted "
                   "(default 20)")
    s.add_argument("--study", help="study name (default kdnas): folder WORKDIR/NAME holds "
                   "study.db, manifest.json and trial weights")
    s.add_argument("--space", help="student search space: resnet (default), mobilenet, "
                   "shufflenet, or your own as path/to/file.py:NAME (docs/spaces.md)")
    s.add_argument("--epochs", type=float, help="brief training per candidate (default 1)")
    s.add_argument("--train-fraction", type=float,
                   help="fraction of the train split used per candidate (default 1.0)")
    s.add_argument("--batch-size", type=int, help="default 128")
    s.add_argument("--lr", type=float, help="peak SGD learning rate (default 0.1)")
    s.add_argument("--kd", choices=["feature", "fitnets", "at", "sp", "pkt", "logit", "none",
                                     "auto"],
                   help="distillation, always with Hinton logit KD: feature (= fitnets, the "
                   "default) adds FitNets hints at stage boundaries through 1x1-conv + BN "
                   "connectors; at adds attention transfer; sp (similarity preserving) and "
                   "pkt add relational losses that need no connector; logit is KD alone; "
                   "none is cross-entropy alone; auto searches the method and its weight")
    s.add_argument("--feature-weight", type=float, help="weight of the feature loss "
                   "(default per method: fitnets 1, at 5, sp 3000, pkt 30000)")
    s.add_argument("--no-teacher-cache", action="store_true", help="run the teacher in every "
                   "trial instead of computing its outputs once per study")
    s.add_argument("--teacher-layers", type=_str_list,
                   help="comma-separated teacher module names to tap instead of the detected "
                   "stages")
    s.add_argument("--val-fraction", type=float, help="share of the training data held out "
                   "for validation (default: the teacher's, else 0.1)")
    s.add_argument("--seed", type=int, help="sampler and training seed (default 0)")
    s.add_argument("--storage", help="Optuna storage URL shared by workers, e.g. "
                   "postgresql://… (default sqlite in the study folder)")
    s.add_argument("--workdir", default=None, help="where study folders go (default runs)")
    s.add_argument("--reports", default=None, help="where reports go (default reports)")
    s.add_argument("--objectives", type=_str_list, help="what accuracy is traded against, "
                   "comma-separated: macs (default), params, latency (measured here); the "
                   "first is the report's front, e.g. --objectives latency,macs")
    s.add_argument("--references", type=_str_list, help="hand-designed students to train with "
                   "the same brief recipe and show in the report, e.g. resnet8,resnet20 or "
                   "mobilenet:mobilenetv2_half (presets: docs/spaces.md)")
    s.add_argument("--latency-threads", type=int, help="threads for latency (default 1)")
    s.add_argument("--latency-batch", type=int, help="batch size for latency (default 1)")
    s.add_argument("--no-latency", action="store_true", help="skip latency measurement")
    s.set_defaults(func=cmd_search)

    def study_args(q):
        q.add_argument("--study", required=True, help="study name")
        q.add_argument("--workdir", default="runs", help="where study folders are (default runs)")
        q.add_argument("--storage", help="Optuna storage URL if not the study's SQLite file")

    def pick_args(q):
        g = q.add_mutually_exclusive_group()
        g.add_argument("--trial", type=int, help="trial number (see pareto.md)")
        g.add_argument("--pick", choices=["knee", "best"], default="knee",
                       help="knee of the front (default) or most accurate within budget")

    r = sub.add_parser("report", help="write the report of a study again",
                       description="Write reports/<study>/ (trials.csv, pareto.csv/.md/.png) "
                       "from the study's storage.")
    study_args(r)
    r.add_argument("--reports", default=None, help="where reports go (default: the study's)")
    r.set_defaults(func=cmd_report)

    e = sub.add_parser("export", help="export a trained student",
                       description="Rebuild a student from its spec, verify its cost and "
                       "accuracy against the study, and write weights, spec, a torch.export "
                       "program (.pt2) and a model card.")
    study_args(e)
    pick_args(e)
    e.add_argument("--out", help="output folder (default exports/<study>/trial-<N>)")
    e.add_argument("--format", type=_str_list, default=("pt2", "onnx"),
                   help="comma-separated: pt2 (torch.export), onnx (checked with "
                   "onnxruntime), torchscript; the state_dict and spec are always written "
                   "(default pt2,onnx)")
    e.set_defaults(func=cmd_export)

    f = sub.add_parser("distill", help="train a chosen student fully, then export it",
                       description="Train a student of the study from scratch with the study's "
                       "teacher and the trial's distillation method, checkpointing every epoch "
                       "(run the same command again to resume), then report its test accuracy "
                       "and export it.")
    study_args(f)
    pick_args(f)
    f.add_argument("--epochs", type=float, default=200, help="default 200")
    f.add_argument("--lr", type=float, help="peak SGD learning rate (default: the study's)")
    f.add_argument("--batch-size", type=int, help="default: the study's")
    f.add_argument("--schedule", choices=["cosine", "step"], default="cosine",
                   help="learning rate: cosine decay (default) or x0.1 at 50%% and 75%%")
    f.add_argument("--out", help="output folder (default exports/<study>/trial-<N>-distilled)")
    f.add_argument("--format", type=_str_list, default=("pt2", "onnx"),
                   help="as for export (default pt2,onnx)")
    f.set_defaults(func=cmd_distill)

    t = sub.add_parser("teacher", help="teacher tools")
    tsub = t.add_subparsers(dest="teacher_command", metavar="ACTION")
    tt = tsub.add_parser("train", help="train a teacher and write a kdnas checkpoint",
                         description="Train a ResNet teacher (resnet20/32/44/56/110, resnet8x4, "
                         "resnet32x4) and write a checkpoint that records its architecture, "
                         "classes, input size, normalisation and data.")
    tt.add_argument("--data", required=True, help=DATA_HELP)
    tt.add_argument("--arch", default="resnet56", help="default resnet56")
    tt.add_argument("--epochs", type=float, default=30, help="default 30")
    tt.add_argument("--lr", type=float, default=0.1)
    tt.add_argument("--batch-size", type=int, default=128)
    tt.add_argument("--val-fraction", type=float, default=0.1,
                    help="held out for validation, as kdnas search will (default 0.1)")
    tt.add_argument("--seed", type=int, default=0)
    tt.add_argument("--out", help="checkpoint path (default teachers/<arch>-<data>.pt)")
    tt.set_defaults(func=cmd_teacher_train)
    t.set_defaults(func=lambda a: (t.print_help(), 2)[1])

    d = sub.add_parser("demo", help="the whole job on bundled data, in a few minutes",
                       description="Train (once, cached) a small teacher on scikit-learn's "
                       "digits, search students under a small budget, write the report and "
                       "export the knee student. Needs no files.")
    d.add_argument("--config", default=str(DEMO_CONFIG),
                   help="study config (default: studies/demo.toml of this checkout)")
    d.add_argument("--study", default="demo", help="default demo")
    d.add_argument("--trials", type=int, help="override the config's trial count")
    d.add_argument("--workdir", default="runs")
    d.add_argument("--reports", default="reports")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s: %(message)s", stream=sys.stderr)
    for noisy in ("optuna", "fvcore", "PIL", "matplotlib", "onnxscript", "onnx_ir", "torch"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except KdnasError as e:
        print(f"kdnas: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kdnas: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
