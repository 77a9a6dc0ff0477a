"""Training-free signals: each against its formula computed another way, the candidate left
as it was, and the teacher-aware score at its maximum for the teacher itself."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kdnas.distill.signals import (
    grad_norm,
    naswot,
    score_all,
    signal_batch,
    synflow,
    teacher_similarity,
)
from search_spaces import get_space


def _candidate(data, space="resnet", seed=0):
    sp = get_space(space)
    spec = sp.smallest(in_channels=data.in_channels, num_classes=data.num_classes,
                       input_size=data.input_size)
    torch.manual_seed(seed)
    return sp.build(spec), sp.taps(spec)


def test_naswot_is_the_log_determinant_of_the_agreement_kernel():
    """A one-layer ReLU net by hand: K_ij counts the units on which images i and j agree."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 40), nn.ReLU())
    x = torch.randn(6, 3, 2, 2)
    c = (net(x) > 0).double()
    k = c @ c.T + (1 - c) @ (1 - c).T
    assert naswot(net, x) == pytest.approx(float(torch.logdet(k)), rel=1e-9)
    same = x[:1].repeat(6, 1, 1, 1)  # six equal images cannot be told apart: K is singular
    assert naswot(net, same) == float("-inf")


def test_synflow_and_grad_norm_match_their_formulas_and_leave_the_weights():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    w1, b1, w2, b2 = (p.detach().abs().double() for p in net.parameters())
    # R = sum(W2 relu(W1 1 + b1) + b2) with |weights|: every unit is on
    h = w1 @ torch.ones(4, dtype=torch.float64) + b1
    grads = {"w2": torch.ones(2, 1, dtype=torch.float64) @ h.view(1, -1),
             "b2": torch.ones(2, dtype=torch.float64)}
    g_h = w2.sum(0)
    grads["w1"] = g_h.view(-1, 1) @ torch.ones(1, 4, dtype=torch.float64)
    grads["b1"] = g_h
    expected = sum(float((p * grads[n]).abs().sum())
                   for n, p in (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2)))
    assert synflow(net, (4,)) == pytest.approx(math.log(expected), rel=1e-9)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 1, 0, 1])
    net.zero_grad()
    torch.nn.functional.cross_entropy(net(x), y).backward()
    norm = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in net.parameters()))
    assert grad_norm(net, x, y) == pytest.approx(math.log(norm), rel=1e-6)


def test_score_all_on_real_digits_is_deterministic_and_leaves_the_candidate(teacher_and_data):
    teacher, data = teacher_and_data
    model, taps = _candidate(data)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    a = score_all(model, data, teacher=teacher)
    assert torch.equal(rng, torch.get_rng_state())  # training after it is unchanged
    b = score_all(model, data, teacher=teacher)
    assert set(a) == {"naswot", "grad_norm", "synflow", "teacher_similarity"}
    assert {k: v["value"] for k, v in a.items()} == {k: v["value"] for k, v in b.items()}
    assert all(math.isfinite(v["value"]) and v["seconds"] >= 0 for v in a.values())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training
    x, _ = signal_batch(data)
    assert x.shape[0] == 128 and torch.equal(x, signal_batch(data)[0])
    # the teacher's side is kept for the study's next candidate, and is what it computes anew
    assert a["teacher_similarity"]["value"] == teacher_similarity(model, teacher.module, x)
    # each at the initialisation: not after another's train-mode pass moved batch norm's stats
    assert a["synflow"]["value"] == synflow(model, tuple(x.shape[1:]))
    wider, _ = _candidate(data, "mobilenet")
    assert set(score_all(wider, data)) == {"naswot", "grad_norm", "synflow"}  # no teacher


def test_the_teacher_is_most_similar_to_itself(teacher_and_data):
    teacher, data = teacher_and_data
    x, _ = signal_batch(data)
    assert teacher_similarity(teacher.module, teacher.module, x) == pytest.approx(0.0, abs=1e-6)
    model, _ = _candidate(data)
    assert teacher_similarity(model, teacher.module, x) < -1e-4


def test_teacher_similarity_tells_apart_families_whose_last_stage_starts_at_zero(
        teacher_and_data):
    """MobileNetV2 and ShuffleNetV2 blocks end in a zero-initialised batch norm: their last
    stage's output is all zeros at initialisation, so a score read there was the same for
    every such student. The last activation differs from student to student."""
    teacher, data = teacher_and_data
    x, _ = signal_batch(data)
    for space in ("mobilenet", "shufflenet"):
        scores = {teacher_similarity(_candidate(data, space, seed)[0], teacher.module, x)
                  for seed in (0, 1)}
        assert len(scores) == 2, space
