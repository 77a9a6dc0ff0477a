from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdnas.core.settings import TrainConfig, kd_method
from kdnas.distill import FeatureTaps, HintLoss, KDLoss, evaluate, fit, match_taps
from kdnas.core.errors import KdnasError
from search_spaces import TapInfo, get_space


def test_kd_loss_matches_its_formula():
    torch.manual_seed(0)
    s, t, temp = torch.randn(4, 5), torch.randn(4, 5), 3.0
    p_t = torch.softmax(t / temp, 1)
    p_s = torch.softmax(s / temp, 1)
    by_hand = (p_t * (p_t.log() - p_s.log())).sum(1).mean() * temp * temp
    assert KDLoss(temp)(s, t) == pytest.approx(float(by_hand), rel=1e-5)
    assert float(KDLoss(temp)(t, t)) == pytest.approx(0.0, abs=1e-6)


def test_match_taps_pairs_equal_resolutions_and_falls_back_to_nearest():
    student = [TapInfo("a", 8, 1), TapInfo("b", 16, 2), TapInfo("c", 32, 8)]
    teacher = [TapInfo("x", 16, 1), TapInfo("y", 32, 2), TapInfo("z", 64, 4)]
    assert match_taps(student, teacher) == [(0, 0), (1, 1), (2, 2)]
    assert match_taps(student, []) == []


def test_hint_loss_matches_its_formula_and_resizes():
    torch.manual_seed(0)
    student = [TapInfo("a", 4, 1), TapInfo("b", 6, 4)]
    teacher = [TapInfo("x", 3, 1), TapInfo("y", 5, 2)]
    hint = HintLoss(student, teacher).eval()
    s = [torch.randn(2, 4, 8, 8), torch.randn(2, 6, 2, 2)]
    t = [torch.randn(2, 3, 8, 8), torch.randn(2, 5, 4, 4)]
    c0, c1 = hint.connectors
    with torch.no_grad():
        expected = (F.mse_loss(c0(s[0]), t[0]) +
                    F.mse_loss(F.interpolate(c1(s[1]), size=(4, 4), mode="bilinear",
                                             align_corners=False), t[1])) / 2
        assert float(hint(s, t)) == pytest.approx(float(expected), rel=1e-6)


@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
def test_closed_form_hint_equals_the_connector_modules_in_training(layout):
    """In training the hint skips materialising BN(conv(s)); loss, every gradient and the
    BN running statistics must be those of the plain modules (checked in float64)."""
    from kdnas.distill.hint import hint_mse

    torch.manual_seed(0)
    s = (torch.randn(6, 5, 7, 7).relu() + 0.3).double().contiguous(memory_format=layout)
    t = (2 * torch.randn(6, 9, 7, 7).relu()).double().contiguous(memory_format=layout)
    ref = torch.nn.Sequential(torch.nn.Conv2d(5, 9, 1, bias=False),
                              torch.nn.BatchNorm2d(9)).double().train()
    with torch.no_grad():
        ref[1].weight.uniform_(0.5, 1.5)
        ref[1].bias.uniform_(-0.5, 0.5)
    fused = __import__("copy").deepcopy(ref)

    s1 = s.clone().requires_grad_()
    expected = F.mse_loss(ref(s1), t)
    expected.backward()
    s2 = s.clone().requires_grad_()
    got = hint_mse(s2, t, fused[0], fused[1])
    got.backward()
    assert got.item() == pytest.approx(expected.item(), rel=1e-10)
    assert torch.allclose(s2.grad, s1.grad, rtol=1e-8, atol=1e-12)
    for a, b in zip(fused.parameters(), ref.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, rtol=1e-8, atol=1e-12)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.allclose(getattr(fused[1], name), getattr(ref[1], name).to(
            getattr(fused[1], name).dtype), rtol=1e-8)


def test_hint_loss_trains_the_same_in_closed_form_and_with_fp16_teacher_maps():
    """HintLoss in training uses the closed form for equal sizes and the modules otherwise;
    both paths give the plain formula, with teacher maps in fp16 as the cache stores them."""
    torch.manual_seed(1)
    student = [TapInfo("a", 4, 1), TapInfo("b", 6, 4)]
    teacher = [TapInfo("x", 3, 1), TapInfo("y", 5, 2)]
    hint = HintLoss(student, teacher).train()
    s = [torch.randn(4, 4, 8, 8).contiguous(memory_format=torch.channels_last),
         torch.randn(4, 6, 2, 2)]
    t = [torch.randn(4, 3, 8, 8).half(), torch.randn(4, 5, 4, 4).half()]
    c0, c1 = (__import__("copy").deepcopy(c) for c in hint.connectors)
    expected = (F.mse_loss(c0(s[0]), t[0].float()) +
                F.mse_loss(F.interpolate(c1(s[1]), size=(4, 4), mode="bilinear",
                                         align_corners=False), t[1].float())) / 2
    assert hint(s, t).item() == pytest.approx(expected.item(), rel=1e-5)


def test_attention_gradient_is_autograds():
    from kdnas.distill import ATLoss

    torch.manual_seed(0)
    s = torch.randn(3, 4, 6, 6).double().contiguous(memory_format=torch.channels_last)
    t = torch.randn(3, 5, 6, 6).double()
    loss = ATLoss([TapInfo("a", 4, 1)], [TapInfo("x", 5, 1)])

    def at(f):
        a = f.pow(2).mean(1).flatten(1)
        return a / a.norm(dim=1, keepdim=True)

    s1, s2 = s.clone().requires_grad_(), s.clone().requires_grad_()
    (at(s1) - at(t)).pow(2).sum(1).mean().backward()
    loss([s2], [t]).backward()
    assert torch.allclose(s2.grad, s1.grad, rtol=1e-5, atol=1e-9)
    assert s2.grad.is_contiguous(memory_format=torch.channels_last)


def test_feature_taps_hold_one_step_and_clear():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU())
    with FeatureTaps(model, ["0"]) as taps:
        model(torch.randn(1, 1, 5, 5))
        assert taps.features()[0].shape == (1, 2, 3, 3)
        taps.clear()
        with pytest.raises(KeyError):
            taps.features()
    with pytest.raises(KdnasError, match="no module"):
        FeatureTaps(model, ["9"])


def test_train_config_validates():
    with pytest.raises(KdnasError, match="distillation method"):
        TrainConfig(kd="crd")
    with pytest.raises(KdnasError, match="train fraction"):
        TrainConfig(train_fraction=0)


def _student(digits, seed=0):
    space = get_space("resnet")
    spec = space.preset("resnet8", in_channels=1, num_classes=10, input_size=8)
    torch.manual_seed(seed)
    return space.build(spec), space.taps(spec)


def test_fit_learns_digits_with_feature_distillation(teacher_and_data):
    teacher, data = teacher_and_data
    model, taps = _student(data)
    assert evaluate(model, data) < 0.3  # untrained: near chance
    steps = []
    res = fit(model, data, TrainConfig(epochs=6, kd="feature"), teacher=teacher,
              student_taps=taps, progress=lambda s, n, loss: steps.append((s, n, loss)))
    assert res.val_accuracy > 0.8
    assert res.val_accuracy == evaluate(model, data)
    assert steps[-1][0] == steps[-1][1] == res.steps
    assert all(math.isfinite(x[2]) for x in steps)
    assert [c["epoch"] for c in res.curve] == list(range(1, 7))


def test_fit_is_deterministic_for_a_seed(digits):
    a, _ = _student(digits)
    b, _ = _student(digits)
    cfg = TrainConfig(epochs=1, kd="none", seed=3)
    ra, rb = fit(a, digits, cfg), fit(b, digits, cfg)
    assert ra.val_accuracy == rb.val_accuracy
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                 b.state_dict().values(), strict=True))


def test_hints_change_the_gradient_of_the_student(teacher_and_data):
    """The feature loss really reaches the student: one step with and without hints gives
    different weights."""
    teacher, data = teacher_and_data
    out = {}
    for kd in ("feature", "logit"):
        model, taps = _student(data)
        fit(model, data, TrainConfig(epochs=0.05, kd=kd), teacher=teacher, student_taps=taps)
        out[kd] = model.stem[0].weight.detach().clone()
    assert not torch.allclose(out["feature"], out["logit"])


def test_attention_transfer_matches_its_formula():
    from kdnas.distill import ATLoss

    torch.manual_seed(0)
    s = [torch.randn(3, 4, 8, 8), torch.randn(3, 6, 2, 2)]
    t = [torch.randn(3, 5, 8, 8), torch.randn(3, 7, 4, 4)]
    loss = ATLoss([TapInfo("a", 4, 1), TapInfo("b", 6, 4)], [TapInfo("x", 5, 1),
                                                              TapInfo("y", 7, 2)])

    def at(f):
        a = f.pow(2).mean(1).flatten(1)
        return a / a.norm(dim=1, keepdim=True)

    t1 = F.adaptive_avg_pool2d(t[1], (2, 2))  # the larger map is pooled to the smaller
    expected = ((at(s[0]) - at(t[0])).pow(2).sum(1).mean()
                + (at(s[1]) - at(t1)).pow(2).sum(1).mean()) / 2
    assert float(loss(s, t)) == pytest.approx(float(expected), rel=1e-6)
    # attention maps are scale-free: a scaled copy has nothing to learn
    assert float(loss([3 * t[0], s[1]], [t[0], s[1]])) == pytest.approx(0.0, abs=1e-9)


def test_similarity_preserving_matches_its_formula_and_ignores_scale():
    from kdnas.distill import SPLoss

    torch.manual_seed(0)
    s, t = torch.randn(5, 4, 3, 3), torch.randn(5, 8, 6, 6)
    loss = SPLoss([TapInfo("a", 4, 2)], [TapInfo("x", 8, 2)])
    gs = s.flatten(1) @ s.flatten(1).t()
    gt = t.flatten(1) @ t.flatten(1).t()
    gs, gt = gs / gs.norm(dim=1, keepdim=True), gt / gt.norm(dim=1, keepdim=True)
    assert float(loss([s], [t])) == pytest.approx(float(((gs - gt) ** 2).sum() / 25), rel=1e-5)
    # relational: a student whose features are a scaled teacher's has nothing to learn
    assert float(loss([3 * t], [t])) == pytest.approx(0.0, abs=1e-7)


def test_pkt_matches_its_formula():
    from kdnas.distill import PKTLoss

    torch.manual_seed(0)
    s, t = torch.randn(6, 4, 2, 2), torch.randn(6, 9, 4, 4)
    loss = PKTLoss([TapInfo("a", 4, 2)], [TapInfo("x", 9, 2)])

    def probs(f):
        z = f.mean((2, 3))
        z = z / z.norm(dim=1, keepdim=True)
        k = (z @ z.t() + 1) / 2
        return k / k.sum(1, keepdim=True)

    ps, pt = probs(s), probs(t)
    expected = (pt * torch.log((pt + 1e-7) / (ps + 1e-7))).mean()
    assert float(loss([s], [t])) == pytest.approx(float(expected), rel=1e-5)
    assert float(loss([t], [t])) == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("method", ["fitnets", "at", "sp", "pkt", "rkd", "dkd", "dist",
                                    "logit-ls", "dkd-ls", "dkd-ls-hints"])
def test_every_feature_method_trains(teacher_and_data, method):
    teacher, data = teacher_and_data
    model, taps = _student(data)
    # the standardised methods start slowly: after 4 epochs (48 steps) of digits they are
    # still near chance (12% and 20%; plain KD 56%), after 15 on a par with KD (95.8 vs 96.2%)
    epochs = 15 if "-ls" in method else 4
    r = fit(model, data, TrainConfig(epochs=epochs, kd=method), teacher=teacher,
            student_taps=taps)
    assert r.val_accuracy > 0.4  # learning (chance is 0.1), not diverging, at the default weight


def test_teacher_cache_is_written_once_and_read_after(teacher_and_data, tmp_path):
    from kdnas.distill import TeacherCache

    teacher, data = teacher_and_data
    cfg = TrainConfig(epochs=1.5, kd="fitnets")
    cache = TeacherCache(tmp_path, "k")
    first, taps = _student(data)
    r1 = fit(first, data, cfg, teacher=teacher, student_taps=taps, cache=cache)
    assert cache.complete and cache.writes == r1.steps and cache.hits == 0

    def from_cache_alone(cache):  # a fresh student trained with a teacher that must not run
        class Refuses(torch.nn.Module):
            def forward(self, x):
                raise AssertionError("teacher ran although its outputs were cached")

        real, teacher.module = teacher.module, Refuses()
        try:
            student, taps = _student(data)
            return student, fit(student, data, cfg, teacher=teacher, student_taps=taps,
                                cache=cache)
        finally:
            teacher.module = real

    second, r2 = from_cache_alone(cache)
    assert cache.hits == r2.steps
    # the same student trained from cached fp16 outputs ends exactly where the first did
    assert r2.val_accuracy == r1.val_accuracy
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(),
                                                 second.state_dict().values(), strict=True))
    # held in (GPU) memory when it fits: read from there, not from disk; the same training
    held = TeacherCache(tmp_path, "k")
    size = sum(f.stat().st_size for f in held.dir.glob("*.pt"))
    assert not held.load_resident(torch.device("cpu"), free_bytes=2 * size)  # over a quarter
    assert held.load_resident(torch.device("cpu"), free_bytes=4 * size)
    for f in held.dir.glob("*.pt"):
        f.unlink()
    _, r3 = from_cache_alone(held)
    assert held.hits == r3.steps and r3.val_accuracy == r1.val_accuracy


def test_interrupted_cache_is_not_used(teacher_and_data, tmp_path):
    from kdnas.distill import TeacherCache

    teacher, data = teacher_and_data
    cache = TeacherCache(tmp_path, "k")

    def stop(step, total, loss):
        if step == 3:
            raise KeyboardInterrupt

    model, taps = _student(data)
    with pytest.raises(KeyboardInterrupt):
        fit(model, data, TrainConfig(epochs=1, kd="feature"), teacher=teacher,
            student_taps=taps, cache=cache, progress=stop)
    # nothing half-written is left (the writer's lock file, .k.lock, may stay)
    assert not cache.complete and [p for p in tmp_path.iterdir()
                                   if not p.name.startswith('.')] == []


def test_brief_recipe_is_set_in_steps_and_scales_with_the_data():
    from kdnas.core.settings import DEFAULT_STEPS, SearchConfig

    cfg = SearchConfig()
    assert cfg.brief_steps(45_000) == DEFAULT_STEPS == 400  # about 1.1 epochs of CIFAR-10
    assert cfg.brief_steps(1_150) == 30 * 9  # a tiny set stops at 30 epochs
    assert cfg.brief_steps(3_600) == 400  # about 14 epochs of a few thousand images
    assert SearchConfig(steps=50).brief_steps(45_000) == 50
    assert SearchConfig(epochs=2).brief_steps(1_150) == 18
    assert SearchConfig(epochs=1, train_fraction=0.5).brief_steps(1_280) == 5
    t = SearchConfig(steps=120).train_config(45_000)
    assert (t.steps, t.eval_every, t.eval_limit) == (120, 24, 192)
    assert SearchConfig().train_config(45_000).eval_limit == 640  # 80 steps x 128 / 16
    # a curve point evaluates at most a sixteenth of the images trained since the last, and at
    # least 100: 8 steps of 128 images -> 100 validation images a point
    assert SearchConfig(epochs=1).train_config(5_000).eval_limit == 100
    assert "120 steps of 128 images" in SearchConfig(steps=120).recipe_text(45_000)
    with pytest.raises(KdnasError, match="not both"):
        SearchConfig(steps=10, epochs=1)
    with pytest.raises(KdnasError, match="steps"):
        TrainConfig(steps=0)


def test_fit_runs_the_steps_asked_and_records_a_learning_curve(digits):
    space = get_space("resnet")
    spec = space.preset("resnet8", in_channels=1, num_classes=10, input_size=8)
    torch.manual_seed(0)
    r = fit(space.build(spec), digits, TrainConfig(steps=40, kd="none", eval_every=10,
                                                   eval_limit=200))
    assert r.steps == 40  # 4.4 epochs of digits: steps, not epochs, set the length
    assert [p["step"] for p in r.points] == [10, 20, 30, 40]
    sub = [p["val_subset_accuracy"] for p in r.points[:-1]]
    assert all(0 <= a <= 1 for a in sub) and r.points[-1]["val_accuracy"] == r.val_accuracy
    assert r.val_accuracy > 0.5  # far above chance (10%) after 40 steps on real digits
    assert r.points[0]["images"] == 10 * 128


def test_narrow_strided_1x1_convs_get_right_gradients_in_channels_last():
    """The CPU kernels' channels_last weight gradient of a strided 1x1 conv with under 8 input
    channels is wrong or crashes; kdnas computes those convs contiguous while training."""
    import copy

    from kdnas.distill.layout import PinnedConvs

    space = get_space("resnet")
    spec = space.preset("resnet8", in_channels=3, num_classes=10, input_size=32)
    spec["stem_width"], spec["stages"][0]["width"], spec["stages"][1]["width"] = 6, 6, 12
    torch.manual_seed(0)
    model = space.build(spec)
    ref = copy.deepcopy(model).double()
    x = torch.randn(16, 3, 32, 32)
    F.cross_entropy(ref(x.double()), torch.arange(16) % 10).backward()
    model.to(memory_format=torch.channels_last)
    pinned = PinnedConvs(model)
    assert 6 in {dict(model.named_modules())[n].in_channels for n in pinned.names}
    F.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)),
                    torch.arange(16) % 10).backward()
    pinned.close()
    for (name, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
        err = (p.grad.double() - q.grad).abs().max() / q.grad.abs().max().clamp_min(1e-12)
        assert err < 1e-3, name
    assert not any(m._forward_pre_hooks for m in model.modules())


def test_step_time_leaves_the_model_and_random_state_alone_and_grows_with_work():
    """The step-time estimate trains a copy: the candidate's weights, BatchNorm statistics
    and torch's random stream (which seeds its training) are as they were. A model doing
    about 60x the work takes longer per step (a wide margin: the check is not a timing
    target, only that the figure measures the model)."""
    from kdnas.distill.timing import time_step

    cfg = TrainConfig(batch_size=32, device="cpu")
    small = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    big = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
    state = {k: v.clone() for k, v in small.state_dict().items()}
    rng = torch.random.get_rng_state()
    ms_small = time_step(small, (3, 16, 16), cfg)
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert all(torch.equal(v, small.state_dict()[k]) for k, v in state.items())
    assert small.training and ms_small > 0
    ms_big = min(time_step(big, (3, 16, 16), cfg) for _ in range(2))
    assert ms_big > 2 * ms_small


def test_step_time_survives_the_cpu_kernels_channels_last_bug():
    """A one-channel student with a strided 1x1 shortcut from a 6-channel stage: in
    channels_last the CPU kernels corrupt the heap in its weight gradient (the process
    aborted 3 times in 4 before the step timer pinned those convolutions as training does)."""
    from kdnas.distill.timing import time_step
    from search_spaces import build

    spec = {"space": "resnet", "in_channels": 1, "num_classes": 10, "stem": "cifar",
            "block": "basic", "stem_width": 6, "stages": [{"depth": 3, "width": 6},
                                                          {"depth": 1, "width": 16},
                                                          {"depth": 3, "width": 24}]}
    for _ in range(3):
        assert time_step(build(spec), (1, 8, 8), TrainConfig(device="cpu")) > 0


def test_every_kd_method_is_declared_once_with_its_loss():
    """One table (kdnas.core.settings.KD_TABLE) names the methods; every feature method has
    its loss module and its default weight, --kd accepts each, --kd auto searches each."""
    from kdnas.core.settings import AUTO_METHODS, FEATURE_WEIGHTS, KD_METHODS, KD_TABLE
    from kdnas.distill.losses import FEATURE_LOSSES

    names = [m.name for m in KD_TABLE]
    assert AUTO_METHODS == tuple(n for n in names if n != "dkd-ls-hints") == (
        "logit", "fitnets", "at", "sp", "pkt", "dkd", "dist", "logit-ls", "dkd-ls", "rkd")
    assert set(FEATURE_LOSSES) | {"dkd-ls-hints"} == set(FEATURE_WEIGHTS) == {
        m.name for m in KD_TABLE if m.feature_weight is not None}
    assert all(m.hints in FEATURE_LOSSES for m in KD_TABLE if m.hints)
    assert set(KD_METHODS) == {*names, "feature", "none"}


def test_dkd_ls_with_hints_is_dkd_ls_plus_fitnets_hints(teacher_and_data):
    """dkd-ls-hints reads the teacher's features through FitNets' hint loss and DKD+LS's
    logit loss: its gradient differs from dkd-ls alone (the hints) and from FitNets (the
    logit loss)."""
    from kdnas.core.settings import reads_features
    from kdnas.distill.losses import HintLoss, feature_loss

    teacher, data = teacher_and_data
    _, taps = _student(data)
    assert reads_features("dkd-ls-hints") and not reads_features("dkd-ls")
    assert isinstance(feature_loss(kd_method("dkd-ls-hints"), taps, teacher.taps), HintLoss)
    finals = {}
    for method in ("dkd-ls", "dkd-ls-hints", "fitnets"):
        model, taps = _student(data)
        fit(model, data, TrainConfig(steps=3, kd=method), teacher=teacher, student_taps=taps)
        finals[method] = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert not torch.equal(finals["dkd-ls"], finals["dkd-ls-hints"])
    assert not torch.equal(finals["fitnets"], finals["dkd-ls-hints"])


def test_images_seen_counts_each_epochs_short_last_batch(digits):
    """A trial records the images it trained on, not steps x batch: 4,500 images in batches
    of 128 are 36 steps an epoch, the last of 20 images (steps x batch would say 4,608)."""
    from kdnas.distill.trainer import images_seen

    assert images_seen(4500, 128, 36) == 4500 and images_seen(4500, 128, 40) == 4500 + 512
    assert images_seen(1000, 100, 25) == 2500
    cfg = TrainConfig(steps=13, batch_size=100, kd="none", device="cpu")
    n = len(digits.train_y)  # 1,150: 12 batches an epoch, the last of 50
    from search_spaces import get_space

    spec = get_space("resnet").smallest(in_channels=1, num_classes=10, input_size=8)
    r = fit(get_space("resnet").build(spec), digits, cfg)
    assert n == 1150 and r.images == images_seen(n, 100, 13) == 1150 + 100
    r = fit(get_space("resnet").build(spec), digits, __import__("dataclasses").replace(
        cfg, steps=16))
    assert r.images == n + 4 * 100


def test_a_writer_killed_mid_cache_leaves_nothing_behind_once_another_writes(tmp_path):
    """A writer stopped mid-write leaves its .tmp-<pid> folder (up to the whole cache's size);
    the next writer removes it, and the finished cache is the only folder left."""
    import torch

    from kdnas.distill import TeacherCache

    killed = TeacherCache(tmp_path, "k")
    assert killed.begin()
    killed.put(0, torch.zeros(4, 10), [])
    killed._tmp = killed._tmp.rename(killed._tmp.with_name("k.tmp-999999"))  # another pid
    killed._unlock()  # what its death does to the lock
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == ["k.tmp-999999"]
    writer = TeacherCache(tmp_path, "k")
    assert writer.begin()
    for step in range(2):
        writer.put(step, torch.ones(4, 10), [])
    writer.commit(2)
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == ["k"]
    assert writer.complete and float(writer.get(1)[0].sum()) == 40.0


def test_the_learning_curve_reads_a_sample_of_every_class_not_the_first_images(cifar_subset):
    """An ImageFolder lists its images class by class, and so does the validation split: the
    curve's subset is a fixed sample of the whole split, so each of its points stands for
    every class (the first 100 images would be two or three), and the last point's subset
    accuracy is read from the same images as the points before it."""
    from kdnas.data import load_data
    from kdnas.distill.evaluation import hits, subset_order

    data = load_data(f"imagefolder:{cifar_subset}", val_fraction=0.2, seed=0)
    n = len(data.val_y)
    assert len(set(data.val_y[:100].tolist())) <= 3  # the split's own order: by class
    sub = subset_order(n, 100)
    assert torch.equal(sub, subset_order(n, 100)) and len(set(sub.tolist())) == 100
    assert len(set(data.val_y[sub].tolist())) == 10
    assert subset_order(n, n) is None and subset_order(n, None) is None
    space = get_space("resnet")
    spec = space.preset("resnet8", in_channels=3, num_classes=10, input_size=32)
    torch.manual_seed(0)
    model = space.build(spec)
    r = fit(model, data, TrainConfig(steps=6, kd="none", eval_every=3, eval_limit=100))
    right = hits(model, data, "val")
    assert r.points[-1]["val_subset_accuracy"] == pytest.approx(float(right[sub].float().mean()))
    assert torch.equal(hits(model, data, "val", limit=100), right[sub])
