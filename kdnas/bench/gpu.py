"""``kdnas bench --device cuda`` (and the GPU check): kdnas against a plain PyTorch loop on the
GPU, like for like.

A fixed list of candidates (``per_family`` of each of resnet, mobilenet and shufflenet, drawn
with a fixed seed in a MAC band: 5-50M), each trained 400 steps of 128 images with dkd-ls
and one teacher (the search's default, FitNets, has a hint loss the peer lacks; so dkd-ls
on both sides, said on the page):

* the peer (:mod:`.gpu_peer`): a plain PyTorch loop training them one after another in one
  process (fp32, channels_last, data on the GPU, cudnn.benchmark);
* kdnas, as ``kdnas search --device cuda`` trains them: the candidates enqueued in a study of
  their own and trained by ``--workers N`` processes sharing the GPU, for each N of
  ``workers`` (``auto``: what the search does by default).

Reported under ``gpu`` in ``benchmarks.json`` and on BENCHMARKS.md with the GPU's name:
student images/s and trials/hour of each, ``throughput_vs_plain_loop`` (kdnas at its best
worker count / the peer), the GPU's utilisation sampled while training, where a trial's time
went, a teacher training step of kdnas (``kdnas teacher train``'s loop) against the peer's,
and ``minutes_for_100_trials``. It runs on a CPU too (tested so), its figures marked so.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kdnas.core.errors import KdnasError
from kdnas.targets import figure, verdict

GOAL_TRIALS = 100
TARGETS = {"throughput_vs_plain_loop": (">=", 4.0), "minutes_for_100_trials": ("<=", 5.0),
           "teacher_step_vs_plain_loop": ("<=", 1.2)}
FAMILY_ORDER = ("resnet", "mobilenet", "shufflenet")


@dataclass(frozen=True)
class GpuWorkload:
    per_class: int | None = None  # training images a class: None = all 5,000 (50,000)
    test_per_class: int | None = None
    band: tuple[float, float] = (5e6, 50e6)  # the candidates' MACs
    per_family: int = 4
    steps: int = 400  # the search's default brief recipe
    kd: str = "dkd-ls"  # not the search's default (fitnets): the peer has no hint loss
    teacher_arch: str = "resnet56"
    workers: tuple = ("auto", 1)  # the first is the headline, run right after the peer
    parts: tuple = ("teacher", "graphs", "precision")  # () for a worker sweep
    teacher_train_arch: str = "resnet20"
    teacher_train_steps: int = 100
    probe_batch: int = 128  # the teacher-step and precision parts' batch
    seed: int = 0

    @classmethod
    def quick(cls) -> GpuWorkload:  # the test's: every code path, on a CPU, in seconds
        return cls(per_class=12, test_per_class=4, band=(0.2e6, 3e6), per_family=1, steps=3,
                   teacher_arch="resnet8", workers=(1,), teacher_train_arch="resnet8",
                   teacher_train_steps=2, probe_batch=16)


def candidates(load: GpuWorkload, data) -> list[dict]:
    """The fixed list: ``per_family`` of each family in ``band``, drawn with ``seed``; their
    parameters as the ``all`` space names them (``family``, ``resnet.depth1``...)."""
    from kdnas.bench.workload import draw_in_band

    rng = np.random.RandomState(load.seed)
    out = []
    for fam in FAMILY_ORDER:
        for c in draw_in_band(fam, data, *load.band, load.per_family, rng):
            params = {"family": fam, **{f"{fam}.{k}": v for k, v in c["params"].items()}}
            out.append({**c, "family": fam, "params": params})
    return out


class UtilisationSampler:
    """The GPU's utilisation (%) every ``every`` seconds from ``nvidia-smi`` in a thread;
    nothing (and no error) where there is no ``nvidia-smi`` or no CUDA device."""

    def __init__(self, dev: torch.device, every: float = 0.5):
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._cmd = None
        if dev.type == "cuda" and shutil.which("nvidia-smi"):
            self._cmd = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,"
                         "nounits", "-i", str(dev.index or 0)]
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)

    def _run(self, every: float) -> None:
        while self._cmd and not self._stop.wait(every):
            try:
                out = subprocess.run(self._cmd, capture_output=True, text=True, timeout=5)
                self.samples.append(float(out.stdout.split()[0]))
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                return

    def __enter__(self) -> UtilisationSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def summary(self) -> dict | None:
        if not self.samples:
            return None
        return {"mean_percent": statistics.fmean(self.samples),
                "median_percent": statistics.median(self.samples),
                "samples": len(self.samples)}


def _search(argv: list[str], sink) -> int:
    """Run ``kdnas search`` in a process group of its own; if this process is interrupted
    (the GPU check's time limit sends SIGINT), the search and its helper workers are stopped
    too (SIGINT, then SIGKILL after 20 s) instead of going on training on the GPU."""
    proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        return proc.wait()
    except BaseException:
        for sig, wait in ((signal.SIGINT, 20), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=wait)
                break
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue
        raise


def _kdnas(cfg, cands: list[dict], workers, dev, log) -> dict:
    """The candidates trained by ``kdnas search`` with ``--workers workers`` on a fresh study:
    wall seconds, images, trials, where a trial's time went, the GPU's utilisation."""
    from kdnas.core.attrs import StudyAttr
    from kdnas.device import resolve_workers
    from kdnas.report.frames import time_per_trial
    from kdnas.search.storage import load_record, open_study

    n = resolve_workers(str(workers), cfg.device)
    cfg = dataclasses.replace(cfg, study=f"bench-gpu-w{n}")
    shutil.rmtree(cfg.study_dir, ignore_errors=True)
    study = open_study(cfg, create=True)
    study.set_user_attr(StudyAttr.CONFIG, cfg.to_dict())
    for c in cands:
        study.enqueue_trial(c["params"])
    log(f"kdnas search, {n} worker(s) on {dev}: {len(cands)} candidates")
    out = Path(cfg.workdir) / f"{cfg.study}.log"
    t0 = time.perf_counter()
    with UtilisationSampler(dev) as util, open(out, "w") as sink:
        code = _search([sys.executable, "-m", "kdnas", "search", "--study", cfg.study,
                        "--teacher", cfg.teacher, "--data", cfg.data, "--trials",
                        str(cfg.trials), "--no-noise-check", "--device", cfg.device,
                        "--workdir", str(cfg.workdir), "--reports", str(cfg.reports),
                        "--workers", str(n)], sink)
    wall = time.perf_counter() - t0
    if code != 0:
        raise KdnasError(f"kdnas search ({n} workers) ended with status {code}: see {out}")
    record = load_record(open_study(cfg, create=False))
    trained = [t for t in record.trials if t.trained]
    per = time_per_trial(record) or {"median_seconds": float("nan"), "shares": {}}
    images = sum(t.recipe.get("images", 0) for t in trained)
    if not trained or not images:
        raise KdnasError(f"kdnas search ({n} workers) trained none of the candidates: see {out}")
    return {"workers": n, "wall_seconds": wall, "trained": len(trained),
            "images": images, "images_per_second": images / wall,
            "trials_per_hour": 3600 * len(trained) / wall,
            "trial_seconds_median": per["median_seconds"], "shares": per["shares"],
            "val_accuracy": [t.val_accuracy for t in trained], "utilisation": util.summary()}


def _teacher_step(load: GpuWorkload, data, dev) -> dict:
    """A teacher training step: kdnas' loop (``fit`` with no teacher, as ``kdnas teacher
    train`` runs it) against the peer's, the same network, batch and augmentation."""
    from kdnas.bench.gpu_peer import train_steps
    from kdnas.core.settings import TrainConfig
    from kdnas.distill import fit
    from search_spaces.resnet import PRESETS, ResNetSpace

    def net():
        spec = ResNetSpace().preset(load.teacher_train_arch, in_channels=data.in_channels,
                                    num_classes=data.num_classes, input_size=data.input_size)
        torch.manual_seed(0)
        return ResNetSpace().build(spec)

    assert load.teacher_train_arch in PRESETS
    steps, batch = load.teacher_train_steps, load.probe_batch
    plain = train_steps(net(), data, dev, steps=steps, batch=batch)
    res = fit(net(), data, TrainConfig(steps=steps + 5, kd="none", batch_size=batch,
                                       device=str(dev)))
    ours = (res.phases.get("student", 0) + res.phases.get("data", 0)) / res.steps
    return {"arch": load.teacher_train_arch, "kdnas_seconds": ours, "plain_seconds": plain,
            "ratio": ours / plain}


PRECISION_RUNS = {"fp32": ("fp32", True), "bf16": ("bf16", True),
                  "fp32_nchw": ("fp32", False), "bf16_nchw": ("bf16", False)}


def _precision(cands: list[dict], data, dev, load: GpuWorkload) -> dict:
    """For the first candidate of each family: a training step's seconds in float32 and
    under bf16 autocast, each in channels_last and in the contiguous (NCHW) layout, in the
    plain loop (speed only: equal accuracy needs whole trials). Speed-ups are against
    float32 channels_last, what kdnas trains in unless a family is listed otherwise
    (``kdnas.device.BF16_FAMILIES``, ``NCHW_FAMILIES``)."""
    from kdnas.bench.gpu_peer import train_steps
    from search_spaces import get_space

    out = {}
    for fam in FAMILY_ORDER:
        c = next(c for c in cands if c["family"] == fam)
        sec = {}
        for name, (p, cl) in PRECISION_RUNS.items():
            torch.manual_seed(0)
            sec[name] = train_steps(get_space(fam).build(c["spec"]), data, dev,
                                    steps=load.teacher_train_steps, batch=load.probe_batch,
                                    precision=p, channels_last=cl)
        out[fam] = {"id": c["id"], **sec,
                    **{f"{k}_speedup": sec["fp32"] / sec[k] for k in PRECISION_RUNS
                       if k != "fp32"}}
    return out


def _graphs(cands: list[dict], data, teacher, recipe, dev, steps: int, work: Path) -> dict:
    """For the first candidate of each family: kdnas' training step (``fit`` with the
    search's recipe, the teacher's logits from its cache, as a search's later trials read
    them) eager (``KDNAS_CUDA_GRAPHS=0``) and replayed from a CUDA graph: seconds a step
    (data, teacher and student phases), and the steps replayed."""
    from kdnas.distill import TeacherCache, fit
    from search_spaces import get_space

    recipe = dataclasses.replace(recipe, steps=steps, eval_every=None)
    cache = TeacherCache(work / "graphs-cache", "t", features=False)
    before = os.environ.get("KDNAS_CUDA_GRAPHS")
    out = {}
    try:
        for fam in FAMILY_ORDER:
            c = next(c for c in cands if c["family"] == fam)
            row = {"id": c["id"]}
            for mode, env in (("eager", "0"), ("graph", "1"), ("eager", "0"), ("graph", "1")):
                os.environ["KDNAS_CUDA_GRAPHS"] = env  # twice each: the first writes the cache
                torch.manual_seed(0)
                r = fit(get_space(fam).build(c["spec"]), data, recipe, teacher=teacher,
                        cache=cache)
                row[mode] = sum(r.phases.get(k, 0.0) for k in ("data", "teacher", "student")
                                ) / r.steps
                row[f"{mode}_replayed"] = r.graphed_steps
            out[fam] = {**row, "graph_speedup": row["eager"] / row["graph"]}
    finally:
        if before is None:
            os.environ.pop("KDNAS_CUDA_GRAPHS", None)
        else:
            os.environ["KDNAS_CUDA_GRAPHS"] = before
    return out


def run_gpu(work: Path, device: str, load: GpuWorkload, archive: Path,
            teacher_path: Path | None = None, log=print, save=None) -> dict:
    """The candidates trained by the peer and by kdnas on ``device``; the figures as a dict,
    also given to ``save`` after each part (the peer, the teacher step, each kdnas run), so
    that a run stopped by a time limit leaves the figures it measured."""
    from kdnas.bench.gpu_peer import run_peer
    from kdnas.bench.workload import make_subset, make_teacher
    from kdnas.core.settings import SearchConfig
    from kdnas.device import describe, resolve
    from kdnas.teacher.prepare import prepare

    dev = resolve(device)
    name = f"cifar10-{load.per_class or 'all'}-{load.test_per_class or 'all'}"
    root = make_subset(archive, work / name, load.per_class, load.test_per_class)
    teacher_path = teacher_path or make_teacher(root, load.teacher_arch,
                                                work / f"teacher-{load.teacher_arch}.pt")
    cfg = SearchConfig(study="bench-gpu", teacher=str(teacher_path), data=f"imagefolder:{root}",
                       budget=f"{load.band[1] / 1e6:g}MMACs", trials=load.per_family * 3,
                       steps=load.steps, kd=load.kd, noise_check=False, space="all",
                       device=str(dev), workdir=str(work / "runs"),
                       reports=str(work / "reports"))
    cfg, teacher, data, _ = prepare(cfg)
    cands = candidates(load, data)
    recipe = cfg.train_config(len(data.train_y))
    log(f"GPU benchmark on {describe(dev)}: {len(cands)} candidates, {recipe.steps} steps of "
        f"{recipe.batch_size}, {recipe.kd}; the plain loop first")
    with UtilisationSampler(dev) as util:
        peer = run_peer([c["spec"] for c in cands], data, teacher.module, recipe, dev)
    peer.update(images_per_second=peer["images"] / peer["wall_seconds"],
                trials_per_hour=3600 * len(cands) / peer["wall_seconds"],
                utilisation=util.summary())
    res = {"device": describe(dev), "gpu": dev.type == "cuda", "complete": False,
           "candidates": [{"id": c["id"], "family": c["family"], "macs": c["macs"]}
                          for c in cands],
           "steps": recipe.steps, "batch": recipe.batch_size, "kd": recipe.kd,
           "train_images": len(data.train_y), "peer": peer, "kdnas": []}
    # the headline first (kdnas as a search runs it by default: the first worker setting),
    # then what sets the defaults, then the other worker settings: a run cut short by its
    # time budget keeps the parts it finished
    for part in (*load.workers[:1], *load.parts, *load.workers[1:]):
        if save is not None:
            save(res)
        if part == "teacher":
            res["teacher_step"] = _teacher_step(load, data, dev)
            continue
        if part == "precision":
            res["precision"] = _precision(cands, data, dev, load)
            continue
        if part == "graphs":
            res["graphs"] = _graphs(cands, data, teacher, recipe, dev,
                                    max(1, load.teacher_train_steps // 2), work)
            continue
        res["kdnas"].append(_kdnas(cfg, cands, part, dev, log))
        best = max(res["kdnas"], key=lambda r: r["images_per_second"])
        res.update(best_workers=best["workers"], throughput_vs_plain_loop=best[
            "images_per_second"] / peer["images_per_second"], **{
            f"minutes_for_{GOAL_TRIALS}_trials": GOAL_TRIALS * 60 / best["trials_per_hour"]})
    res["complete"] = True
    return res


def _fig(key: str, value: float, fmt: str = ".2f") -> str:
    return figure(value, *TARGETS[key], fmt)


def _meets(key: str, value: float) -> str:
    op, goal = TARGETS[key]
    v = verdict(op, goal, value)
    return f"{op} {goal:g}: {v if v == 'met' else f'**{v}**'}"


def _util(u: dict | None) -> str:
    return (f"{u['mean_percent']:.0f}% mean ({u['samples']} samples)" if u
            else "not sampled (no nvidia-smi)")


def sweep_lines(sweep: dict | None) -> list[str]:
    """The worker sweep (``kdnas bench --device cuda --gpu-workers N,M``), a run of its own."""
    if not sweep or not sweep.get("kdnas"):
        return []
    peer = sweep["peer"]["images_per_second"]
    return ["### Trial processes sharing the GPU", "",
            f"A run of its own on {sweep['device']} (`--gpu-workers`): the same "
            f"{len(sweep['candidates'])} candidates, the plain loop at {peer:.0f} student "
            "images/s in that run; `--workers auto` runs kdnas.device.WORKERS_PER_GPU a GPU.",
            "", "| workers | student images/s | vs the plain loop | utilisation |",
            "| --- | --- | --- | --- |",
            *(f"| {r['workers']} | {r['images_per_second']:.0f} | "
              f"{r['images_per_second'] / peer:.2f}x | {_util(r.get('utilisation'))} |"
              for r in sorted(sweep["kdnas"], key=lambda r: r["workers"])), ""]


def gpu_lines(gpu: dict | None) -> list[str]:
    """The GPU section of BENCHMARKS.md."""
    lines = ["## On a GPU", ""]
    if not gpu or "peer" not in gpu:
        return lines + ["Not measured: no GPU was visible to the runs behind this page. On a "
                        "machine with one, `tools/gpu_check.sh ARCHIVE` (or `kdnas bench "
                        "--device cuda`) trains 12 candidates of the three families (5-50M "
                        "MACs, 400 steps of 128, dkd-ls) with a plain PyTorch loop and with "
                        "kdnas and writes the figures here. Targets: kdnas at least 4x the "
                        "plain loop's throughput, 100 default trials in at most 5 minutes, "
                        "a teacher training step within 1.2x the plain loop's.", ""]
    where = gpu["device"] if gpu.get("gpu") else \
        f"{gpu['device']} (**not a GPU**: a check that the code runs; no GPU figure)"
    peer, t = gpu["peer"], gpu.get("teacher_step")
    macs = [c["macs"] for c in gpu["candidates"]]
    out = lines + [
        f"Device {where}. {len(macs)} candidates ({', '.join(FAMILY_ORDER)}; "
        f"{min(macs) / 1e6:.1f}-{max(macs) / 1e6:.1f}M MACs), each {gpu['steps']} steps of "
        f"{gpu['batch']} images of {gpu['train_images']}, {gpu['kd']}, the same teacher. The "
        "plain loop: one process, one student after another, fp32, channels_last, data on the "
        "device, cudnn.benchmark, the teacher run at every step.", "",
        "| trainer | workers | student images/s | trials/hour | wall s | utilisation |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| plain loop | 1 | {peer['images_per_second']:.0f} | {peer['trials_per_hour']:.0f} "
        f"| {peer['wall_seconds']:.1f} | {_util(peer.get('utilisation'))} |"]
    if not gpu.get("complete", True):
        out.insert(len(lines) + 1, "**Incomplete**: the run stopped before every part was "
                   "measured; what it measured is below.")
    if not gpu["kdnas"]:
        return out + ["", "kdnas: not measured (the run stopped first).", ""]
    for r in gpu["kdnas"]:
        out.append(f"| kdnas | {r['workers']} | {r['images_per_second']:.0f} | "
                   f"{r['trials_per_hour']:.0f} | {r['wall_seconds']:.1f} | "
                   f"{_util(r.get('utilisation'))} |")
    ratio, minutes = gpu["throughput_vs_plain_loop"], gpu[f"minutes_for_{GOAL_TRIALS}_trials"]
    best = next(r for r in gpu["kdnas"] if r["workers"] == gpu["best_workers"])
    shares = ", ".join(f"{k} {100 * v:.0f}%" for k, v in sorted(
        best["shares"].items(), key=lambda kv: -kv[1]) if v >= 0.005)
    return out + [
        "", "| figure | value | target |", "| --- | --- | --- |",
        f"| throughput_vs_plain_loop (kdnas at {gpu['best_workers']} worker(s)) | "
        f"{_fig('throughput_vs_plain_loop', ratio)}x "
        f"| {_meets('throughput_vs_plain_loop', ratio)} |",
        f"| minutes_for_{GOAL_TRIALS}_trials | {_fig('minutes_for_100_trials', minutes, '.1f')} | "
        f"{_meets('minutes_for_100_trials', minutes)} |",
        f"| teacher training step ({t['arch']}), kdnas / plain loop | "
        f"{1e3 * t['kdnas_seconds']:.1f} / {1e3 * t['plain_seconds']:.1f} ms = "
        f"{_fig('teacher_step_vs_plain_loop', t['ratio'])}x | "
        f"{_meets('teacher_step_vs_plain_loop', t['ratio'])} |"
        if t else "| teacher training step | not measured | |",
        "", f"Where a kdnas trial's time went (at {gpu['best_workers']} worker(s)): {shares}.",
        "", *_precision_lines(gpu.get("precision")), *_graph_lines(gpu.get("graphs"))]


def _graph_lines(graphs: dict | None) -> list[str]:
    if not graphs:
        return []
    return ["CUDA graphs by family (kdnas' training step of the family's first candidate, the "
            "teacher's logits from the cache; `KDNAS_CUDA_GRAPHS=0` turns them off):", "",
            "| family | eager ms | graph ms | speed-up | steps replayed |",
            "| --- | --- | --- | --- | --- |",
            *(f"| {f} | {1e3 * g['eager']:.2f} | {1e3 * g['graph']:.2f} | "
              f"{g['graph_speedup']:.2f}x | {g['graph_replayed']} |"
              for f, g in graphs.items()), "",
            graphs_default_line(graphs), ""]


def graphs_default_line(graphs: dict) -> str:
    """Which default these figures support: CUDA graphs stay opt-in (``KDNAS_CUDA_GRAPHS=1``)
    unless every family replayed its steps and ran faster than eager (the equality of the
    two is the CUDA tests' part of the check)."""
    faster = all(g["graph_replayed"] > 0 and g["graph_speedup"] > 1.0 for g in graphs.values())
    if faster:
        return ("These figures support CUDA graphs on by default (every family replayed and "
                "ran faster than eager), if the check's CUDA tests passed.")
    return ("These figures support CUDA graphs staying opt-in (KDNAS_CUDA_GRAPHS=1): not every "
            "family replayed its steps faster than eager.")


def _precision_lines(prec: dict | None) -> list[str]:
    if not prec:
        return []
    def ms(p, k):
        return "-" if k not in p else (f"{1e3 * p[k]:.2f}" + (
            f" ({p[k + '_speedup']:.2f}x)" if k + "_speedup" in p else ""))
    return ["Precision and layout by family (a training step of the family's first "
            "candidate in the plain loop, ms, and its speed-up over float32 channels_last; "
            "kdnas trains a family in bf16 or in NCHW only where that is faster at equal "
            "accuracy: `kdnas.device.BF16_FAMILIES`, `NCHW_FAMILIES`):", "",
            "| family | fp32 channels_last | bf16 channels_last | fp32 NCHW | bf16 NCHW |",
            "| --- | --- | --- | --- | --- |",
            *(f"| {f} | {ms(p, 'fp32')} | {ms(p, 'bf16')} | {ms(p, 'fp32_nchw')} | "
              f"{ms(p, 'bf16_nchw')} |" for f, p in prec.items()), ""]
