from __future__ import annotations

import pytest
import torch
import torchvision

from kdnas.data import load_data
from kdnas.errors import KdnasError
from kdnas.teacher import check_against_data, find_stage_taps, load_teacher, select_taps


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


def test_teacher_layers_override(digits_teacher):
    t = load_teacher(digits_teacher, layers=["stages.1.0", "stages.2"])
    assert [(x.module, x.channels, x.stride) for x in t.taps] == [("stages.1.0", 32, 2),
                                                                   ("stages.2", 64, 4)]
    with pytest.raises(KdnasError, match="has no layer"):
        load_teacher(digits_teacher, layers=["nope"])
    with pytest.raises(KdnasError, match="4-d feature map"):
        select_taps(t.module, t.taps, ["fc"], t.input_shape)


def test_checkpoint_round_trip(digits_teacher, digits):
    t = load_teacher(digits_teacher)
    assert t.input_shape == (1, 8, 8) and t.num_classes == 10 and t.data == "digits"
    assert [x.module for x in t.taps] == ["stages.0", "stages.1", "stages.2"]
    assert t.meta["split"] == {"val_fraction": 0.2, "seed": 0}
    check_against_data(t, digits)
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
    with pytest.raises(KdnasError, match="not a kdnas teacher checkpoint"):
        load_teacher(sd)


def test_pickled_module_is_not_unpickled(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(torch.nn.Sequential(torch.nn.Linear(2, 2)), path)
    with pytest.raises(KdnasError, match="unpickling runs code"):
        load_teacher(path)


def test_mismatched_data_is_refused_naming_both_sides(digits_teacher, cifar_subset):
    t = load_teacher(digits_teacher)
    with pytest.raises(KdnasError, match=r"\(1, 8, 8\).*\(3, 32, 32\)"):
        check_against_data(t, load_data(f"imagefolder:{cifar_subset}"))
    five = load_data("digits")
    five.classes = five.classes[:5]
    with pytest.raises(KdnasError, match="10 classes.*has 5"):
        check_against_data(t, five)
