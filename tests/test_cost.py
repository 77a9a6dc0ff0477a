from __future__ import annotations

import pytest
import torch
from torch import nn

from kdnas.core.budget import Cost, parse_budget
from kdnas.cost import (
    count_macs,
    count_ops,
    count_params,
    macs_lower_bound,
    measure_cost,
    measure_latency,
)
from kdnas.core.errors import KdnasError
from search_spaces import get_space


@pytest.mark.parametrize("text,metric,limit", [
    ("50MFLOPs", "macs", 50e6),
    ("50MMACs", "macs", 50e6),
    ("50mflops", "macs", 50e6),
    ("1.5GFLOPs", "macs", 1.5e9),
    ("300kMACs", "macs", 300e3),
    ("0.5Mparams", "params", 0.5e6),
    ("5ms", "latency_ms", 5.0),
    ("2.5 ms", "latency_ms", 2.5),
])
def test_parse_budget(text, metric, limit):
    b = parse_budget(text)
    assert b.metric == metric
    assert b.limit == pytest.approx(limit)


def test_flops_and_macs_budgets_are_the_same():
    assert parse_budget("50MFLOPs") == parse_budget("50MMACs").__class__(
        "macs", 50e6, "50MFLOPs")


@pytest.mark.parametrize("text", ["", "fifty", "50", "50Mbananas", "-5MFLOPs", "0MFLOPs",
                                  "5kms"])
def test_parse_budget_rejects_with_a_helpful_message(text):
    with pytest.raises(KdnasError) as e:
        parse_budget(text)
    assert "50MFLOPs" in str(e.value) or "positive" in str(e.value)


def test_budget_gate_sign():
    b = parse_budget("10MMACs")
    assert b.fits(Cost(macs=10_000_000, params=1))
    assert not b.fits(Cost(macs=10_000_001, params=1))
    assert b.excess(Cost(macs=20_000_000, params=1)) == pytest.approx(1.0)


def test_macs_of_a_convolution_match_the_analytic_count():
    conv = nn.Conv2d(3, 16, 3, padding=1, bias=False)
    # every output element: 3 input channels x 3 x 3 kernel multiply-accumulates
    assert count_macs(conv, (3, 32, 32)) == 16 * 32 * 32 * 3 * 3 * 3


def test_macs_of_a_strided_convolution():
    conv = nn.Conv2d(8, 24, 5, stride=2, padding=2, bias=False)
    assert count_macs(conv, (8, 20, 20)) == 24 * 10 * 10 * 8 * 5 * 5


def test_macs_of_a_depthwise_convolution_match_the_analytic_count():
    dw = nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False)
    assert count_macs(dw, (32, 16, 16)) == 32 * 16 * 16 * 3 * 3


def test_macs_of_a_linear_layer():
    fc = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    assert count_macs(fc, (64,)) == 64 * 10


def test_resnet20_matches_published_cost():
    """He et al. 2016: ResNet-20 on CIFAR, about 41M MACs and 0.27M params."""
    space = get_space("resnet")
    model = space.build(space.preset("resnet20", in_channels=3, num_classes=10, input_size=32))
    assert count_macs(model, (3, 32, 32)) == pytest.approx(41e6, rel=0.02)
    assert count_params(model) == pytest.approx(0.27e6, rel=0.02)


def test_fvcore_agrees_with_the_counter_kdnas_uses():
    """Two counters, one answer: kdnas counts with torch's flop counter (convs and linears);
    fvcore also counts batch norm and pooling, a fraction of a percent more here."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fvcore.nn import FlopCountAnalysis

    space = get_space("resnet")
    model = space.build(space.preset("resnet20", in_channels=3, num_classes=10,
                                     input_size=32)).eval()
    ours = count_macs(model, (3, 32, 32))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        analysis = FlopCountAnalysis(model, torch.zeros(1, 3, 32, 32))
        analysis.unsupported_ops_warnings(False)
        fv = analysis.total()
    assert ours <= fv <= ours * 1.01


# torchvision's published cost of each model (weights metadata "_ops": GFLOPS in the
# multiply-accumulate convention), nine families, attention and a transformer included
PUBLISHED = ("resnet18", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0",
             "shufflenet_v2_x1_0", "regnet_y_400mf", "convnext_tiny", "densenet121",
             "vit_b_16", "swin_t")


@pytest.mark.slow
@pytest.mark.parametrize("name", PUBLISHED)
def test_macs_match_torchvision_published_figures(name):
    import torchvision

    weights = torchvision.models.get_model_weights(name).DEFAULT  # metadata only, no download
    size = weights.transforms().crop_size[0]
    model = torchvision.models.get_model(name, weights=None)
    macs, uncounted = count_ops(model, (3, size, size))
    assert uncounted == ()
    assert macs / 1e9 == pytest.approx(weights.meta["_ops"], rel=0.05)


class _SpectralNet(nn.Module):
    """Mixes tokens with an FFT, an op that does real work and that no formula counts."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.fft.fft2(self.conv(x)).real
        return self.fc(x.mean((2, 3)))


def test_uncounted_ops_are_named_and_refused_by_a_macs_budget():
    model = _SpectralNet()
    macs, uncounted = count_ops(model, (3, 16, 16))
    assert macs == 3 * 8 * 9 * 16 * 16 + 8 * 10  # what could be counted
    assert any("fft" in op for op in uncounted)
    with pytest.raises(KdnasError, match="fft"):
        count_macs(model, (3, 16, 16))
    cost = measure_cost(model, (3, 16, 16), latency=False)
    assert cost.uncounted_ops == uncounted
    budget = parse_budget("1GFLOPs")  # far above the partial count
    assert not budget.fits(cost) and budget.excess(cost) >= 1.0
    assert "fft" in budget.refusal(cost)
    assert parse_budget("1Mparams").fits(cost)  # other budgets need no MACs


def test_attention_is_counted():
    """Scaled dot-product attention on the CPU runs a kernel torch's counter has no formula
    for; kdnas registers torch's own attention formula for it."""
    class Attend(nn.Module):
        def forward(self, x):
            q = x.flatten(2).transpose(1, 2).reshape(1, 4, 16, 8)  # (b, heads, L, d)
            return torch.nn.functional.scaled_dot_product_attention(q, q, q).sum((1, 2))

    macs, uncounted = count_ops(Attend(), (32, 4, 4))
    assert uncounted == ()
    assert macs == 4 * 16 * 16 * 8 * 2  # QK^T and PV, per head


def test_latency_measurement_is_shaped_and_honours_threads():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
    before = torch.get_num_threads()
    p50, p90, setting = measure_latency(model, (3, 16, 16), threads=1, repeats=11)
    assert 0 < p50 <= p90
    assert setting == "cpu, 1 threads, batch 1"
    assert torch.get_num_threads() == before  # restored
    _, _, setting2 = measure_latency(model, (3, 16, 16), threads=2, batch=4, repeats=5)
    assert setting2 == "cpu, 2 threads, batch 4"


@pytest.mark.parametrize("space_name", ["resnet", "mobilenet", "shufflenet"])
def test_the_cheap_bound_never_exceeds_the_count_and_equals_it_on_builtin_spaces(space_name):
    """The sampler rejects a draw whose convolution-and-linear MACs exceed a MACs budget
    without the full count: that bound must never exceed the count (else a candidate within
    budget could be rejected). The built-in spaces do all their MACs in those modules."""
    import numpy as np
    import optuna

    from kdnas.search.sampler import random_params

    space, rng = get_space(space_name), np.random.RandomState(0)
    for _ in range(6):
        spec = space.sample(optuna.trial.FixedTrial(random_params(space.distributions(), rng)),
                            in_channels=3, num_classes=10, input_size=32)
        model = space.build(spec)
        assert macs_lower_bound(model, (3, 32, 32)) == count_macs(model, (3, 32, 32))


def test_the_cheap_bound_leaves_out_functional_matmuls():
    class Mixer(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(16, 16)
            self.w = nn.Parameter(torch.randn(16, 16))

        def forward(self, x):
            return self.proj(x.flatten(1) @ self.w)

    m = Mixer()
    assert macs_lower_bound(m, (16,)) == 256 < count_macs(m, (16,)) == 512


def test_latency_on_onnx_runtime_fp32_and_int8_names_the_runtime_and_leaves_the_model():
    """--latency-runtime: the candidate exported to ONNX (and quantized) and timed on ONNX
    Runtime; the setting says which; a CUDA latency device cannot be combined with it."""
    import pytest
    import torch

    from kdnas.core.errors import KdnasError
    from kdnas.core.settings import SearchConfig
    from kdnas.cost import measure_cost, measure_latency
    from search_spaces import get_space

    sp = get_space("mobilenet")
    model = sp.build(sp.smallest(in_channels=3, num_classes=10, input_size=32))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # each ONNX export takes seconds: one through measure_latency, one through measure_cost
    p50, p90, setting = measure_latency(model, (3, 32, 32), runtime="onnxruntime")
    assert 0 < p50 <= p90
    assert setting.startswith("onnxruntime") and "int8" not in setting \
        and "1 threads, batch 1" in setting
    cost = measure_cost(model, (3, 32, 32), latency_runtime="onnxruntime-int8")
    assert cost.latency_setting.startswith("onnxruntime") and "int8" in cost.latency_setting
    assert 0 < cost.latency_ms and cost.macs > 0
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(KdnasError, match="CPU only"):
        SearchConfig(latency_runtime="onnxruntime", latency_device="cuda")
