from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdnas.distill import FeatureTaps, HintLoss, KDLoss, TrainConfig, evaluate, fit, match_taps
from kdnas.errors import KdnasError
from kdnas.teacher import load_teacher
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


def test_fit_learns_digits_with_feature_distillation(digits, digits_teacher):
    teacher = load_teacher(digits_teacher)
    data = digits.with_normalization(teacher.mean, teacher.std)
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


def test_hints_change_the_gradient_of_the_student(digits, digits_teacher):
    """The feature loss really reaches the student: one step with and without hints gives
    different weights."""
    teacher = load_teacher(digits_teacher)
    data = digits.with_normalization(teacher.mean, teacher.std)
    out = {}
    for kd in ("feature", "logit"):
        model, taps = _student(data)
        fit(model, data, TrainConfig(epochs=0.05, kd=kd), teacher=teacher, student_taps=taps)
        out[kd] = model.stem[0].weight.detach().clone()
    assert not torch.allclose(out["feature"], out["logit"])
