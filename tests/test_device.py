"""--device: the CPU path everywhere, and the CUDA path where a GPU is (skipped otherwise)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from kdnas.core.errors import KdnasError
from kdnas.core.settings import SearchConfig, TrainConfig
from kdnas.device import autocast, resolve, sync_every
from kdnas.distill import evaluate, fit
from kdnas.distill import trainer as trainer_mod
from search_spaces import get_space

HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU here: the GPU path is "
                                "tested on a machine with one")


def _student(data, seed: int = 0):
    space = get_space("resnet")
    spec = space.preset("resnet8", in_channels=data.in_channels,
                        num_classes=data.num_classes, input_size=data.input_size)
    torch.manual_seed(seed)
    return space.build(spec), space.taps(spec)


def test_auto_resolves_to_what_this_machine_has():
    assert resolve("auto") == resolve(None) == torch.device("cuda:0" if HAS_CUDA else "cpu")
    assert resolve(" CPU ") == torch.device("cpu")


@pytest.mark.parametrize("text,needle", [
    ("tpu", "use auto, cpu, cuda or cuda:N"),
    ("meta", "not supported"),
    ("cuda:64", "CUDA device"),
])
def test_unknown_or_missing_devices_are_user_errors(text, needle):
    with pytest.raises(KdnasError, match=needle):
        resolve(text)


@pytest.mark.skipif(HAS_CUDA, reason="a GPU is visible")
def test_bench_on_a_gpu_without_one_says_what_to_do(capsys):
    from kdnas.bench.run import main

    with pytest.raises(SystemExit) as e:
        main(["--device", "cuda", "--quick"])
    assert "kdnas bench: error: --device cuda: no CUDA device is visible" in str(e.value)
    assert "use --device cpu" in str(e.value)


@pytest.mark.skipif(HAS_CUDA, reason="a GPU is visible")
def test_cuda_without_a_gpu_says_what_to_do():
    with pytest.raises(KdnasError, match="no CUDA device is visible.*--device cpu"):
        resolve("cuda")


def test_settings_check_device_names_without_torch():
    assert TrainConfig(device="cuda:1").device == "cuda:1"
    assert SearchConfig(device="cpu", latency_device="cuda").train_config(100).device == "cpu"
    with pytest.raises(KdnasError, match="--device 'gpu'"):
        SearchConfig(device="gpu")
    with pytest.raises(KdnasError, match="--latency-device 'auto'"):
        SearchConfig(latency_device="auto")  # latency is measured where the user says


def test_the_cpu_path_reads_the_loss_every_step_and_runs_float32():
    cpu = torch.device("cpu")
    assert sync_every(cpu) == 1
    with autocast(cpu):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_precision_is_float32_unless_a_family_was_measured_faster_in_bf16(monkeypatch):
    from kdnas import device

    assert device.BF16_FAMILIES == frozenset()  # none measured faster so far
    assert {device.precision_for(f) for f in ("resnet", "mobilenet", "shufflenet")} == {"fp32"}
    with autocast(torch.device("cpu"), "bf16"):  # a CPU trains float32 whatever the family
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    monkeypatch.setattr(device, "BF16_FAMILIES", frozenset({"mobilenet"}))
    assert device.precision_for("mobilenet") == "bf16" and device.precision_for("resnet") == \
        "fp32"
    with pytest.raises(KdnasError, match="precision"):
        TrainConfig(precision="fp16")


def test_layout_is_channels_last_unless_a_family_was_measured_faster_in_nchw_on_a_gpu(
        monkeypatch):
    from kdnas import device

    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert device.NCHW_FAMILIES == frozenset()  # none measured faster so far
    assert all(device.channels_last_for(f, d) for f in ("resnet", "mobilenet", "shufflenet")
               for d in (cpu, gpu))
    monkeypatch.setattr(device, "NCHW_FAMILIES", frozenset({"mobilenet"}))
    assert not device.channels_last_for("mobilenet", gpu)
    assert device.channels_last_for("mobilenet", cpu)  # a CPU trains channels_last
    assert device.channels_last_for("resnet", gpu)


def _conv_inputs(model) -> list:
    """Whether the second convolution's training inputs were contiguous (NCHW), step by
    step (the stem's one-channel digits are both layouts at once)."""
    seen = []
    conv = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][1]
    conv.register_forward_pre_hook(lambda mod, args: seen.append(
        args[0].is_contiguous()) if mod.training else None)
    return seen


@pytest.mark.parametrize("channels_last", [True, False])
def test_a_recipe_in_nchw_feeds_and_keeps_the_student_contiguous(teacher_and_data,
                                                                channels_last):
    teacher, data = teacher_and_data
    model, taps = _student(data)
    seen = _conv_inputs(model)
    r = fit(model, data, TrainConfig(epochs=8, kd="dkd-ls", channels_last=channels_last),
            teacher=teacher, student_taps=taps)
    assert seen and all(c == (not channels_last) for c in seen)  # the layout as the recipe
    conv = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][1]
    assert conv.weight.is_contiguous() == (not channels_last)
    assert r.val_accuracy > 0.5


def test_loss_log_reads_back_in_blocks_and_names_the_step_that_diverged():
    log = trainer_mod._LossLog(every=3, total=10, cfg=TrainConfig())
    assert not log.add(torch.tensor(1.0), 2, 0)
    assert not log.add(torch.tensor(2.0), 2, 1)
    assert log.add(torch.tensor(3.0), 4, 2)  # the third step reads all three back
    assert log.last == 3.0 and log.mean() == pytest.approx((2 + 4 + 12) / 8)
    log.add(torch.tensor(5.0), 1, 3)
    assert log.epoch_mean() == pytest.approx((2 + 4 + 12 + 5) / 9)  # pending read too
    assert log.mean() == 0.0  # a new epoch
    log.add(torch.tensor(1.0), 1, 4)
    log.add(torch.tensor(math.nan), 1, 5)
    with pytest.raises(KdnasError, match="at step 6 of 10"):
        log.flush()


def test_reading_the_loss_every_50_steps_trains_the_same_student(digits, monkeypatch):
    """The GPU's way of reading the loss back (in blocks) changes nothing but when the host
    waits: same weights, same curve, progress at block ends and at the last step."""
    cfg = TrainConfig(epochs=2, kd="none", seed=1, device="cpu", eval_every=7)
    a, _ = _student(digits)
    ra = fit(a, digits, cfg)
    monkeypatch.setattr(trainer_mod, "sync_every", lambda dev: 5)
    b, _ = _student(digits)
    seen = []
    rb = fit(b, digits, cfg, progress=lambda s, n, loss: seen.append(s))
    assert rb.val_accuracy == ra.val_accuracy
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                 b.state_dict().values(), strict=True))
    assert [c["train_loss"] for c in rb.curve] == pytest.approx(
        [c["train_loss"] for c in ra.curve], rel=1e-9)
    assert len(ra.points) > 2
    assert [p.get("train_loss", 0) for p in rb.points] == pytest.approx(
        [p.get("train_loss", 0) for p in ra.points], rel=1e-9)
    assert seen[-1] == rb.steps and len(seen) < rb.steps / 3  # fewer reads, the last one too


def test_data_on_the_cpu_is_the_bundle_itself(digits):
    assert digits.on(torch.device("cpu")) is digits
    assert digits.device == torch.device("cpu")


def test_one_gpu_per_worker_when_several_are_visible(monkeypatch):
    from kdnas.cli import workers

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3,5,7")
    assert [workers.gpu_for(k, "auto") for k in range(6)] == ["2", "3", "5", "7", "2", "3"]
    assert workers.gpu_for(1, "cuda:1") is None  # the user named one: all use it
    assert workers.gpu_for(1, "cpu") is None
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert workers.gpu_for(1, "auto") is None


def test_workers_auto_is_one_a_free_core_on_a_cpu_and_several_sharing_each_gpu(monkeypatch):
    from kdnas import device as workers

    monkeypatch.setattr(workers, "free_cores", lambda: 2)
    assert workers.resolve_workers("auto", "cpu") == 2  # a one-thread candidate a free core
    assert workers.resolve_workers("auto", "cpu", trials=1) == 1  # never more than trials
    assert workers.resolve_workers("auto", "cpu", free=1) == 1  # a busy core is left alone
    monkeypatch.setattr(workers, "_available_memory", lambda: workers.CPU_WORKER_MEMORY)
    assert workers.resolve_workers("auto", "cpu", free=8) == 1  # what the memory takes
    assert workers.resolve_workers("3", "cpu") == 3 and workers.resolve_workers(2, "auto") == 2
    for bad in ("0", "many"):
        with pytest.raises(KdnasError, match="--workers"):
            workers.resolve_workers(bad, "cpu")
    monkeypatch.setattr(workers, "resolve", lambda text: torch.device("cuda", 0))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(workers, "usable_cores", lambda: 16)
    per = workers.WORKERS_PER_GPU
    assert workers.resolve_workers("auto", "cuda") == 2 * per  # both GPUs, shared
    assert workers.resolve_workers("auto", "cuda:1") == per  # the one named
    monkeypatch.setattr(workers, "usable_cores", lambda: 3)
    assert workers.resolve_workers("auto", "auto") == 3  # at most one a core


def test_usable_cores_follow_affinity_and_cpu_quota(monkeypatch):
    import os

    from kdnas import device

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(device, "_cgroup_quota", lambda: None)
    assert device.usable_cores() == 4
    monkeypatch.setattr(device, "_cgroup_quota", lambda: 1.5)  # docker --cpus 1.5
    assert device.usable_cores() == 1
    monkeypatch.setattr(device, "_cgroup_quota", lambda: 0.5)
    assert device.usable_cores() == 1  # never none


def test_busy_cores_see_a_process_that_spins_beside_this_one():
    import subprocess
    import sys

    from kdnas import device

    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        busy = device.busy_cores(0.5)
    finally:
        spin.kill()
        spin.wait()
    assert 0.7 <= busy <= device.usable_cores() + 1e-9
    assert device.free_cores() >= 1


def test_one_job_on_a_cpu_takes_the_threads_the_user_set(monkeypatch):
    from kdnas import device

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert device.cpu_threads() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(device, "free_cores", lambda: 1)
    assert device.cpu_threads() == 1


def test_a_search_on_a_cpu_takes_no_more_cores_than_omp_num_threads_gives(monkeypatch):
    """--workers auto on a CPU: one one-thread worker per free core, but never more cores
    in all than OMP_NUM_THREADS, where set (a search started by a scheduler or a CI runner
    that gave it one core started a second worker beside it)."""
    from kdnas import device

    before = torch.get_num_threads()
    monkeypatch.setattr(device, "free_cores", lambda: 4)
    monkeypatch.setattr(device, "usable_cores", lambda: 4)
    monkeypatch.setattr(device, "_available_memory", lambda: 64 << 30)
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert device.plan_workers("auto", "cpu", trials=10) == (4, 1)
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert device.plan_workers("auto", "cpu", trials=10) == (1, 1)
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert device.plan_workers("auto", "cpu", trials=10) == (2, 1)
        assert device.plan_workers("1", "cpu", trials=10) == (1, 2)
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------- on a GPU, where there is one

@needs_cuda
def test_cuda_batches_are_the_cpu_batches(digits):
    gpu = digits.on(torch.device("cuda"))
    assert gpu.train_x.is_cuda and gpu.digest() == digits.digest()
    assert digits.on(torch.device("cuda")) is gpu  # copied once
    for (xc, yc, ic), (xg, yg, ig) in zip(
            digits.batches("train", 64, shuffle=True, augment=True, seed=3),
            gpu.batches("train", 64, shuffle=True, augment=True, seed=3), strict=True):
        assert torch.equal(ic, ig) and torch.equal(yc, yg.cpu())
        torch.testing.assert_close(xc, xg.cpu())


@needs_cuda
def test_cuda_training_distils_with_the_cache_and_returns_a_cpu_student(teacher_and_data,
                                                                         tmp_path):
    from kdnas.distill import TeacherCache

    teacher, data = teacher_and_data
    cfg = TrainConfig(epochs=6, kd="fitnets", device="cuda")
    cache = TeacherCache(tmp_path, "k")
    model, taps = _student(data)
    r1 = fit(model, data, cfg, teacher=teacher, student_taps=taps, cache=cache)
    assert r1.val_accuracy > 0.8 and cache.complete
    assert next(model.parameters()).device.type == "cpu"
    assert next(teacher.module.parameters()).device.type == "cpu"
    assert evaluate(model, data) == pytest.approx(r1.val_accuracy, abs=0.02)  # fp32, CPU
    again, taps = _student(data)
    r2 = fit(again, data, cfg, teacher=teacher, student_taps=taps, cache=cache)
    assert cache.hits == r2.steps and r2.val_accuracy > 0.8
    from kdnas.distill.cache import _RESIDENT  # the complete cache was moved to the GPU

    assert [k[1] for k in _RESIDENT] == ["cuda:0"]


@needs_cuda
def test_a_family_in_nchw_trains_contiguous_on_cuda_to_the_channels_last_accuracy(
        teacher_and_data, monkeypatch):
    """A family in NCHW_FAMILIES (set here) trains contiguous on CUDA through
    train_candidate, as a search trains it, to channels_last's accuracy."""
    from kdnas import device
    from kdnas.distill.candidate import TrainContext, train_candidate

    teacher, data = teacher_and_data
    spec = get_space("resnet").preset("resnet8", in_channels=data.in_channels,
                                      num_classes=data.num_classes,
                                      input_size=data.input_size)
    recipe = TrainConfig(epochs=6, kd="dkd-ls", device="cuda")
    base = train_candidate(TrainContext(teacher, data), spec, recipe, init=0)
    monkeypatch.setattr(device, "NCHW_FAMILIES", frozenset({"resnet"}))
    nchw = train_candidate(TrainContext(teacher, data), spec, recipe, init=0)
    conv = next(m for m in nchw.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous()
    assert base.result.val_accuracy > 0.8
    assert nchw.result.val_accuracy == pytest.approx(base.result.val_accuracy, abs=0.05)


@needs_cuda
def test_a_family_in_bf16_trains_under_autocast_to_the_float32_accuracy(teacher_and_data):
    teacher, data = teacher_and_data
    runs = {}
    for precision in ("fp32", "bf16"):
        model, taps = _student(data)
        runs[precision] = fit(model, data, TrainConfig(epochs=6, kd="dkd-ls", device="cuda",
                                                       precision=precision),
                              teacher=teacher, student_taps=taps)
    assert runs["fp32"].val_accuracy > 0.8
    assert runs["bf16"].val_accuracy == pytest.approx(runs["fp32"].val_accuracy, abs=0.05)


@needs_cuda
@pytest.mark.parametrize("kd,cached", [("dkd-ls", True), ("dist", False), ("none", False)])
def test_a_cuda_graph_trains_what_the_eager_step_trains(teacher_and_data, tmp_path,
                                                        monkeypatch, kd, cached):
    """The step replayed from a CUDA graph (the search's default with its cache; the full
    distillation's method with the teacher run; teacher training's cross-entropy) against
    KDNAS_CUDA_GRAPHS=0: the same weights up to float rounding, and every full batch after the
    warm-up replayed."""
    from kdnas.distill import TeacherCache
    from kdnas.distill.graph_step import WARMUP

    teacher, data = teacher_and_data
    cfg = TrainConfig(steps=40, batch_size=100, kd=kd, device="cuda", seed=1)
    cache = TeacherCache(tmp_path, "g", features=False) if cached else None
    if cached:  # written once, then read by both runs
        fit(_student(data)[0], data, cfg, teacher=teacher, cache=cache)
    runs = {}
    for graphs in ("0", "1"):
        monkeypatch.setenv("KDNAS_CUDA_GRAPHS", graphs)
        model, taps = _student(data)
        runs[graphs] = (model, fit(model, data, cfg, teacher=teacher if kd != "none" else None,
                                   cache=cache))
    eager, graphed = runs["0"][1], runs["1"][1]
    per_epoch = math.ceil(len(data.train_y) / 100)  # the last batch of each epoch is short
    full = sum(1 for s in range(40) if s % per_epoch != per_epoch - 1)
    assert eager.graphed_steps == 0 and graphed.graphed_steps == full - WARMUP
    assert graphed.val_accuracy == pytest.approx(eager.val_accuracy, abs=0.02)
    for p, q in zip(runs["0"][0].parameters(), runs["1"][0].parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-3)


@needs_cuda
def test_cuda_latency_names_the_gpu_and_steps_are_timed_there():
    from kdnas.cost import measure_latency
    from kdnas.distill.timing import time_step

    model, _ = _student(type("D", (), {"in_channels": 3, "num_classes": 10,
                                       "input_size": 32})())
    p50, p90, setting = measure_latency(model, (3, 32, 32), device="cuda")
    assert 0 < p50 <= p90 and torch.cuda.get_device_name(0) in setting
    assert next(model.parameters()).device.type == "cpu"
    assert time_step(model, (3, 32, 32), TrainConfig(batch_size=64, device="cuda")) > 0
    assert next(model.parameters()).device.type == "cpu"


@needs_cuda
@pytest.mark.slow
def test_search_on_cuda_end_to_end(tmp_path, digits_teacher, capsys):
    from kdnas.cli import main

    common = ["--workdir", str(tmp_path / "runs"), "--reports", str(tmp_path / "rep")]
    assert main(["search", "--teacher", str(digits_teacher), "--budget", "0.5MFLOPs",
                 "--trials", "3", "--study", "gpu", "--device", "cuda", "--latency-device",
                 "cuda", "--no-noise-check", *common]) == 0
    out = capsys.readouterr().out
    assert "on cuda:0 (" in out


@needs_cuda
def test_kdnas_bench_on_the_gpu_reports_trials_per_hour_and_utilisation(tmp_path):
    from conftest import CIFAR_ARCHIVE
    from kdnas.cli import main

    if not CIFAR_ARCHIVE.exists():
        pytest.skip(f"CIFAR-10 archive not found at {CIFAR_ARCHIVE}")
    out = tmp_path / "out"
    assert main(["bench", "--device", "cuda", "--quick", "--archive", str(CIFAR_ARCHIVE),
                 "--work", str(tmp_path / "work"), "--out", str(out)]) == 0
    gpu = json.loads((out / "benchmarks.json").read_text())["gpu"]
    assert gpu["device"].startswith("cuda") and gpu["trained"] == 2
    assert gpu["trials_per_hour"] > 0
    assert "trials per hour" in (out / "BENCHMARKS.md").read_text()


def test_cuda_graphs_are_opt_in_until_measured_on_a_gpu(monkeypatch):
    from kdnas.distill.graph_step import graphs_wanted

    monkeypatch.delenv("KDNAS_CUDA_GRAPHS", raising=False)
    assert not graphs_wanted(torch.device("cuda")) and not graphs_wanted(torch.device("cpu"))
    monkeypatch.setenv("KDNAS_CUDA_GRAPHS", "1")
    assert graphs_wanted(torch.device("cuda")) and not graphs_wanted(torch.device("cpu"))
