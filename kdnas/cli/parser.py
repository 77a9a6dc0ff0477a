"""The ``kdnas`` argument parser: one table of commands and their flags."""

from __future__ import annotations

import argparse

from kdnas import __version__
from kdnas.cli import commands

BUDGET_HELP = ("cost limit at batch 1: 50MFLOPs or 50MMACs (the same thing: multiply-"
               "accumulates, the fvcore/torchvision convention; FLOPs = MACs here), 1.5GFLOPs, "
               "0.5Mparams, or 5ms (measured latency)")
DATA_HELP = ("digits (scikit-learn's 8x8 digits, bundled), cifar10:PATH (torchvision's "
             "cifar-10-batches-py layout) or imagefolder:PATH (PATH/train/<class>/*, "
             "PATH/test/<class>/* or val/); decoded image folders are cached in $KDNAS_CACHE "
             "or ~/.cache/kdnas")


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
    _add_search(sub)
    _add_study_commands(sub)
    _add_teacher(sub)
    _add_demo(sub)
    _add_bench(sub)
    return p


def _add_search(sub) -> None:  # layout: table
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
    s.add_argument("--steps", type=int, help="brief training per candidate, in optimizer "
                   "steps of --batch-size images (default 400, or 30 epochs of a small data "
                   "set if that is fewer; on CIFAR-10 it ranks candidates of one space like "
                   "8x longer training at Kendall tau 0.71, and 800 steps did no better: "
                   "reports/search_quality.md)")
    s.add_argument("--epochs", type=float, help="brief training per candidate in epochs "
                   "instead of steps")
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
    s.add_argument("--cache-limit", type=float, dest="cache_limit_gb", metavar="GB",
                   help="largest teacher cache to write, in GB (default 8): a study whose "
                   "cache would be larger runs the teacher in every trial instead")
    s.add_argument("--no-teacher-cache", action="store_true", help="run the teacher in every "
                   "trial instead of computing its outputs once per study")
    s.add_argument("--no-noise-check", action="store_true", help="do not train the front's "
                   "knee again with another seed at the end (the report then cannot say how "
                   "much of the front is seed noise)")
    s.add_argument("--teacher-layers", type=_str_list,
                   help="comma-separated teacher module names to tap instead of the detected "
                   "stages")
    s.add_argument("--val-fraction", type=float, help="share of the training data held out "
                   "for validation (default: the teacher's, else 0.1)")
    s.add_argument("--seed", type=int, help="sampler and training seed (default 0)")
    s.add_argument("--storage", help="Optuna storage URL shared by workers, e.g. "
                   "postgresql://user:pw@host/db (default sqlite in the study folder); start "
                   "the same command on each machine to share one study")
    s.add_argument("--workers", type=int, default=1, help="trial processes on this machine, "
                   "sharing the study and the CPU threads; the study stops at --trials "
                   "whichever worker trains them (default 1)")
    s.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    s.add_argument("--workdir", default=None, help="where study folders go (default runs)")
    s.add_argument("--reports", default=None, help="where reports go (default reports)")
    s.add_argument("--objectives", type=_str_list, help="what accuracy is traded against, "
                   "comma-separated: macs (default), params, latency (measured here), "
                   "train_time (a training step, timed before training: candidates that "
                   "train faster for their accuracy); the first is the report's front, e.g. "
                   "--objectives latency,macs or macs,train_time")
    s.add_argument("--references", type=_str_list, help="hand-designed students to train with "
                   "the same brief recipe and show in the report, e.g. resnet8,resnet20 or "
                   "mobilenet:mobilenetv2_half (presets: docs/spaces.md)")
    s.add_argument("--latency-threads", type=int, help="threads for latency (default 1)")
    s.add_argument("--latency-batch", type=int, help="batch size for latency (default 1)")
    s.add_argument("--no-latency", action="store_true", help="skip latency measurement")
    s.add_argument("--device", help="where candidates train: auto (a CUDA GPU when one is "
                   "visible, else the CPU; the default), cpu, cuda or cuda:N. On CUDA the data "
                   "and teacher outputs stay on the GPU and training runs in bf16 autocast")
    s.add_argument("--latency-device", help="where latency is measured: cpu (the default: "
                   "most students ship to CPUs), cuda or cuda:N")
    s.set_defaults(func=commands.cmd_search)


def _add_study_commands(sub) -> None:  # layout: table
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
    r.set_defaults(func=commands.cmd_report)

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
    e.set_defaults(func=commands.cmd_export)

    f = sub.add_parser("distill", help="train a chosen student fully, then export it",
                       description="Train a student of the study from scratch with the study's "
                       "teacher and the trial's distillation method, checkpointing every epoch "
                       "(run the same command again to resume), then report its test accuracy "
                       "and export it.")
    study_args(f)
    pick_args(f)
    f.add_argument("--reference", help="instead of a trial, a hand-designed student: a "
                   "preset of the study's space (resnet8, resnet20) or space:preset, trained "
                   "with the same teacher, method and recipe: the bar to clear")
    f.add_argument("--seed", type=int, help="training seed (default: the study's); each seed "
                   "keeps its own checkpoint and record, for a seed spread")
    f.add_argument("--epochs", type=float, default=200, help="default 200")
    f.add_argument("--lr", type=float, help="peak SGD learning rate (default: the study's)")
    f.add_argument("--batch-size", type=int, help="default: the study's")
    f.add_argument("--schedule", choices=["cosine", "step"], default="cosine",
                   help="learning rate: cosine decay (default) or x0.1 at 50%% and 75%%")
    f.add_argument("--device", help="where to train: auto, cpu, cuda or cuda:N (default: "
                   "the study's)")
    f.add_argument("--out", help="output folder (default exports/<study>/trial-<N>-distilled)")
    f.add_argument("--format", type=_str_list, default=("pt2", "onnx"),
                   help="as for export (default pt2,onnx)")
    f.set_defaults(func=commands.cmd_distill)


def _add_teacher(sub) -> None:
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
    tt.add_argument("--device", default="auto", help="where to train: auto (a CUDA GPU when "
                    "one is visible, else the CPU; the default), cpu, cuda or cuda:N")
    tt.add_argument("--out", help="checkpoint path (default teachers/<arch>-<data>.pt)")
    tt.set_defaults(func=commands.cmd_teacher_train)
    t.set_defaults(func=lambda a: (t.print_help(), 2)[1])


def _add_demo(sub) -> None:
    d = sub.add_parser("demo", help="the whole job on bundled data, in a few minutes",
                       description="Train (once, cached) a small teacher on scikit-learn's "
                       "digits, search students under a small budget, write the report and "
                       "export the knee student. Needs no files.")
    d.add_argument("--config", default=str(commands.DEMO_CONFIG),
                   help="study config (default: the demo config shipped with kdnas)")
    d.add_argument("--study", default="demo", help="default demo")
    d.add_argument("--trials", type=int, help="override the config's trial count")
    d.add_argument("--workdir", default="runs")
    d.add_argument("--reports", default="reports")
    d.set_defaults(func=commands.cmd_demo)



def _add_bench(sub) -> None:
    # the benchmark is its own entry point (python -m kdnas.bench), which has the options
    b = sub.add_parser("bench", add_help=False, help="how fast trials train here: "
                       "reports/BENCHMARKS.md (kdnas bench --help)")
    b.set_defaults(func=commands.cmd_bench)
