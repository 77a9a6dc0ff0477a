"""The training step a GPU replays as a CUDA graph, checked on the CPU: its update reads the
learning rate and the loss's ramp from device tensors, and trains what torch's SGD trains.
(The capture itself needs CUDA: tests/test_device.py.)"""

from __future__ import annotations

import copy
import functools

import pytest
import torch

from kdnas.core.settings import TrainConfig
from kdnas.distill import fit
from kdnas.distill import trainer as trainer_mod
from kdnas.distill.graph_step import Stepper, TensorSGD
from search_spaces import get_space


def _net(seed=0):
    space = get_space("resnet")
    spec = space.preset("resnet8", in_channels=1, num_classes=10, input_size=8)
    torch.manual_seed(seed)
    return space.build(spec)


def _sgd(net):
    return torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                           weight_decay=5e-4)


def test_tensor_sgd_is_torch_sgd_with_its_learning_rate_on_the_device():
    """Same updates over steps of changing learning rate, one parameter without a gradient
    (skipped by both), and momentum carried over through a state dict (a resumed run)."""
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    a.register_parameter("unused", torch.nn.Parameter(torch.ones(2)))
    b = copy.deepcopy(a)
    ref, ours_opt = _sgd(a), _sgd(b)
    ours = TensorSGD(ours_opt, torch.device("cpu"))
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    for step, lr in enumerate([0.05, 0.1, 0.1, 0.07, 0.01]):
        for net, opt in ((a, ref), (b, ours_opt)):
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(net(x), y).backward()
        for g in ref.param_groups:
            g["lr"] = lr
        ref.step()
        ours.lr.fill_(lr)
        ours.step()
        if step == 2:  # resume from a checkpoint of the reference's state
            ours_opt.load_state_dict(copy.deepcopy(ref.state_dict()))
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert b.unused.grad is None and torch.equal(b.unused, torch.ones(2))
    with pytest.raises(ValueError, match="Nesterov"):
        TensorSGD(torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9), torch.device("cpu"))


def test_the_tensor_step_trains_what_the_plain_step_trains(digits):
    """The graph path's step run eagerly on the CPU (learning rate and ramp as tensors, short
    batches included) against torch's step with their values, on a real student."""
    nets = [_net(), _net()]
    opts = [_sgd(n) for n in nets]

    def loss_fn(net, x, y, t, scale):
        logits = net(x)
        return torch.nn.functional.cross_entropy(logits, y) + (logits - t).pow(2).mean() * scale

    cpu = torch.device("cpu")
    plain = Stepper(functools.partial(loss_fn, nets[0]), opts[0], cpu, graphs=False)
    tensor = Stepper(functools.partial(loss_fn, nets[1]), opts[1], cpu, graphs=False,
                     tensors=True)
    assert not plain.tensors and tensor.tensors and tensor.sgd is not None
    torch.manual_seed(1)
    for step, (x, y, _) in enumerate(digits.batches("train", 100, shuffle=True, seed=3)):
        t = 0.5 * torch.randn(len(y), 10)
        lr, scale = 0.05 * (1 - step / 20), min(1.0, (step + 1) / 5)
        la, lb = plain(x, y, t, lr, scale), tensor(x, y, t, lr, scale)
        assert float(la.detach()) == pytest.approx(float(lb.detach()), rel=1e-4)
    assert len(y) < 100  # the pass ended on a short batch
    for p, q in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    for m, n in zip(nets[0].buffers(), nets[1].buffers(), strict=True):  # batch norm's
        torch.testing.assert_close(m, n, rtol=1e-4, atol=1e-5)


def test_fit_on_the_tensor_step_matches_fit_on_torchs(teacher_and_data, monkeypatch):
    """The whole trainer with DKD+LS (a ramped logit loss, the search's default) and a short
    last batch each epoch: the graph path's step, run eagerly, reaches the same weights and
    accuracy as the CPU's own."""
    teacher, data = teacher_and_data
    cfg = TrainConfig(steps=25, batch_size=100, kd="dkd-ls", seed=3)
    space = get_space("resnet")
    spec = space.preset("resnet8", in_channels=1, num_classes=10, input_size=8)

    def run():
        torch.manual_seed(0)
        net = space.build(spec)
        out = fit(net, data, cfg, teacher=teacher)
        return net, out
    net_a, a = run()
    monkeypatch.setattr(trainer_mod, "Stepper", functools.partial(Stepper, tensors=True))
    net_b, b = run()
    assert a.steps == b.steps == 25 and b.graphed_steps == 0  # nothing captured on a CPU
    assert a.val_accuracy == pytest.approx(b.val_accuracy, abs=0.01)
    for p, q in zip(net_a.parameters(), net_b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-4)
