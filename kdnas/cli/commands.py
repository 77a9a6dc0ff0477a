"""The commands behind ``kdnas …``: each reads its arguments, calls the library and says
what happened. Imports are inside the commands so that ``kdnas --help`` stays fast."""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from kdnas.core.errors import KdnasError
from kdnas.core.settings import DISTILL_EPOCHS
from kdnas.front import near_chance

log = logging.getLogger("kdnas")

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "studies" / "demo.toml"  # ../studies/


def cmd_search(args) -> int:
    from kdnas.cli.progress import SearchProgress, say
    from kdnas.cli.workers import Helpers
    from kdnas.core.budget import fmt_count
    from kdnas.core.config import study_config
    from kdnas.core.settings import flag_settings
    from kdnas.device import describe, plan_workers, resolve
    from kdnas.report import write_report
    from kdnas.search.events import StudyStart
    from kdnas.search.loop import run_search
    from kdnas.teacher.prepare import prepare
    from kdnas.search.storage import load_record, open_study, peek_stored_config

    overrides = {f.name: getattr(args, f.name) for f in flag_settings()}
    # resuming: the study's own settings where none is given
    cfg, differ = study_config(args.config, overrides, peek_stored_config)
    if differ and args.worker_index == 0:
        say(f"resuming study {cfg.study!r} with its own {', '.join(differ)} (not set on "
            "this command line or in its config)")
    if args.worker_index > 0:
        return _helper_worker(cfg, args.worker_index)
    budget = cfg.budget_value
    t0 = time.perf_counter()
    cfg, teacher, data, notes = prepare(cfg)
    workers, threads = plan_workers(args.workers, cfg.device, cfg.trials)
    for note in notes:
        say(note)
    say(f"data: {data.spec}: {len(data.train_y)} train / {len(data.val_y)} val images "
         f"(val carved with seed {cfg.split_seed}), input {tuple(data.input_shape)}, "
         f"{data.num_classes} classes")
    macs = teacher.meta.get("macs")
    say(f"teacher: {teacher.source} ({teacher.meta.get('format')}"
         + (f", {fmt_count(macs)} MACs)" if macs else ")"))
    if teacher.taps:
        say("teacher stages tapped for hints: " + ", ".join(
            f"{t.module} ({t.channels} ch, stride {t.stride})" for t in teacher.taps))
    _check_teacher(cfg, teacher, data)
    say(f"budget: {budget.describe()}; space: {cfg.space}; training each candidate "
         f"{cfg.recipe_text(len(data.train_y))} of the train split "
         f"with {cfg.kd} distillation on {describe(resolve(cfg.device))}")
    outcome, helpers = None, Helpers(say)
    progress = SearchProgress(cfg)

    def on_event(event) -> None:
        helpers.revive()
        if isinstance(event, StudyStart) and workers > 1:  # others may join now
            helpers.start(args.argv, workers, cfg.study_dir / "workers", cfg.device, threads)
            others = "worker 1 logs" if workers == 2 else f"workers 1-{workers - 1} log"
            say(f"{workers} workers on this study, {threads} thread(s) each ({others} to "
                f"{cfg.study_dir / 'workers'}/; this one reports its own trials and, at the "
                "end, all of them)")
        progress(event)

    try:
        outcome = run_search(cfg, teacher, data, on_event=on_event)
    except KeyboardInterrupt:
        pass
    if outcome is None or outcome.interrupted:
        say("\ninterrupted: writing the report of what finished; run the same command to "
            "resume (an interrupted candidate is trained again)")
    if any(code not in (0, 130) for code in helpers.wait()):
        log.warning("a worker ended with an error: see %s", cfg.study_dir / "workers")
    study = outcome.study if outcome else open_study(cfg, create=False)
    record = load_record(study)
    out = write_report(record, cfg)
    _print_summary(cfg, out, record, time.perf_counter() - t0)
    return 130 if (outcome is None or outcome.interrupted) else 0


def distilled_warning(info: dict, num_classes: int) -> str | None:
    """What to tell the user about a fully distilled student that learnt nothing."""
    acc = info["val_accuracy"]
    if not near_chance(acc, num_classes):
        return None
    return (f"the distilled student is near chance ({100 * acc:.1f}% with {num_classes} "
            f"classes, after {info['epochs']:g} epochs): its training did not converge; "
            f"train longer (--epochs; {DISTILL_EPOCHS:g} by default) or with a lower --lr, and do "
            "not ship it")


def _check_teacher(cfg, teacher, data) -> None:
    """The teacher's validation accuracy, said, and a warning when it is near chance."""
    from kdnas.cli.progress import say
    from kdnas.teacher.prepare import teacher_accuracy

    acc, cached = teacher_accuracy(teacher, data, "val", device=cfg.device)
    teacher.meta["val_accuracy_measured"] = acc
    say(f"teacher validation accuracy: {100 * acc:.2f}%"
        + (" (measured before on these images)" if cached else ""))
    if near_chance(acc, data.num_classes):
        log.warning("the teacher is near chance on this data (%.1f%% with %d classes): check "
                    "the data, its normalisation and the class order", 100 * acc,
                    data.num_classes)


def _helper_worker(cfg, index: int) -> int:
    """Worker ``index`` > 0 of ``--workers``: trials only (worker 0 reports)."""
    from kdnas.cli.progress import SearchProgress, say
    from kdnas.search.loop import run_search
    from kdnas.teacher.prepare import prepare

    cfg, teacher, data, _ = prepare(cfg)
    import torch

    say(f"worker {index} (pid {os.getpid()}, {torch.get_num_threads()} threads) on study "
        f"{cfg.study}")
    try:
        out = run_search(cfg, teacher, data, on_event=SearchProgress(cfg), worker=index)
    except KeyboardInterrupt:
        return 130
    say(f"worker {index} done: the study holds {out.trained} trained candidates")
    return 130 if out.interrupted else 0


def _print_summary(cfg, out: Path, record, seconds: float) -> None:
    """The closing lines: the study's summary, from its records."""
    from kdnas.cli.progress import say
    from kdnas.report import export_command
    from kdnas.report.frames import at_once_text, noise_text, summary

    s = summary(record, cfg)
    states = ", ".join(f"{v} {k}{'s' if k == 'reference' and v != 1 else ''}"
                       for k, v in sorted(s["trials_by_state"].items()))
    n = s["front_size"]
    say(f"\nstudy {cfg.study}: {states}; front of {n} student{'' if n == 1 else 's'}"
         + (f", best val acc {100 * s['best_val_accuracy']:.2f}%, knee trial {s['knee_trial']}"
            if s["front_size"] else "") + f" ({seconds / 60:.1f} min)")
    if (s.get("trained_at_once") or {}).get("max", 1) > 1:
        say(f"candidates trained {at_once_text(s['trained_at_once'])}")
    if s.get("noise"):
        say(noise_text(s["noise"]).capitalize())
    if s.get("caveat"):
        say(f"WARNING: {s['caveat']}")
    if s.get("against_references"):
        say(s["against_references"]["sentence"])
    say(f"report: {out}/report.html (and pareto.md, pareto.png, learning_curves.png, "
        "pareto.csv, trials.csv, report.json)")
    if s["front_size"]:
        say(f"export the knee: {export_command(cfg)}")


def _study_and_config(args):
    """The study named on the command line, as records, and its stored settings."""
    from kdnas.core.settings import SearchConfig
    from kdnas.search.storage import load_record, open_study, stored_config

    probe = SearchConfig(study=args.study, workdir=args.workdir, storage=args.storage)
    study = open_study(probe, create=False)
    cfg = stored_config(study)
    if cfg is None:
        raise KdnasError(f"study {args.study!r} has no kdnas settings stored: it was not "
                         "made by `kdnas search`")
    cfg = dataclasses.replace(cfg, workdir=args.workdir, storage=args.storage,
                              reports=getattr(args, "reports", None) or cfg.reports)
    return load_record(study), cfg


def _picked_trial(args, record, cfg) -> int:
    """--trial N, or the trial --pick names on the study's front."""
    from kdnas.report import pick_trial

    if args.trial is not None:
        return args.trial
    return pick_trial(record, args.pick, cfg.cost_columns)


def cmd_report(args) -> int:
    from kdnas.report import write_report

    record, cfg = _study_and_config(args)
    out = write_report(record, cfg)
    _print_summary(cfg, out, record, 0.0)
    return 0


def cmd_export(args) -> int:
    from kdnas.cli.progress import say
    from kdnas.core.budget import fmt_count
    from kdnas.data import load_data
    from kdnas.report import write_report
    from kdnas.search.storage import add_exported, load_record, open_study
    from kdnas.ship.export import export_trial

    record, cfg = _study_and_config(args)
    trial = _picked_trial(args, record, cfg)
    norm = record.normalization
    data = load_data(cfg.data, val_fraction=cfg.val_fraction, seed=cfg.split_seed)
    if norm:
        data = data.with_normalization(norm["mean"], norm["std"])
    out = Path(args.out) if args.out else Path("exports") / cfg.study / f"trial-{trial}"
    r = export_trial(record, cfg, trial, data, out, formats=args.format,
                     int8=_int8_options(args))
    say(f"exported trial {r.trial}: {fmt_count(r.macs)} MACs ({fmt_count(2 * r.macs)} FLOPs), "
         f"{fmt_count(r.params)} params (re-counted, match the study)")
    say(f"validation accuracy re-measured {100 * r.val_accuracy:.2f}% "
         f"(study recorded {100 * r.recorded_accuracy:.2f}%)")
    for fmt, diff in r.max_abs_diff.items():
        say(f"{fmt} export matches the PyTorch model: max abs difference of logits on "
             f"validation images {diff:.2g}")
    for f in r.files:
        say(f"  {f}")
    _say_int8(r.int8)
    study = open_study(cfg, create=False)  # the report shows what was shipped
    add_exported(study, {"out_dir": str(out), "trial": r.trial, "macs": r.macs,
                         "params": r.params, "val_accuracy": r.val_accuracy,
                         "files": [Path(f).name for f in r.files], "int8": r.int8})
    page = write_report(load_record(study), cfg) / "report.html"
    say(f"report: {page} lists this export beside the front")
    return 0


def _int8_options(args):
    from kdnas.ship.export import Int8Options

    return Int8Options(args.calibration_images, args.calibration_method) if args.int8 else None


def _say_int8(d: dict | None) -> None:
    """The int8 file's figures beside the fp32 file's, and the warning where it loses."""
    from kdnas.cli.progress import say

    if not d:
        return
    f, q = d["fp32"], d["int8"]
    say(f"int8 ({q['file']}): test accuracy {100 * q['accuracy']:.2f}% against fp32's "
        f"{100 * f['accuracy']:.2f}% ({d['calibration']['split']}, {q['images']} images); "
        f"ONNX Runtime p50 {q['latency_p50_ms']:.3g} ms against {f['latency_p50_ms']:.3g} ms "
        f"({d['speedup_p50']:.2f}x; {d['latency_setting']})")
    pr = d.get("paired")
    if pr:
        say(f"  images right by one file alone: fp32 {pr['only_fp32']}, int8 {pr['only_int8']} "
            f"(exact McNemar p {pr['mcnemar_p']:.3g}: the difference is "
            f"{'beyond' if d.get('beyond_noise') else 'within'} these images' noise)")
    if d.get("float_ops"):
        say("  left in float (ONNX Runtime has no int8 kernel for them in this graph): "
            + ", ".join(f"{k} x{v}" for k, v in sorted(d["float_ops"].items())))
    if d.get("warning"):
        log.warning(d["warning"])


def cmd_distill(args) -> int:
    from kdnas.cli.progress import StepBar, say
    from kdnas.report import write_report
    from kdnas.teacher.prepare import prepare
    from kdnas.search.storage import add_distilled, load_record, open_study
    from kdnas.ship.final import (
        distill_reference,
        distill_trial,
        final_method,
        method_tag,
        seed_tag,
    )

    record, cfg = _study_and_config(args)
    if args.device:  # the study may have trained elsewhere
        cfg = dataclasses.replace(cfg, device=args.device)
    cfg, teacher, data, notes = prepare(cfg)
    for note in notes:
        say(note)
    _use_free_cores(cfg.device, say)
    tag = seed_tag(args.seed, cfg.seed)  # as the record and checkpoint are named
    opts = dict(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                schedule=args.schedule, seed=args.seed, formats=args.format,
                int8=_int8_options(args))
    if args.reference:
        who = f"reference {args.reference}"
        kd, _ = final_method(args.kd, cfg.kd, None)  # resolved once: folder, message, run
        out = Path(args.out) if args.out else Path("exports") / cfg.study / (
            f"ref-{args.reference.replace(':', '-')}{method_tag(kd)}{tag}-distilled")
        say(f"distilling {who} with {kd} for {args.epochs:g} epochs on the full train split "
            f"({len(data.train_y)} images), as a found student would be")
        info = distill_reference(cfg, args.reference, teacher, data, out_dir=out, kd=kd,
                                 progress=StepBar(f"distilling {who}"), **opts)
    else:
        trial = _picked_trial(args, record, cfg)
        who = f"trial {trial}"
        kd, _ = final_method(args.kd, cfg.kd, record.trained_trial(trial).kd)
        out = Path(args.out) if args.out else Path("exports") / cfg.study / (
            f"trial-{trial}{method_tag(kd)}{tag}-distilled")
        say(f"distilling {who} of study {cfg.study} with {kd} (the search ranked with "
            f"{cfg.kd}) for {args.epochs:g} epochs on the full "
            f"train split ({len(data.train_y)} images); checkpoint every epoch in "
            f"{cfg.study_dir / 'distill'}: run the same command to resume")
        info = distill_trial(record, cfg, trial, teacher, data, out_dir=out, kd=kd,
                             progress=StepBar(f"distilling {who}"), **opts)
    study = open_study(cfg, create=False)
    add_distilled(study, info)
    write_report(load_record(study), cfg)
    search = (f" (search: {100 * info['search_val_accuracy']:.2f}%)"
              if info.get("search_val_accuracy") is not None else "")
    say(f"{who}: validation accuracy {100 * info['val_accuracy']:.2f}%{search}, test "
        f"accuracy {100 * info['test_accuracy']:.2f}%")
    for f in info["files"]:
        say(f"  {f}")
    _say_int8(info.get("int8"))
    warning = distilled_warning(info, data.num_classes)
    if warning:
        log.warning(warning)
    return 0


def _use_free_cores(device: str, say) -> None:
    """One job alone on a CPU trains with the free cores as threads (a core that other work
    keeps busy is left to it: two jobs fighting for one core's threads slow far more than
    their share says), or ``OMP_NUM_THREADS`` where the user set it."""
    import torch

    from kdnas.device import cpu_threads, resolve, usable_cores

    if resolve(device).type != "cpu":
        return
    threads = cpu_threads()
    torch.set_num_threads(threads)
    say(f"training on {threads} CPU thread(s) ({usable_cores()} usable core(s))")


def cmd_teacher_train(args) -> int:
    from kdnas.cli.progress import StepBar, say
    from kdnas.teacher.train import resume_path, train_teacher

    out = Path(args.out or f"teachers/{args.arch}-{args.data.split(':')[0]}.pt")
    if resume_path(out, args.arch).exists():
        say(f"resuming the training saved in {resume_path(out, args.arch)}")
    _use_free_cores(args.device, say)
    try:
        path, acc = train_teacher(args.data, args.arch, epochs=args.epochs, out=out,
                                  lr=args.lr, batch_size=args.batch_size,
                                  val_fraction=args.val_fraction, seed=args.seed,
                                  device=args.device, keep_early=args.keep_early,
                                  progress=StepBar(f"training {args.arch}"))
    except KeyboardInterrupt:
        saved = resume_path(out, args.arch).exists()
        say("\ninterrupted: " + ("the last finished epoch is saved; run the same command to "
                                 "resume" if saved else "no epoch had finished; run the same "
                                 "command to start again"))
        return 130
    say(f"teacher {args.arch}: validation accuracy {100 * acc:.2f}%; written to {path}")
    say(f"next: kdnas search --teacher {path} --budget 50MFLOPs")
    return 0


def cmd_demo(args) -> int:
    from kdnas.cli.progress import StepBar, say
    from kdnas.data import cache_dir
    from kdnas.teacher.train import train_teacher

    teacher = cache_dir() / "demo" / "teacher-digits-resnet20.pt"
    if not teacher.exists():
        say(f"training a small teacher (resnet20) on the bundled digits data, cached at "
             f"{teacher}")
        _, acc = train_teacher("digits", "resnet20", epochs=30, out=teacher, val_fraction=0.2,
                               progress=StepBar("training teacher"))
        say(f"teacher validation accuracy {100 * acc:.2f}%")
    else:
        say(f"using the cached demo teacher {teacher}")
    argv = ["search", "--config", str(args.config), "--teacher", str(teacher),
            "--study", args.study, "--workdir", args.workdir, "--reports", args.reports]
    if args.trials:
        argv += ["--trials", str(args.trials)]
    if args.steps:
        argv += ["--steps", str(args.steps)]
    say("running: kdnas " + " ".join(argv))
    code = args.run(argv)
    if code != 0:
        return code
    code = args.run(["export", "--study", args.study, "--pick", "knee", "--workdir", args.workdir,
                 "--out", str(Path("exports") / args.study / "knee")])
    if code == 0:
        say(f"\ndemo done: study in {args.workdir}/{args.study}/, report in "
             f"{args.reports}/{args.study}/report.html, exported knee student in "
             f"exports/{args.study}/knee/ (student.onnx, student.pt2, MODEL_CARD.md)")
    return code


def cmd_bench(args) -> int:
    """``kdnas bench ...`` is ``python -m kdnas.bench ...`` (the benchmark's own parser)."""
    return subprocess.call([sys.executable, "-m", "kdnas.bench", *args.args])
