"""The ``kdnas`` argument parser: one table of commands and their flags."""

from __future__ import annotations

import argparse

from kdnas import __version__
from kdnas.cli import commands
from kdnas.core.kd_methods import DISTILL_DEFAULT
from kdnas.core.settings import (
    DATA_HELP,
    DISTILL_EPOCHS,
    EXPORT_FORMATS,
    INT8_CALIBRATION_DEFAULT,
    INT8_CALIBRATION_IMAGES,
    INT8_CALIBRATION_METHODS,
    KD_METHODS,
    WORKERS_PER_GPU,
    flag_name,
    flag_settings,
    str_list,
)



def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kdnas", description="Find the best small student network for a teacher you have: "
        "a multi-objective architecture search under a cost budget, each candidate trained "
        "briefly with distillation from the teacher to rank it, the one you choose distilled "
        "fully and exported.")
    p.add_argument("--version", action="version", version=f"kdnas {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    _add_search(sub)
    _add_study_commands(sub)
    _add_teacher(sub)
    _add_demo(sub)
    _add_bench(sub)
    return p


def _add_search(sub) -> None:
    s = sub.add_parser("search", help="search students for a teacher under a budget",
                       description="Search student architectures for a teacher under a budget. "
                       "Running the same command again resumes the study.")
    s.add_argument("--config", help="study config TOML (see studies/); flags override it")
    add_setting_flags(s)
    s.add_argument("--workers", default="auto", help="trial processes on this machine, "
                   "sharing the study, the CPU threads and the GPU; the study stops at "
                   "--trials whichever worker trains them (default auto: on a CPU, one "
                   "one-thread worker for each core that other work does not keep busy now; "
                   f"{WORKERS_PER_GPU} sharing each GPU on CUDA)")
    s.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    s.set_defaults(func=commands.cmd_search)


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """A flag for every study setting declared with a help text (kdnas.core.settings): its
    value, when given, overrides the config file and the default."""
    for f in flag_settings():
        kind, meta = f.metadata["kind"], f.metadata
        kw: dict = {"dest": f.name, "default": None, "help": meta["help"]}
        if kind in ("on", "off"):
            kw.update(action="store_const", const=kind == "on")
        else:
            kw["type"] = str_list if kind in ("list", "ints") else kind
            if meta["choices"]:
                kw["choices"] = list(meta["choices"])
            if meta["metavar"]:
                kw["metavar"] = meta["metavar"]
        parser.add_argument(flag_name(f), **kw)


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
    e.add_argument("--format", type=str_list, default=EXPORT_FORMATS,
                   help="comma-separated: pt2 (torch.export), onnx (checked with "
                   "onnxruntime), torchscript; the state_dict and spec are always written "
                   f"(default {','.join(EXPORT_FORMATS)})")
    int8_args(e)
    e.set_defaults(func=commands.cmd_export)

    f = sub.add_parser("distill", help="train a chosen student fully, then export it",
                       description="Train a student of the study from scratch with the study's "
                       "teacher, checkpointing every epoch "
                       "(run the same command again to resume), then report its test accuracy "
                       "and export it.")
    study_args(f)
    pick_args(f)
    f.add_argument("--reference", help="instead of a trial, a hand-designed student: a "
                   "preset of the study's space (resnet8, resnet20) or space:preset, trained "
                   "with the same teacher, method and recipe: the bar to clear")
    f.add_argument("--seed", type=int, help="training seed (default: the study's); each seed "
                   "keeps its own checkpoint and record, for a seed spread")
    f.add_argument("--kd", choices=KD_METHODS, help="distillation method of the final "
                   f"training (default {DISTILL_DEFAULT}, whatever method the search ranked "
                   "with, chosen by training the methods with the full recipe: "
                   "reports/distill_methods.md; in a study that searched the method with "
                   "--kd auto, the trial's own). DIST and DKD train in their papers' form, "
                   "cross-entropy weight 1")
    f.add_argument("--epochs", type=float, default=DISTILL_EPOCHS,
                   help=f"default {DISTILL_EPOCHS:g}")
    f.add_argument("--lr", type=float, help="peak SGD learning rate (default: the study's)")
    f.add_argument("--batch-size", type=int, help="default: the study's")
    f.add_argument("--schedule", choices=["cosine", "step"], default="cosine",
                   help="learning rate: cosine decay (default) or x0.1 at 50%% and 75%%")
    f.add_argument("--device", help="where to train: auto, cpu, cuda or cuda:N (default: "
                   "the study's)")
    f.add_argument("--out", help="output folder (default "
                   "exports/<study>/trial-<N>-<method>-distilled; no -<method> for FitNets)")
    f.add_argument("--format", type=str_list, default=EXPORT_FORMATS,
                   help=f"as for export (default {','.join(EXPORT_FORMATS)})")
    int8_args(f)
    f.set_defaults(func=commands.cmd_distill)


def int8_args(p) -> None:
    """``--int8`` and its calibration, for export and distill."""
    p.add_argument("--int8", action="store_true", help="also write student.int8.onnx: "
                   "post-training static quantization by ONNX Runtime (QDQ, int8 weights per "
                   "channel), with fp32 and int8 test accuracy and ONNX Runtime latency "
                   "(batch 1, one thread) measured side by side on the card")
    p.add_argument("--calibration-images", type=int, default=INT8_CALIBRATION_IMAGES,
                   metavar="N", help=f"training images to calibrate int8 on (default "
                   f"{INT8_CALIBRATION_IMAGES})")
    p.add_argument("--calibration-method", choices=INT8_CALIBRATION_METHODS,
                   default=INT8_CALIBRATION_DEFAULT, help=f"how activation ranges are set "
                   f"(default {INT8_CALIBRATION_DEFAULT})")


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
    tt.add_argument("--keep-early", type=fractions, default=(), metavar="F[,F]",
                    help="also write the teacher as it was at these fractions of the run, "
                    "e.g. 0.25 writes <out>-at25pct.pt: an earlier, weaker teacher of the same "
                    "run (for experiments: measured on CIFAR-10, a student distilled from it "
                    "ends near its accuracy, far below one distilled from the final teacher; "
                    "see docs/guide.md)")
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
    d.add_argument("--steps", type=int,
                   help="brief training steps of each candidate, for a quicker look (default: "
                   "the config's, kdnas' ranking recipe: 270 steps on digits)")
    d.add_argument("--workdir", default="runs")
    d.add_argument("--reports", default="reports")
    d.set_defaults(func=commands.cmd_demo)



def _add_bench(sub) -> None:
    # the benchmark is its own entry point (python -m kdnas.bench), which has the options
    b = sub.add_parser("bench", add_help=False, help="how fast trials train here: "
                       "reports/BENCHMARKS.md (kdnas bench --help)")
    b.set_defaults(func=commands.cmd_bench)


def fractions(text: str) -> tuple[float, ...]:
    """``--keep-early 0.25,0.5``: comma-separated numbers."""
    try:
        return tuple(float(x) for x in str_list(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give fractions of the run such as "
                                         "0.25 or 0.25,0.5") from None
