from __future__ import annotations

import json

import optuna
import pytest
import torch

from kdnas.cost import count_macs, count_params
from kdnas.teacher import find_stage_taps
from search_spaces import build, describe, get_space, spec_id


@pytest.fixture
def space():
    return get_space("resnet")


@pytest.mark.parametrize("name,macs,params", [
    ("resnet20", 41e6, 0.27e6),
    ("resnet56", 125e6, 0.85e6),
    ("resnet110", 253e6, 1.7e6),
])
def test_presets_match_published_costs(space, name, macs, params):
    model = space.build(space.preset(name, in_channels=3, num_classes=10, input_size=32))
    assert count_macs(model, (3, 32, 32)) == pytest.approx(macs, rel=0.02)
    assert count_params(model) == pytest.approx(params, rel=0.02)


def test_resnet_depths_are_exact(space):
    for name, blocks in [("resnet20", 3), ("resnet32", 5), ("resnet56", 9)]:
        model = space.build(space.preset(name, in_channels=3, num_classes=10, input_size=32))
        convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)
                 and m.kernel_size == (3, 3)]
        assert len(convs) == 1 + 3 * 2 * blocks  # stem + two convs a block
        assert 6 * blocks + 2 == int(name[len("resnet"):])


def test_spec_round_trips_through_json_and_builds_the_same_module(space):
    spec = space.preset("resnet32", in_channels=1, num_classes=7, input_size=28)
    again = json.loads(json.dumps(spec))
    assert again == spec and spec_id(again) == spec_id(spec)
    torch.manual_seed(0)
    a = build(spec)
    torch.manual_seed(0)
    b = build(again)
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a(torch.zeros(2, 1, 28, 28)).shape == (2, 7)


def test_sampled_specs_use_declared_distributions(space):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    trial = study.ask()
    spec = space.sample(trial, in_channels=3, num_classes=10, input_size=32)
    assert set(trial.params) == set(space.distributions())
    fixed = space.sample(optuna.trial.FixedTrial(trial.params), in_channels=3, num_classes=10,
                         input_size=32)
    assert fixed == spec


def test_declared_taps_are_the_detected_stage_outputs(space):
    for name in ("resnet8", "resnet20"):
        spec = space.preset(name, in_channels=3, num_classes=10, input_size=32)
        assert find_stage_taps(space.build(spec), (3, 32, 32)) == space.taps(spec)


def test_taps_match_a_manual_forward(space):
    spec = space.preset("resnet20", in_channels=3, num_classes=10, input_size=32)
    model = space.build(spec).eval()
    x = torch.randn(2, 3, 32, 32)
    feats = {}
    for t in space.taps(spec):
        dict(model.named_modules())[t.module].register_forward_hook(
            lambda _m, _i, o, n=t.module: feats.__setitem__(n, o))
    with torch.no_grad():
        model(x)
        h = model.stem(x)
        for i, stage in enumerate(model.stages):
            h = stage(h)
            t = space.taps(spec)[i]
            assert torch.equal(feats[t.module], h)
            assert h.shape[1] == t.channels and 32 // h.shape[-1] == t.stride


def test_space_reaches_from_about_2m_to_300m_macs(space):
    small = space.build(space.smallest(in_channels=3, num_classes=10, input_size=32))
    assert count_macs(small, (3, 32, 32)) < 2.5e6
    dists = space.distributions()
    biggest = {k: max(d.choices) for k, d in dists.items()}
    spec = space.sample(optuna.trial.FixedTrial(biggest), in_channels=3, num_classes=10,
                        input_size=32)
    assert count_macs(space.build(spec), (3, 32, 32)) > 300e6


def test_stem_adapts_to_input(space):
    grey = space.preset("resnet8", in_channels=1, num_classes=10, input_size=8)
    assert build(grey)(torch.zeros(1, 1, 8, 8)).shape == (1, 10)
    big = space.preset("resnet8", in_channels=3, num_classes=5, input_size=96)
    assert big["stem"] == "imagenet"
    model = build(big)
    detected = find_stage_taps(model, (3, 96, 96))
    # the 7x7 stride-2 stem adds a resolution of its own before the max pool
    assert detected[0].module == "stem.2" and detected[0].stride == 2
    assert detected[1:] == space.taps(big)
    assert "imagenet" in describe(big)


def test_unknown_space_is_a_user_error():
    from kdnas.errors import KdnasError

    with pytest.raises(KdnasError, match="resnet"):
        get_space("transformer")
