"""The benchmark's fixed, seeded workload: CIFAR-10 images carved from the shared archive, a
teacher, a student of each family near a MACs target, and the measurements made on them
(this machine's GEMM rate, training throughput per family, trial time per --kd method)."""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
import statistics
import tarfile
import time
from pathlib import Path

import numpy as np
import optuna
import torch

from kdnas.core.errors import KdnasError
from kdnas.core.settings import TrainConfig
from kdnas.cost import count_macs
from kdnas.distill import TeacherCache, fit
from kdnas.distill.timing import time_step
from search_spaces import get_space, spec_id

# the CIFAR-10 JPEG archive: --archive, or $KDNAS_CIFAR10_JPG (an installed module names no
# path of a checkout)
ARCHIVE = Path(os.environ["KDNAS_CIFAR10_JPG"]) if os.environ.get("KDNAS_CIFAR10_JPG") \
    else None
# (name in the report, space, fixed params): the built-in families and block types
FAMILIES = (("resnet", "resnet", {"block": "basic"}),
            ("resnet_bottleneck", "resnet", {"block": "bottleneck"}),
            ("mobilenet", "mobilenet", {}), ("shufflenet", "shufflenet", {}))


def make_subset(archive: Path | None, out: Path, per_class: int | None,
                test_per_class: int | None, seed: int = 0) -> Path:
    """An ImageFolder tree (train/, test/) of CIFAR-10 JPEGs from ``archive``: every image, or
    ``per_class`` training and ``test_per_class`` test images a class chosen with a fixed seed.
    Written once; ``out/DONE`` marks a finished tree."""
    if (out / "DONE").exists():
        return out
    if archive is None:
        raise KdnasError("no CIFAR-10 archive given: pass --archive PATH or set "
                         "KDNAS_CIFAR10_JPG (the JPEG archive, train/<class>/*.jpg and "
                         "test/<class>/*.jpg)")
    if not Path(archive).exists():
        raise KdnasError(f"no CIFAR-10 archive at {archive}: pass --archive PATH (the JPEG "
                         "archive, train/<class>/*.jpg and test/<class>/*.jpg)")
    with tarfile.open(archive) as tar:
        names = [m.name for m in tar if m.isfile() and m.name.endswith(".jpg")]
    groups: dict[tuple[str, str], list[str]] = {}
    for name in names:
        split, cls = Path(name).parts[-3:-1]
        groups.setdefault((split, cls), []).append(name)
    rng = random.Random(seed)
    want = {"train": per_class, "test": test_per_class}
    chosen = {n for (split, _), ms in sorted(groups.items()) if split in want
              for n in (sorted(ms) if want[split] is None
                        else rng.sample(sorted(ms), want[split]))}
    with tarfile.open(archive) as tar:
        for m in tar:
            if m.name in chosen:
                split, cls, fname = Path(m.name).parts[-3:]
                dest = out / split / cls / fname
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(tar.extractfile(m).read())
    (out / "DONE").write_text("ok")
    return out


def draw_in_band(space_name: str, data, lo: float, hi: float, count: int,
                 rng: np.random.RandomState, fixed: dict | None = None, tries: int = 500
                 ) -> list[dict]:
    """``count`` distinct candidates of a space with MACs in [lo, hi], drawn at random from
    ``rng``; a draw over the band has random numeric choices stepped down until it is not (as
    kdnas' sampler repairs a draw). Each: id, space, params, spec, macs."""
    from kdnas.search.sampler import random_params, step_down

    space, out, seen = get_space(space_name), [], set()
    dists = space.distributions()
    built: dict = {}

    def build(params):
        key = tuple(sorted(params.items()))
        if key not in built:
            spec = space.sample(optuna.trial.FixedTrial(params), in_channels=data.in_channels,
                                num_classes=data.num_classes, input_size=data.input_size)
            built[key] = spec, count_macs(space.build(spec), data.input_shape)
        return built[key]

    for _ in range(tries):
        if len(out) == count:
            break
        params = {**random_params(dists, rng), **(fixed or {})}
        params, _ = step_down(params, dists, lambda p: build(p)[1] <= hi, rng,
                              frozen=set(fixed or {}))
        spec, macs = build(params)
        if lo <= macs <= hi and spec_id(spec) not in seen:
            seen.add(spec_id(spec))
            out.append({"id": spec_id(spec), "space": space_name, "params": params,
                        "spec": spec, "macs": macs})
    if len(out) < count:
        raise KdnasError(f"only {len(out)} of {count} {space_name} candidates with "
                         f"{lo / 1e6:.1f}-{hi / 1e6:.1f}M MACs")
    return out


def gemm_flops(seconds: float = 2.0, n: int = 1024) -> float:
    """This machine's fp32 matrix-multiply rate (FLOP/s, best of repeats) with torch's
    current threads: the ceiling that training efficiency is measured against."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best, end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def training_flops(cand: dict, data, steps: int, batch: int) -> dict:
    """Student training FLOP/s of a candidate, cross-entropy alone: 3 x forward MACs x 2
    FLOPs per image over the seconds of student forward/backward (warm-up steps not timed)."""
    space = get_space(cand["space"])
    torch.manual_seed(0)
    model = space.build(cand["spec"])
    cfg = TrainConfig(steps=3, batch_size=batch, kd="none")
    estimate = time_step(model, data.input_shape, cfg)  # what the search sees before training
    fit(model, data, cfg)  # warm-up: kernels chosen, memory allocated
    r = fit(model, data, dataclasses.replace(cfg, steps=steps))
    images = steps * batch
    return {"macs": cand["macs"], "images_per_second": images / r.phases["student"],
            "flops": 6 * cand["macs"] * images / r.phases["student"],
            "data_seconds": r.phases.get("data", 0.0), "student_seconds": r.phases["student"],
            "step_ms": 1e3 * r.phases["student"] / steps, "estimated_step_ms": estimate}


def method_times(student: dict, data, teacher, methods: tuple[str, ...], cfg: TrainConfig,
                 work: Path, rounds: int) -> dict:
    """Trial time (training and validation) of ``student`` per --kd method, the teacher read
    from a cache as in every trial after a study's first, against cross-entropy alone; the
    runs alternate for ``rounds`` (cross-entropy first, then last, so that a drift of the
    machine does not favour either) and each ratio is taken within a round (median).
    Also: the trial that writes the cache, and one that runs the teacher at every step; a
    logit method's first trial writing a cache with and without the stage features."""
    space = get_space(student["space"])

    def trial(kd: str, cache: TeacherCache | None, use_teacher: bool = True) -> float:
        torch.manual_seed(0)
        model = space.build(student["spec"])
        t0 = time.perf_counter()
        fit(model, data, dataclasses.replace(cfg, kd=kd),
            teacher=teacher if use_teacher else None, student_taps=space.taps(student["spec"]),
            cache=cache)
        return time.perf_counter() - t0

    shutil.rmtree(work / "bench_cache", ignore_errors=True)  # a kept one would be read,
    cache = TeacherCache(work / "bench_cache", "k")  # not written: the first trial is timed
    trial("none", None, use_teacher=False)  # warm-up
    ce0 = trial("none", None, use_teacher=False)
    out = {"writes_cache": trial("fitnets", cache) / ce0,
           "no_cache": trial("fitnets", None) / ce0}
    if not cache.complete:
        raise KdnasError("the benchmark's teacher cache was not written")
    # a logit method's study caches logits alone: its first trial, and the disk each takes
    logit_first: dict[str, float] = {}
    for name, features in (("features", True), ("logits_only", False)):
        one = TeacherCache(work / "bench_cache", name, features=features)
        logit_first[f"writes_{name}"] = trial("logit", one) / ce0
        logit_first[f"{name}_mb"] = sum(f.stat().st_size for f in one.dir.glob("*.pt")) / 1e6
    ratios: dict[str, list[float]] = {m: [] for m in methods}
    seconds: dict[str, list[float]] = {"none": [], **{m: [] for m in methods}}
    for r in range(rounds):  # cross-entropy first in even rounds, last in odd ones
        ce = trial("none", None, use_teacher=False) if r % 2 == 0 else None
        times = {m: trial(m, cache) for m in methods}
        ce = ce if ce is not None else trial("none", None, use_teacher=False)
        seconds["none"].append(ce)
        for m, s in times.items():
            seconds[m].append(s)
            ratios[m].append(s / ce)
    return {"ratio": {m: statistics.median(v) for m, v in ratios.items()},
            "ratio_range": {m: [min(v), max(v)] for m, v in ratios.items()},
            "seconds": {m: statistics.median(v) for m, v in seconds.items()},
            **{f"fitnets_{k}": v for k, v in out.items()}, "logit_first_trial": logit_first}


def make_teacher(root: Path, arch: str, out: Path):
    """A seeded, untrained teacher of the resnet space saved as a kdnas checkpoint: timing
    does not depend on its weights (``--teacher`` takes a trained one instead)."""
    from kdnas.data import load_data
    from kdnas.teacher import save_checkpoint
    from search_spaces.resnet import ResNetSpace

    data = load_data(f"imagefolder:{root}")
    spec = ResNetSpace().preset(arch, in_channels=3, num_classes=data.num_classes,
                                input_size=data.input_size)
    torch.manual_seed(0)
    model = ResNetSpace().build(spec)
    save_checkpoint(out, model, spec=spec, classes=data.classes, input_shape=data.input_shape,
                    mean=data.mean, std=data.std, data=f"imagefolder:{root}",
                    extra={"arch": arch, "macs": count_macs(model, data.input_shape)})
    return out
