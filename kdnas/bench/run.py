"""``kdnas bench``: how fast kdnas trains candidates on this machine, in one run.

A fixed, seeded CIFAR-10 workload (images from the JPEG archive) measures, in this order:

1. a fresh kdnas search (logit KD, 1 epoch a trial, the teacher cache written by its first
   trial, latency measured, report written): ``framework_overhead``, the share of its wall
   time outside the student's and teacher's steps and the final validation (the framework
   proper), with where all of it went, and the memory it took; then the same search without
   the teacher cache (the same students: its first trials are drawn at random with the
   same seed); then a search of the default recipe (400 steps of 128, the default method),
   whose framework proper is ``framework_proper``;
2. a plain Optuna + torchvision loop (:mod:`.plain_loop`) training exactly those students,
   in the same order, on the same images for the same steps, with each of its own settings
   (DataLoader workers 0 or 2, NCHW or channels_last): ``throughput_vs_plain_loop`` (with
   the cache) and ``throughput_vs_plain_loop_no_cache``, student MAC-images trained per
   wall second, kdnas / the best of the plain loop's settings;
3. this machine's fp32 GEMM rate and, for a student of each family near ``student_macs``,
   its training FLOP/s: ``efficiency.<family>``;
4. a trial's time with each --kd method (teacher read from the cache) over cross-entropy
   alone, teacher at least 3x the student's MACs: ``teacher_overhead.<method>``.

Figures go to ``<out>/benchmarks.json`` and ``<out>/BENCHMARKS.md``, each beside its target.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import resource
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kdnas.bench.plain_loop import run_plain_loop
from kdnas.bench.workload import (
    ARCHIVE,
    FAMILIES,
    draw_in_band,
    gemm_flops,
    make_subset,
    make_teacher,
    method_times,
    training_flops,
)
from kdnas.core.kd_methods import SEARCH_DEFAULT
from kdnas.core.settings import AUTO_METHODS, SearchConfig, TrainConfig
from kdnas.distill.trainer import PHASES
from search_spaces import describe

# the like-for-like targets, restated against the zero-overhead ceiling (about 1.46x: kdnas
# with nothing but its student steps); the framework proper's on the default 400-step trials
TARGETS = {"efficiency.resnet": (">=", 0.6), "efficiency.*": (">=", 0.5),
           "teacher_overhead.*": ("<=", 1.15), "framework_proper": ("<=", 0.03),
           "throughput_vs_plain_loop": (">=", 1.3),
           "throughput_vs_plain_loop_no_cache": (">=", 1.05),
           "cpu.trials_per_hour_vs_one_at_a_time": (">=", 1.3),
           "cpu.contended_slowdown": ("<=", 2.5), "cpu.estimate_error_median": ("<=", 0.25)}
PLAIN_SETTINGS = ((0, False), (2, False), (0, True), (2, True))  # loader workers, channels_last
METHODS = AUTO_METHODS  # every method the search can use


@dataclass(frozen=True)
class Workload:
    per_class: int = 500  # training images a class (5,000 in all)
    test_per_class: int = 100
    teacher_arch: str = "resnet56"  # 125M MACs: over 3x the students
    budget_macs: float = 50e6
    student_macs: float = 40e6  # the efficiency and teacher-overhead students
    trials: int = 4
    epochs: int = 1
    steps: int = 20  # timed training steps per family
    rounds: int = 2  # of the teacher-overhead runs
    proper_trials: int = 2  # framework_proper: a search of the default recipe's trials
    proper_steps: int | None = None  # None: the default (400 steps of 128)

    @classmethod
    def quick(cls) -> Workload:  # the test's: seconds, every code path
        return cls(per_class=16, test_per_class=4, teacher_arch="resnet8", budget_macs=25e6,
                   student_macs=4e6, trials=2, steps=2, rounds=1, proper_trials=1,
                   proper_steps=4)


def kdnas_search(cfg: SearchConfig) -> tuple[dict, object, object]:
    """A fresh search as ``kdnas search`` runs it, timed from loading to the written report."""
    from kdnas.report import write_report
    from kdnas.search.loop import run_search
    from kdnas.teacher.prepare import prepare
    from kdnas.search.storage import load_record

    shutil.rmtree(cfg.study_dir, ignore_errors=True)
    t0 = time.perf_counter()
    cfg, teacher, data, _ = prepare(cfg)
    out = run_search(cfg, teacher, data)
    record = load_record(out.study)
    write_report(record, cfg)
    wall = time.perf_counter() - t0
    trained = sorted((t for t in record.trials if t.trained), key=lambda t: t.number)
    params = {t.number: t.params for t in out.study.trials}
    phases = {k: sum(t.time.get(k, 0.0) for t in trained) for k in PHASES}
    in_trials = sum(t.time.get("total", 0.0) for t in trained)
    shares = {k: v / wall for k, v in phases.items()}
    for key in ("propose", "estimate", "signals", "storage"):
        shares[key] = sum(t.time.get(key, 0.0) for t in trained) / wall
    shares["outside trials"] = (wall - in_trials) / wall
    cache = cfg.study_dir / "teacher_cache"
    res = {"wall_seconds": wall, "trained": len(trained), "proposals": len(record.trials),
           "mac_images": float(sum(t.cost["macs"] * t.recipe["images"] for t in trained)),
           "framework_overhead": 1 - sum(phases.get(k, 0.0) for k in (
               "student", "teacher", "eval")) / wall, "shares": shares,
           "trials": [{"trial": t.number, "params": params[t.number], "arch": describe(t.spec),
                       "macs": t.cost["macs"], "images": t.recipe["images"],
                       "steps": t.recipe["steps"]} for t in trained],
           "teacher_cache": cfg.teacher_cache,
           "arch": [t.spec.get("block", t.spec.get("family")) for t in trained],
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "teacher_cache_mb": sum(f.stat().st_size for f in cache.rglob("*")
                                   if f.is_file()) / 1e6 if cache.exists() else 0.0,
           "dataset_mb": sum(getattr(data, f"{s}_x").numel() for s in ("train", "val", "test")
                             if getattr(data, f"{s}_x", None) is not None) / 1e6}
    return res, teacher, data


def plain_loops(root: Path, teacher, cfg: SearchConfig, search: dict, data) -> dict:
    """The plain loop with each of its settings on kdnas' students, images and steps; the
    best (least wall time) is the peer."""
    from kdnas.data import split_indices

    steps = sorted({t["steps"] for t in search["trials"]})
    if len(steps) != 1:
        raise RuntimeError(f"the search's trials trained different steps: {steps}")
    n = len(data.train_y) + len(data.val_y)
    train, val = split_indices(n, cfg.val_fraction, cfg.split_seed)
    runs = [run_plain_loop(root, teacher, space=cfg.space, trials=search["trials"],
                           steps=steps[0], train_indices=train,
                           val_indices=val, mean=data.mean, std=data.std, workers=w,
                           channels_last=cl) for w, cl in PLAIN_SETTINGS]
    best = min(runs, key=lambda r: r["wall_seconds"])
    return {**best, "settings": [{k: r[k] for k in ("workers", "channels_last",
                                                     "wall_seconds", "mac_images")}
                                 for r in runs]}


def bench_config(work: Path, load: Workload, archive: Path | None,
                 teacher_path: Path | None) -> SearchConfig:
    """The workload's images and teacher (made once in ``work``) and its search config."""
    work.mkdir(parents=True, exist_ok=True)
    root = make_subset(archive, work / f"cifar10-{load.per_class}-{load.test_per_class}",
                       load.per_class, load.test_per_class)
    teacher_path = teacher_path or make_teacher(root, load.teacher_arch,
                                                work / f"teacher-{load.teacher_arch}.pt")
    return SearchConfig(study="bench", teacher=str(teacher_path), data=f"imagefolder:{root}",
                        budget=f"{load.budget_macs / 1e6:g}MMACs", trials=load.trials,
                        epochs=load.epochs, kd="logit", noise_check=False, val_fraction=0.1,
                        space="resnet",  # the bench's workload: its figures stay comparable
                        references=("none",),  # like for like: the plain loop trains the
                        # trials' students alone, and a reference's training is no trial's
                        workdir=str(work / "runs"), reports=str(work / "reports"))


def run(work: Path, out: Path, load: Workload, archive: Path | None = ARCHIVE,
        teacher_path: Path | None = None, log=print) -> dict:
    """The whole benchmark; returns (and writes) the figures."""
    t_start = time.perf_counter()
    cfg = bench_config(work, load, archive, teacher_path)
    log(f"1/5 kdnas search: {load.trials} trials of {load.epochs} epoch(s), with the teacher "
        f"cache and without; {load.proper_trials} of the default recipe")
    search, teacher, data = kdnas_search(cfg)
    no_cache, _, _ = kdnas_search(dataclasses.replace(cfg, study="bench-no-cache",
                                                      teacher_cache=False))
    proper, _, _ = kdnas_search(dataclasses.replace(
        cfg, study="bench-default-recipe", epochs=None, steps=load.proper_steps,
        kd=SEARCH_DEFAULT, trials=load.proper_trials))
    search["default_recipe"] = proper
    log(f"2/5 the plain loop, the same {len(search['trials'])} students, "
        f"{len(PLAIN_SETTINGS)} settings")
    plain = plain_loops(Path(cfg.data.split(":", 1)[1]), teacher.module, cfg, search, data)
    log("3/5 GEMM rate and training efficiency per family")
    gemm = gemm_flops()
    lo, hi = 0.8 * load.student_macs, load.student_macs  # the teacher stays >= 3x
    students = {name: draw_in_band(space, data, lo, hi, 1, np.random.RandomState(0),
                                   fixed=fixed)[0] for name, space, fixed in FAMILIES}
    eff = {name: training_flops(c, data, load.steps, 128) for name, c in students.items()}
    log(f"4/5 teacher overhead per method ({load.rounds} rounds)")
    tcfg = TrainConfig(epochs=load.epochs, seed=0)
    over = method_times(students["resnet"], data, teacher, METHODS, tcfg, work, load.rounds)
    res = figures(search, no_cache, plain, gemm, eff, over, students, teacher, load)
    log("5/5 candidates at once on this CPU: as planned by default, against one at a time, "
        "alone and beside a busy process")
    res["cpu"] = cpu_part(cfg, data, load)
    res["seconds"] = time.perf_counter() - t_start
    write(out, res)
    return res


def cpu_part(cfg: SearchConfig, data, load: Workload) -> dict:
    """:mod:`kdnas.bench.cpu` on the bench's images and teacher, a study of its own."""
    from kdnas.bench.cpu import CpuLoad, run_cpu

    shutil.rmtree(dataclasses.replace(cfg, study="bench-cpu").study_dir, ignore_errors=True)
    return run_cpu(dataclasses.replace(cfg, study="bench-cpu", kd=SEARCH_DEFAULT), data,
                   CpuLoad.quick() if load.per_class < 100 else CpuLoad())


def figures(search, no_cache, plain, gemm, eff, over, students, teacher, load) -> dict:
    kdnas_rate = search["mac_images"] / search["wall_seconds"]
    plain_rate = plain["mac_images"] / plain["wall_seconds"]
    same = {"students": [t["arch"] for t in search["trials"]]
            == [t["arch"] for t in no_cache["trials"]] == [t["arch"] for t in plain["trials"]],
            "images": [t["images"] for t in search["trials"]]
            == [t["images"] for t in no_cache["trials"]] == [t["images"] for t in plain["trials"]]}
    return {
        "efficiency": {k: v["flops"] / gemm for k, v in eff.items()},
        "teacher_overhead": over["ratio"],
        "framework_overhead": search["framework_overhead"],
        "framework_proper": search["default_recipe"]["framework_overhead"],
        "throughput_vs_plain_loop": kdnas_rate / plain_rate,
        "throughput_vs_plain_loop_no_cache": no_cache["mac_images"] / no_cache["wall_seconds"]
        / plain_rate,
        "like_for_like": same,
        "memory": {"peak_rss_mb": search["peak_rss_mb"],
                   "teacher_cache_mb": search["teacher_cache_mb"],
                   "dataset_mb": search["dataset_mb"]},
        "details": {
            "gemm_flops": gemm, "training": eff, "students": {
                k: {"arch": describe(c["spec"]), "spec": c["spec"], "macs": c["macs"]}
                for k, c in students.items()},
            "teacher": {"macs": teacher.meta.get("macs"), "arch": load.teacher_arch},
            "teacher_overhead": over, "search": search, "search_no_cache": no_cache,
            "plain_loop": plain,
            "kdnas_mac_images_per_second": kdnas_rate,
            "plain_mac_images_per_second": plain_rate},
        "workload": dataclasses.asdict(load),
        "machine": {"cpu": cpu_name(),
                    "threads": torch.get_num_threads(), "torch": torch.__version__,
                    "python": platform.python_version(), "device": "cpu"},
        "command": "kdnas bench " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["bench"]
                                             else sys.argv[1:]),
    }


def write(out: Path, res: dict) -> None:
    """benchmarks.json and BENCHMARKS.md; the GPU figures of an earlier ``--device cuda`` run
    are kept beside new CPU figures, and the other way round."""
    from kdnas.bench.markdown import benchmarks_markdown
    from kdnas.core.files import write_text

    out.mkdir(parents=True, exist_ok=True)
    old = out / "benchmarks.json"
    if old.exists():
        before = json.loads(old.read_text())
        res = {**before, **res} if "efficiency" not in res else {
            **res, "gpu": res.get("gpu", before.get("gpu"))}
    write_text(out / "benchmarks.json", json.dumps(res, indent=1, default=str))
    write_text(out / "BENCHMARKS.md", benchmarks_markdown(res, TARGETS))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="kdnas bench", description="Measure kdnas' trial speed on a fixed, seeded "
        "CIFAR-10 workload (about 10 minutes on 2 cores): training efficiency per family "
        "against this machine's GEMM rate, the teacher's overhead per --kd method, a "
        "search's time outside student forward/backward, throughput against a plain Optuna "
        "+ torchvision loop, and memory. Writes BENCHMARKS.md and benchmarks.json.")
    add_arguments(ap)
    args = ap.parse_args(argv)
    from kdnas.core.errors import KdnasError

    try:
        run_from_args(args)
    except KdnasError as e:  # what was wrong and what to do, without a traceback
        raise SystemExit(f"kdnas bench: error: {e}") from None
    except KeyboardInterrupt:  # the GPU workload has written the parts it finished
        raise SystemExit("kdnas bench: interrupted (the GPU workload keeps the parts it "
                         "finished in benchmarks.json; the CPU workload writes at its end)"
                         ) from None


def add_arguments(ap) -> None:
    ap.add_argument("--archive", type=Path, default=ARCHIVE, help="the CIFAR-10 JPEG archive "
                    "(train/<class>/*.jpg, test/<class>/*.jpg; default: $KDNAS_CIFAR10_JPG, "
                    "now %(default)s)")
    ap.add_argument("--work", type=Path, default=Path(".bench") / "kdnas-bench",
                    help="where the images, teacher and study are kept (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=Path("reports"),
                    help="where benchmarks.json and BENCHMARKS.md go (default: reports)")
    ap.add_argument("--teacher", type=Path, help="a trained teacher (default: an untrained, "
                    "seeded resnet56: timing does not depend on weights)")
    ap.add_argument("--trials", type=int, help="trials of each search (default 4; the GPU "
                    "workload: candidates in all, a third of them of each family, default 12)")
    ap.add_argument("--quick", action="store_true", help="a tiny workload (seconds): checks "
                    "that the benchmark runs, its figures mean nothing")
    ap.add_argument("--device", default="cpu", help="cpu (default): the CPU figures above; "
                    "cuda or cuda:N: instead, the GPU workload on that GPU (12 candidates of "
                    "5-50M MACs, 400 steps each, trained by a plain PyTorch loop and by kdnas "
                    "with 1 and auto workers), added beside the CPU figures")
    ap.add_argument("--gpu-workers", type=_worker_counts, metavar="N,M",
                    help="the GPU workload as a worker sweep: the plain loop, then kdnas with "
                    "each of these --workers counts and nothing else; written beside the "
                    "full run's figures (key gpu_workers), to set --workers auto by")
    ap.add_argument("--only-cpu", action="store_true", help="only the CPU workers part (step "
                    "5: candidates at once as planned by default against one at a time, "
                    "alone and beside a busy process, and the trial-time estimates), kept "
                    "beside the figures of an earlier full run")
    ap.add_argument("--workload", choices=("cpu", "gpu"), help="which workload (default: the "
                    "device's); gpu on a CPU checks that the GPU benchmark runs (its figures "
                    "are not a GPU's)")


def run_cpu_only(work: Path, out: Path, load: Workload, archive: Path | None,
                 teacher_path: Path | None) -> dict:
    from kdnas.data import load_data

    cfg = bench_config(work, load, archive, teacher_path)
    data = load_data(cfg.data, val_fraction=cfg.val_fraction, seed=cfg.split_seed)
    res = {"cpu": {**cpu_part(cfg, data, load), "machine": {"cpu": cpu_name()}}}
    write(out, res)
    return res


def cpu_name() -> str:
    """The CPU as the machine names it (``model name`` in /proc/cpuinfo)."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _worker_counts(text: str) -> list[int]:
    try:
        counts = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give worker counts such as 2,8")
    return counts


def run_from_args(args) -> dict:
    from kdnas.device import resolve

    if (args.workload or ("gpu" if resolve(args.device).type == "cuda" else "cpu")) == "gpu":
        from kdnas.bench.gpu import GpuWorkload, run_gpu

        gload = GpuWorkload.quick() if args.quick else GpuWorkload()
        if args.trials:  # candidates of each family
            gload = dataclasses.replace(gload, per_family=max(1, args.trials // 3))
        key = "gpu"
        if args.gpu_workers:  # a sweep: the plain loop and kdnas at each count, nothing else
            gload = dataclasses.replace(gload, workers=tuple(args.gpu_workers), parts=())
            key = "gpu_workers"
        t0 = time.perf_counter()
        res = {key: run_gpu(args.work, args.device, gload, args.archive, args.teacher,
                            save=lambda part: write(args.out, {key: part}))}
        write(args.out, res)
        print(f"wrote the GPU figures to {args.out / 'BENCHMARKS.md'} and benchmarks.json in "
              f"{time.perf_counter() - t0:.0f} s")
        return res
    load = Workload.quick() if args.quick else Workload()
    if args.trials:
        load = dataclasses.replace(load, trials=args.trials)
    if args.only_cpu:  # step 5 alone, beside the figures of an earlier full run
        res = run_cpu_only(args.work, args.out, load, args.archive, args.teacher)
        print(f"wrote the cpu figures to {args.out / 'BENCHMARKS.md'} and benchmarks.json")
        return res
    res = run(args.work, args.out, load, args.archive, args.teacher)
    print(f"wrote {args.out / 'BENCHMARKS.md'} and benchmarks.json in {res['seconds']:.0f} s")
    return res
