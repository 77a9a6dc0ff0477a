from __future__ import annotations

import pytest
import torch
import torchvision

from kdnas.data import load_data
from kdnas.core.errors import KdnasError
from kdnas.teacher import attach_to_data, find_stage_taps, load_teacher, select_taps


def test_stage_taps_of_torchvision_resnet18():
    taps = find_stage_taps(torchvision.models.resnet18(num_classes=10), (3, 64, 64))
    assert [t.module for t in taps] == ["relu", "layer1", "layer2", "layer3", "layer4"]
    assert [t.channels for t in taps] == [64, 64, 128, 256, 512]
    assert [t.stride for t in taps] == [2, 4, 8, 16, 32]


def test_stage_taps_of_inverted_residual_nets_are_block_outputs():
    """Not the expansion conv that runs at the old resolution inside the next block."""
    taps = find_stage_taps(torchvision.models.mobilenet_v2(num_classes=10), (3, 64, 64))
    assert [(t.module, t.channels) for t in taps] == [
        ("features.1", 16), ("features.3", 24), ("features.6", 32), ("features.13", 96),
        ("features.18", 1280)]
    taps = find_stage_taps(torchvision.models.efficientnet_b0(num_classes=10), (3, 64, 64))
    # squeeze-excitation pools inside the blocks do not hide the stage boundaries
    assert [t.module for t in taps] == ["features.1", "features.2", "features.3", "features.5",
                                        "features.8"]


def test_stage_taps_skip_upsampling_pools():
    taps = find_stage_taps(torchvision.models.vgg11(num_classes=10), (3, 32, 32))
    strides = [t.stride for t in taps]
    assert strides == sorted(strides) and "avgpool" not in [t.module for t in taps]


def test_teacher_layers_override(digits_teacher, digits):
    t = load_teacher(digits_teacher, layers=["stages.1.0", "stages.2"])
    attach_to_data(t, digits)
    assert [(x.module, x.channels, x.stride) for x in t.taps] == [("stages.1.0", 32, 2),
                                                                   ("stages.2", 64, 4)]
    with pytest.raises(KdnasError, match="has no layer"):
        attach_to_data(load_teacher(digits_teacher, layers=["nope"]), digits)
    with pytest.raises(KdnasError, match="4-d feature map"):
        select_taps(t.module, t.taps, ["fc"], t.input_shape)


def test_checkpoint_round_trip(digits_teacher, digits):
    t = load_teacher(digits_teacher)
    assert t.input_shape == (1, 8, 8) and t.num_classes == 10 and t.data == "digits"
    assert t.meta["split"] == {"val_fraction": 0.2, "seed": 0}
    attach_to_data(t, digits)
    assert [x.module for x in t.taps] == ["stages.0", "stages.1", "stages.2"]
    from kdnas.distill import evaluate

    acc = evaluate(t.module, digits.with_normalization(t.mean, t.std), "val")
    assert acc == pytest.approx(t.meta["val_accuracy"], abs=1e-9)


def test_missing_and_foreign_files_are_refused(tmp_path):
    with pytest.raises(KdnasError, match="does not exist"):
        load_teacher(tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(KdnasError, match="cannot read"):
        load_teacher(junk)
    sd = tmp_path / "sd.pt"
    torch.save(torchvision.models.resnet18().state_dict(), sd)
    with pytest.raises(KdnasError, match="is a state_dict.*--teacher-arch"):
        load_teacher(sd)


def test_pickled_module_is_not_unpickled(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(torch.nn.Sequential(torch.nn.Linear(2, 2)), path)
    with pytest.raises(KdnasError, match="Unpickling runs code.*--trust-pickle"):
        load_teacher(path)


def test_mismatched_data_is_refused_naming_both_sides(digits_teacher, cifar_subset):
    t = load_teacher(digits_teacher)
    with pytest.raises(KdnasError, match=r"\(1, 8, 8\).*\(3, 32, 32\)"):
        attach_to_data(t, load_data(f"imagefolder:{cifar_subset}"))
    five = load_data("digits")
    five.classes = five.classes[:5]
    with pytest.raises(KdnasError, match="10 classes.*has 5"):
        attach_to_data(t, five)


# --------------------------------------------------------------------------- foreign formats
@pytest.fixture(scope="module")
def digits_module(digits_teacher):
    """The digits teacher as a plain module, to save in other formats."""
    return load_teacher(digits_teacher).module.eval()


def _attach(t, digits):
    from kdnas.teacher import attach_to_data

    return attach_to_data(t, digits)


def test_torchvision_state_dict(tmp_path, cifar_subset):
    data = load_data(f"imagefolder:{cifar_subset}")
    path = tmp_path / "r18.pt"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), path)
    for t in (load_teacher(path, arch="resnet18"), load_teacher(f"torchvision:resnet18:{path}")):
        _attach(t, data)
        assert t.num_classes == 10 and t.input_shape == (3, 32, 32)
        # at 32 px layer4 is 1x1, indistinguishable from global pooling: no stage
        assert [x.module for x in t.taps] == ["relu", "layer1", "layer2", "layer3"]
    with pytest.raises(KdnasError, match="not a torchvision model"):
        load_teacher(path, arch="resnet999")
    wide = tmp_path / "r18-100.pt"
    torch.save(torchvision.models.resnet18(num_classes=100).state_dict(), wide)
    with pytest.raises(KdnasError, match="predicts 100 classes but data .* has 10"):
        _attach(load_teacher(wide, arch="resnet18"), data)
    with pytest.raises(KdnasError, match="do not fit"):
        load_teacher(path, arch="mobilenet_v2")


def test_user_class_state_dict(tmp_path, digits, digits_module):
    code = tmp_path / "mynet.py"
    code.write_text(
        "from search_spaces import get_space\n"
        "def Net(num_classes=10):\n"
        "    s = get_space('resnet')\n"
        "    return s.build(s.preset('resnet14', in_channels=1, num_classes=num_classes,"
        " input_size=8))\n")
    path = tmp_path / "w.pt"
    torch.save(digits_module.state_dict(), path)
    t = load_teacher(path, arch=f"{code}:Net", num_classes=10)
    _attach(t, digits.with_normalization((0.3,), (0.37,)))
    assert [x.module for x in t.taps] == ["stages.0", "stages.1", "stages.2"]
    with pytest.raises(KdnasError, match="cannot import"):
        load_teacher(path, arch="no_such_pkg.models:Net")


@pytest.mark.parametrize("fmt", ["export", "torchscript"])
def test_graph_formats_fall_back_to_logit_distillation(tmp_path, digits, digits_module, fmt):
    from kdnas.core.settings import TrainConfig
    from kdnas.distill import evaluate, fit

    x = torch.zeros(2, 1, 8, 8)
    if fmt == "export":
        path = tmp_path / "t.pt2"
        torch.export.save(torch.export.export(digits_module, (x,)), path)
    else:
        path = tmp_path / "t.ts"
        torch.jit.save(torch.jit.trace(digits_module, x), path)
    t = load_teacher(path)
    notes = _attach(t, digits)
    assert t.taps == [] and "logit" in notes[0]
    plain = digits.with_normalization(digits.mean, digits.std)
    assert evaluate(t.module, plain, channels_last=False) > 0.8
    space = __import__("search_spaces").get_space("resnet")
    spec = space.preset("resnet8", in_channels=1, num_classes=10, input_size=8)
    student = space.build(spec)
    r = fit(student, plain, TrainConfig(epochs=0.2, kd="feature"), teacher=t,
            student_taps=space.taps(spec))
    assert 0 <= r.val_accuracy <= 1
    with pytest.raises(KdnasError, match="needs module structure"):
        t2 = load_teacher(path, layers=["stages.0"])
        _attach(t2, digits)


def test_pickle_loads_only_when_trusted(tmp_path, digits, digits_module):
    path = tmp_path / "whole.pt"
    torch.save(digits_module, path)
    with pytest.raises(KdnasError, match="--trust-pickle"):
        load_teacher(path)
    t = load_teacher(path, trust_pickle=True)
    _attach(t, digits)
    assert t.num_classes == 10 and len(t.taps) == 3


def test_wrong_input_size_is_refused_before_training(tmp_path, cifar_subset, digits_module):
    path = tmp_path / "whole.pt"
    torch.save(digits_module, path)
    with pytest.raises(KdnasError, match=r"cannot take the data's images of shape \(3, 32, 32\)"):
        _attach(load_teacher(path, trust_pickle=True),
                load_data(f"imagefolder:{cifar_subset}"))


@pytest.mark.parametrize("text,channels,mean,std", [
    ("imagenet", 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ("none", 1, (0.0,), (1.0,)),
    ("0.5,0.25", 3, (0.5,) * 3, (0.25,) * 3),
    ("0.1,0.2,0.3:0.4,0.5,0.6", 3, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6)),
])
def test_parse_normalize(text, channels, mean, std):
    from kdnas.data import parse_normalize

    assert parse_normalize(text, channels) == (mean, std)


@pytest.mark.parametrize("text", ["imagenet1k", "0.1,0.2,0.3", "1,2:3"])
def test_parse_normalize_rejects(text):
    from kdnas.data import parse_normalize

    with pytest.raises(KdnasError):
        parse_normalize(text, 3 if text != "imagenet1k" else 1)


class _ViewNet(torch.nn.Module):
    """A teacher as many are written: it flattens with ``.view``, which channels_last
    feature maps refuse."""

    def __init__(self, channels: int = 1, classes: int = 10, size: int = 8) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(channels, 16, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(16, 32, 3, stride=2, padding=1), torch.nn.ReLU())
        self.fc = torch.nn.Linear(32 * (size // 2) ** 2, classes)

    def forward(self, x):
        x = self.features(x)
        return self.fc(x.view(x.size(0), -1))


class _InPlaceNet(_ViewNet):
    """Scales its input in place before using it (and flattens with flatten: layout-safe)."""

    def forward(self, x):
        x.mul_(0.5)
        return self.fc(torch.flatten(self.features(x), 1))


class _StridedFlattenNet(_ViewNet):
    """A custom flatten that reads memory in its own order: on channels_last inputs it runs,
    but gives other logits."""

    def forward(self, x):
        x = self.features(x)
        flat = x.as_strided((x.shape[0], x[0].numel()), (x[0].numel(), 1))
        return self.fc(flat)


def _teacher_of(module, digits):
    from kdnas.teacher import Teacher

    torch.manual_seed(0)
    t = Teacher(module=module.eval(), taps=[], input_shape=None, num_classes=None,
                source="test", digest="0")
    data = digits.with_normalization((0.5,), (0.25,))
    notes = attach_to_data(t, data)
    return t, data, notes


@pytest.mark.parametrize("cls, fed_channels_last, why", [
    (_ViewNet, False, "fails on channels_last"),
    (_StridedFlattenNet, False, "other logits"),
    (_InPlaceNet, True, None),
])
def test_teachers_are_fed_inputs_they_can_take(digits, cls, fed_channels_last, why):
    from kdnas.core.settings import TrainConfig
    from kdnas.distill import TeacherCache, evaluate, fit

    torch.manual_seed(0)
    t, data, notes = _teacher_of(cls(), digits)
    assert t.channels_last is fed_channels_last
    if why:
        assert any(why in n and "contiguous" in n for n in notes), notes
    else:
        assert not any("contiguous" in n for n in notes)
    x = next(data.batches("val", 16))[0]  # channels_last, as kdnas yields it
    kept = x.clone()
    logits = t(x)
    assert torch.equal(x, kept)  # the caller's batch is never changed
    with torch.no_grad():
        expected = cls.forward(t.module, kept.contiguous().clone())
    assert torch.allclose(logits, expected, atol=1e-5)
    assert t.copy_input is (cls is _InPlaceNet)
    assert 0 <= evaluate(t.module, data, channels_last=t.channels_last) <= 1
    # a student distils from it, features and cache included, on real images
    space = __import__("search_spaces").get_space("resnet")
    spec = space.preset("resnet8", in_channels=1, num_classes=10, input_size=8)
    cache = TeacherCache(__import__("tempfile").mkdtemp(), "k")
    for _ in range(2):  # writes the cache, then reads it
        student = space.build(spec)
        r = fit(student, data, TrainConfig(epochs=2, kd="feature"), teacher=t,
                student_taps=space.taps(spec), cache=cache)
        assert r.steps > 0 and 0.0 <= r.val_accuracy <= 1.0
    assert cache.complete and cache.hits > 0


def test_a_teacher_that_fails_either_way_is_a_clear_error(digits):
    class Broken(_ViewNet):
        def forward(self, x):
            return self.fc(x)  # wrong shape whatever the layout

    with pytest.raises(KdnasError, match=r"teacher \(Broken\) cannot take"):
        _teacher_of(Broken(), digits)


def test_untappable_stages_fall_back_to_logit_kd(digits, monkeypatch):
    import kdnas.teacher.check as check

    def broken(*_a, **_k):
        raise RuntimeError("cannot register a hook here")

    monkeypatch.setattr(check, "find_stage_taps", broken)
    t, _, notes = _teacher_of(_ViewNet(), digits)
    assert t.taps == []
    assert any("logits only" in n and "cannot register a hook" in n for n in notes)
