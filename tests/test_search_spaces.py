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
    from kdnas.core.errors import KdnasError

    with pytest.raises(KdnasError, match="resnet"):
        get_space("transformer")


# --------------------------------------------------------------------------- other families
@pytest.mark.parametrize("space_name,preset,macs,params", [
    # the CIFAR-100 students of the KD literature (CRD benchmark): MobileNetV2 x0.5 has
    # about 0.81M params; ShuffleNetV2 1x about 1.36M
    ("mobilenet", "mobilenetv2_half", 6.4e6, 0.81e6),
    ("shufflenet", "shufflenetv2", 46e6, 1.36e6),
])
def test_family_presets_match_published_costs(space_name, preset, macs, params):
    space = get_space(space_name)
    model = space.build(space.preset(preset, in_channels=3, num_classes=100, input_size=32))
    assert count_params(model) == pytest.approx(params, rel=0.02)
    # fvcore also counts batch norm (one op per element), several percent on these thin nets
    assert count_macs(model, (3, 32, 32)) == pytest.approx(macs, rel=0.10)


@pytest.mark.parametrize("preset,reference", [("shufflenetv2_half", "shufflenet_v2_x0_5"),
                                              ("shufflenetv2", "shufflenet_v2_x1_0")])
def test_shufflenet_presets_have_torchvisions_parameters_exactly(preset, reference):
    """With ImageNet's 1000 classes the presets hold exactly the parameters of torchvision's
    ShuffleNetV2 of the same width (an independent implementation of the paper's table)."""
    import torchvision

    space = get_space("shufflenet")
    ours = space.build(space.preset(preset, in_channels=3, num_classes=1000, input_size=32))
    theirs = getattr(torchvision.models, reference)()
    assert count_params(ours) == sum(p.numel() for p in theirs.parameters())


@pytest.mark.parametrize("space_name", ["resnet", "mobilenet", "shufflenet"])
def test_every_space_samples_builds_and_taps(space_name):
    space = get_space(space_name)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for size, ch in ((32, 3), (8, 1), (64, 3)):
        trial = study.ask()
        spec = space.sample(trial, in_channels=ch, num_classes=7, input_size=size)
        assert set(trial.params) == set(space.distributions())
        assert json.loads(json.dumps(spec)) == spec
        model = space.build(spec).eval()
        x = torch.randn(2, ch, size, size)
        assert model(x).shape == (2, 7)
        feats = {}
        for t in space.taps(spec):
            dict(model.named_modules())[t.module].register_forward_hook(
                lambda _m, _i, o, t=t, feats=feats: feats.__setitem__(t, o))
        with torch.no_grad():
            model(x)
        for t, f in feats.items():
            assert f.shape[1] == t.channels and size // f.shape[-1] == t.stride, (spec, t)
        strides = [t.stride for t in space.taps(spec)]
        assert strides == sorted(set(strides))
        # the taps are the stage ends: the detector finds the same ones before the head
        # (1x1 maps are indistinguishable from global pooling, so not detected)
        declared = [t.module for t in space.taps(spec) if size // t.stride > 1]
        detected = [t.module for t in find_stage_taps(model, (ch, size, size))
                    if t.stride in strides]
        assert detected[:-1] == declared[: len(detected) - 1]
        assert len(detected) == len(declared)


def test_built_in_spaces_cover_1m_to_600m_macs():
    small = [count_macs(get_space(n).build(get_space(n).smallest(
        in_channels=3, num_classes=10, input_size=32)), (3, 32, 32))
        for n in ("resnet", "mobilenet", "shufflenet")]
    assert min(small) <= 1e6
    space = get_space("resnet")
    biggest = {k: max(d.choices) for k, d in space.distributions().items()}
    spec = space.sample(optuna.trial.FixedTrial(biggest), in_channels=3, num_classes=10,
                        input_size=32)
    assert count_macs(space.build(spec), (3, 32, 32)) >= 600e6


# --------------------------------------------------------------------------- user spaces
EXAMPLES = __import__("pathlib").Path(__file__).resolve().parent.parent / "docs" / "examples"


def test_user_space_from_a_file():
    ref = f"{EXAMPLES / 'plain_cnn.py'}:PlainCNN"
    space = get_space(ref)
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    spec = space.sample(trial, in_channels=1, num_classes=10, input_size=8)
    assert spec["space"] == ref and spec["in_channels"] == 1
    model = build(spec)  # rebuilt through the spec alone, as export does
    assert model(torch.zeros(1, 1, 8, 8)).shape == (1, 10)
    assert find_stage_taps(model, (1, 8, 8)) == space.taps(spec)
    assert describe(spec).startswith("PlainCNN ")


def test_nni_space_is_sampled_through_optuna():
    pytest.importorskip("nni")
    space = get_space(f"{EXAMPLES / 'nni_cnn.py'}:NniCNN")
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    spec = space.sample(trial, in_channels=1, num_classes=10, input_size=8)
    assert set(trial.params) == {"width", "depth", "dropout"}
    assert spec["width"] in (8, 16, 32) and 0 <= spec["dropout"] <= 0.3
    assert build(spec)(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    assert set(space.distributions()) == {"width", "depth", "dropout"}


@pytest.mark.parametrize("ref,needle", [
    ("nope.py:X", "does not exist"),
    ("{ex}/plain_cnn.py:Missing", "defines no 'Missing'"),
])
def test_bad_user_space_references(ref, needle):
    from kdnas.core.errors import KdnasError

    with pytest.raises(KdnasError, match=needle):
        get_space(ref.format(ex=EXAMPLES))


def test_core_path_never_imports_nni():
    import subprocess
    import sys

    code = ("import sys, kdnas.cli, kdnas.search.loop, kdnas.report, kdnas.ship.export;"
            "import search_spaces;"
            "from search_spaces import get_space;"
            "[get_space(n) for n in ('resnet', 'mobilenet', 'shufflenet')];"
            "print('nni' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"


def test_bottleneck_resnet(space):
    spec = space.preset("resnet20", in_channels=3, num_classes=10, input_size=32)
    spec["block"] = "bottleneck"
    model = space.build(spec)
    assert [t.channels for t in space.taps(spec)] == [64, 128, 256]
    assert find_stage_taps(model, (3, 32, 32)) == space.taps(spec)
    # 3 bottleneck blocks a stage, each 1x1 + 3x3 + 1x1; the stem is one 3x3
    from search_spaces.resnet import Bottleneck

    blocks = [m for m in model.modules() if isinstance(m, Bottleneck)]
    threes = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)
              and m.kernel_size == (3, 3)]
    assert len(blocks) == 9 and len(threes) == 1 + 9
    assert "bottleneck" in describe(spec)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_the_channel_shuffle_is_the_same_permutation_in_either_layout(monkeypatch):
    """channels_last in, channels_last out (no conversion to NCHW inside each unit), with the
    NCHW form's values and gradients exactly; a whole channels_last ShuffleNetV2 gives the
    outputs and, up to float rounding, the gradients it gave with the NCHW form inside."""
    from search_spaces import shufflenet

    x = torch.randn(3, 12, 5, 4)
    ref = shufflenet.channel_shuffle(x)  # the NCHW form
    assert torch.equal(ref[:, 1], x[:, 6]) and torch.equal(ref[:, 2], x[:, 1])
    cl = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    out = shufflenet.channel_shuffle(cl)
    assert out.is_contiguous(memory_format=torch.channels_last) and torch.equal(out, ref)
    g = torch.randn_like(ref)
    out.backward(g)
    plain = x.clone().requires_grad_()
    shufflenet.channel_shuffle(plain).backward(g)
    assert torch.equal(cl.grad, plain.grad)

    def nchw_form(t, groups=2):
        n, c, h, w = t.shape
        return t.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)
    space = get_space("shufflenet")
    spec = space.preset("shufflenetv2_half", in_channels=3, num_classes=10, input_size=16)
    xb = torch.randn(4, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    runs = []
    for form in (None, nchw_form):
        if form is not None:
            monkeypatch.setattr(shufflenet, "channel_shuffle", form)
        torch.manual_seed(0)
        model = space.build(spec).to(memory_format=torch.channels_last)
        y = model(xb)
        y.square().mean().backward()
        runs.append((y.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])))
    assert torch.equal(runs[0][0], runs[1][0])
    assert torch.allclose(runs[0][1], runs[1][1], rtol=1e-4, atol=1e-7)


def test_params_of_gives_the_draw_that_builds_a_preset_or_none_outside_the_grid():
    from optuna.trial import FixedTrial

    from search_spaces import get_space, spec_id

    space = get_space("all")
    shape = dict(in_channels=3, num_classes=10, input_size=32)
    for fam, name in (("resnet", "resnet20"), ("shufflenet", "shufflenetv2_half"),
                      ("mobilenet", "mobilenetv2")):
        spec = space.members[fam].preset(name, **shape)
        params = space.params_of(spec, 32)
        assert params["family"] == fam
        again = space.sample(FixedTrial(params), **shape)
        assert space.build(again).state_dict().keys() == space.build(spec).state_dict().keys()
        assert spec_id({"block": "basic", **spec} if fam == "resnet" else spec) == \
            spec_id(again)
    # MobileNetV2 x0.5 keeps a 1280-wide head that the space's x0.5 draws do not have
    assert space.params_of(space.members["mobilenet"].preset("mobilenetv2_half", **shape),
                           32) is None
    assert space.params_of(space.members["resnet"].preset("resnet8x4", **shape), 32) is None
