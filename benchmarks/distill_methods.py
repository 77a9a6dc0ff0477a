"""Distillation on CIFAR-10: time overhead (with and without the teacher cache) and the
accuracy of each --kd method against cross-entropy alone, at equal brief training.

    python -m benchmarks.distill_methods --teacher T.pt --data imagefolder:PATH \\
        [--epochs 2 --train-fraction 0.5 --seeds 0 1 --rounds 3]

Timing alone (more rounds, to reports/benchmarks/distill_overhead.md):
    ... --seeds 0 --rounds 4 --timing-only --out reports/benchmarks/distill_overhead.md

Pairs: a same-family student (resnet8) and a cross-family one (the KD papers' MobileNetV2
x0.5), both at most a third of the teacher's MACs. Every run of a pair trains the same student
(same init, same batches); only the loss differs. Figures go to
reports/benchmarks/distill_methods.md, measured in one run so that ratios compare like with
like on a shared machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

from kdnas.core.budget import fmt_count
from kdnas.core.settings import AUTO_METHODS, SearchConfig, TrainConfig
from kdnas.cost import count_macs
from kdnas.distill.candidate import TrainContext, train_candidate
from kdnas.teacher.prepare import prepare
from search_spaces import get_space

PAIRS = (("same family", "resnet", "resnet8"), ("cross family", "mobilenet", "mobilenetv2_half"))
METHODS = ("none", *AUTO_METHODS)


# students timed against cross-entropy alone: the smallest reference student, and one of the
# search's own candidates (resnet8 deepened to 2-2-1 blocks) at a third of the teacher's MACs
TIMED = (("resnet8", "resnet8", None), ("resnet 2-2-1", "resnet8", (2, 2, 1)))


def train(space_name, preset, data, teacher, tcfg, seed, cache_root=None, depths=None):
    """A preset (its stages deepened to ``depths``) trained through the one way to train a
    candidate, the teacher's outputs cached under ``cache_root`` (None: run every step)."""
    space = get_space(space_name)
    spec = space.preset(preset, in_channels=data.in_channels, num_classes=data.num_classes,
                        input_size=data.input_size)
    for stage, depth in zip(spec["stages"], depths or (), strict=False):
        stage["depth"] = depth
    t0 = time.perf_counter()
    out = train_candidate(TrainContext(teacher, data, cache_root), spec,
                          dataclasses.replace(tcfg, seed=seed), init=seed)
    return out.val_accuracy, time.perf_counter() - t0, count_macs(out.model, data.input_shape)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--train-fraction", type=float, default=0.5)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--out", default="reports/benchmarks/distill_methods.md")
    ap.add_argument("--timing-only", action="store_true", help="skip the accuracy table")
    ap.add_argument("--accuracy-only", action="store_true", help="skip the timing table")
    ap.add_argument("--note", action="append", default=[],
                    help="a line of provenance for the report (data, how the teacher was "
                    "trained); repeatable")
    ap.add_argument("--rounds", type=int, default=3,
                    help="timed rounds of the runs that read the cache (fastest kept)")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    cfg, teacher, data, notes = prepare(SearchConfig(teacher=args.teacher, data=args.data))
    from kdnas.distill import evaluate

    t_acc = evaluate(teacher.module, data, channels_last=teacher.channels_last)
    t_macs = teacher.meta["macs"]
    base = TrainConfig(epochs=args.epochs, train_fraction=args.train_fraction)
    lines = []

    # 1. time per trial: CE alone, feature KD without cache, with cache (write, then read)
    every: dict[tuple[str, str], list[float]] = {}
    s_macs = {}

    def timed(student, label, kd, cache):
        _, preset, depths = student
        _, secs, s_macs[student[0]] = train("resnet", preset, data, teacher,
                                            dataclasses.replace(base, kd=kd), args.seeds[0],
                                            cache, depths)
        every.setdefault((student[0], label), []).append(secs)
        print(student[0], label, f"{secs:.1f}s", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)  # one cache for every student: the same teacher and batches
        for student in TIMED if not args.accuracy_only else ():
            timed(student, "kd_nocache", "fitnets", None)
            if student is TIMED[0]:
                timed(student, "kd_cache_write", "fitnets", cache)
        # the runs compared with the cache in place alternate with cross-entropy alone, and
        # each is compared with the cross-entropy run of its own round: a shared machine's
        # slow minutes then slow both sides of a ratio
        for _ in range(args.rounds if not args.accuracy_only else 0):
            for student in TIMED:
                timed(student, "ce", "none", None)
                for m in METHODS[1:]:
                    timed(student, f"read_{m}", m, cache)
    if not args.accuracy_only:
        lines += [
            "## Time per trial with and without distillation", "",
            f"Teacher {fmt_count(t_macs)} MACs; students "
            + ", ".join(f"{name} {fmt_count(s_macs[name])} MACs ({t_macs / s_macs[name]:.1f}x"
                        " smaller)" for name, *_ in TIMED) + ". "
            f"Cross-entropy alone and the runs that read the cache alternate for {args.rounds} "
            "rounds; each ratio is taken within a round, and the table gives the median (and "
            "the range) over rounds. Seconds: median (all rounds). Runs made once (no cache, "
            "writing the cache) are divided by the median cross-entropy time. Per trial: "
            "training plus the validation pass, as in a search. Every KD run adds Hinton KD "
            "on the logits to its feature loss.", "",
            "| student | training | seconds | ratio to cross-entropy alone |",
            "| --- | --- | --- | --- |"]

    def row(name, text, label):
        secs, ce = every[(name, label)], every[(name, "ce")]
        runs = "/".join(f"{x:.1f}" for x in secs)
        if label == "ce" or label.startswith("read_"):  # alternated with CE, round by round
            ratios = [a / b for a, b in zip(secs, ce, strict=True)]
            ratio = (f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
                     if label != "ce" else "1.00")
        else:
            ratio = f"{statistics.median(secs) / statistics.median(ce):.2f}"
        lines.append(f"| {name} | {text} | {statistics.median(secs):.1f} ({runs}) | {ratio} |")

    for name, *_ in TIMED if not args.accuracy_only else ():
        row(name, "cross-entropy alone", "ce")
        row(name, "fitnets, teacher run every step (no cache)", "kd_nocache")
        if (name, "kd_cache_write") in every:
            row(name, "fitnets, first trial (writes the cache)", "kd_cache_write")
        for m in METHODS[1:]:
            row(name, f"{m}, later trials (read the cache)", f"read_{m}")

    # 2. accuracy of each method, per pair
    pairs = () if args.timing_only else PAIRS
    if args.timing_only:
        lines.append("")
    else:
        lines += ["", "## Validation accuracy after the same brief training", "",
                  f"Teacher validation accuracy {100 * t_acc:.2f}%. Seeds {args.seeds}; mean "
                  "(and each seed).", "",
                  "| pair | student | " + " | ".join(METHODS) + " |",
                  "| --- | --- | " + " | ".join("---" for _ in METHODS) + " |"]
    for pair, space_name, preset in pairs:
        cells = []
        with tempfile.TemporaryDirectory() as tmp:
            for m in METHODS:
                accs = []
                for seed in args.seeds:  # a cache per seed: its key holds the data order
                    acc, _, p_macs = train(space_name, preset, data, teacher,
                                           dataclasses.replace(base, kd=m), seed, Path(tmp))
                    accs.append(acc)
                cells.append(f"{100 * statistics.mean(accs):.1f} ("
                             + "/".join(f"{100 * a:.1f}" for a in accs) + ")")
                print(pair, m, cells[-1], flush=True)
        lines.append(f"| {pair} | {preset} ({fmt_count(p_macs)} MACs) | " + " | ".join(cells)
                     + " |")

    head = ["# Distillation methods and the teacher cache on CIFAR-10", "",
            f"`python -m benchmarks.distill_methods --teacher {args.teacher} --data {args.data} "
            f"--epochs {args.epochs:g} --train-fraction {args.train_fraction:g} --seeds "
            f"{' '.join(map(str, args.seeds))} --rounds {args.rounds}"
            + (" --timing-only" if args.timing_only else "")
            + (" --accuracy-only" if args.accuracy_only else "") + "`", "",
            f"Brief recipe: {args.epochs:g} epoch(s) on {100 * args.train_fraction:.0f}% of the "
            "training split, SGD with warm-up and cosine decay, batch 128, channels_last, "
            f"{torch.get_num_threads()} CPU threads. Validation: {len(data.val_y)} images held "
            "out of the training set.", ""] + [f"{line}" for line in args.note] + \
        ([""] if args.note else [])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(head + lines + [""]))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
