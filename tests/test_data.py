from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from kdnas.data import load_data
from kdnas.core.errors import KdnasError


def test_digits_splits_are_seeded_and_disjoint(digits):
    again = load_data("digits", val_fraction=0.2)
    assert torch.equal(digits.val_x, again.val_x) and torch.equal(digits.val_y, again.val_y)
    assert digits.input_shape == (1, 8, 8) and digits.num_classes == 10
    n = len(digits.train_y) + len(digits.val_y) + len(digits.test_y)
    assert n == 1797
    assert len(digits.val_y) == round(0.2 * (len(digits.train_y) + len(digits.val_y)))
    rows = {tuple(x.flatten().tolist()) for x in digits.train_x}
    # carved, not copied: (almost) no val image is also a train image (digits has a few
    # duplicate images of its own)
    dup = sum(tuple(x.flatten().tolist()) in rows for x in digits.val_x)
    assert dup <= 3


def test_another_split_seed_carves_another_split():
    a, b = load_data("digits", seed=0), load_data("digits", seed=1)
    assert not torch.equal(a.val_y, b.val_y)


def test_batches_are_normalised_channels_last(digits):
    x, y, idx = next(digits.batches("train", 64, shuffle=True, augment=True, seed=0))
    assert x.dtype == torch.float32 and x.shape == (64, 1, 8, 8)
    assert x.is_contiguous(memory_format=torch.channels_last)
    full = digits.normalize(digits.train_x)
    assert abs(float(full.mean())) < 0.05 and abs(float(full.std()) - 1) < 0.05
    assert torch.equal(y, digits.train_y[idx])


def test_augment_crops_and_flips_within_the_padded_image(digits):
    d = digits.with_normalization(digits.mean, digits.std)
    d.flip, d.pad = True, 2
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.uint8).view(2, 1, 4, 4)
    out = d.augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    d.pad = 0
    flipped = d.augment(x, torch.Generator().manual_seed(0))
    for a, b in zip(flipped, x, strict=True):
        assert torch.equal(a, b) or torch.equal(a, b.flip(-1))


def test_crop_and_flip_take_each_images_own_window_pixel_for_pixel(digits):
    """The batched crop and flip against cutting each image's window out of its padded copy
    one by one (and the no-op without padding or flips)."""
    d = digits.with_normalization(digits.mean, digits.std)
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (9, 3, 6, 5), dtype=torch.uint8, generator=g)
    for pad, flip in ((2, True), (2, False), (0, True), (0, False)):
        d.pad, d.flip = pad, flip
        dy, dx, fl = d._draws(len(x), g)
        got = d._crop_flip(x, dy, dx, fl)
        padded = torch.nn.functional.pad(x, (pad,) * 4)
        for i in range(len(x)):
            want = padded[i, :, dy[i]:dy[i] + 6, dx[i]:dx[i] + 5]
            assert torch.equal(got[i], want.flip(-1) if fl[i] else want), (pad, flip, i)
        assert got.is_contiguous(memory_format=torch.channels_last) or not (pad or flip)


def test_a_pass_drawn_at_once_gives_the_batches_drawn_one_by_one(digits):
    """batches() draws a whole pass's order and augmentation before the first batch (one copy
    to a GPU); the batches are those of drawing batch by batch from the same generator, so a
    seed keeps its data order and every teacher cache stays valid."""
    d = digits.with_normalization(digits.mean, digits.std)
    d.pad = 2
    g = torch.Generator().manual_seed(5)
    order = torch.randperm(len(d.train_y), generator=g)
    got = list(d.batches("train", 100, shuffle=True, augment=True, seed=5))
    assert len(got) == -(-len(order) // 100)
    for k, (x, y, idx) in enumerate(got):
        want = order[100 * k:100 * (k + 1)]
        assert torch.equal(idx, want) and torch.equal(y, d.train_y[want])
        assert torch.equal(x, d.normalize(d.augment(d.train_x[want], g)))


def test_imagefolder_of_real_cifar_images(cifar_subset):
    d = load_data(f"imagefolder:{cifar_subset}")
    assert d.input_shape == (3, 32, 32)
    assert d.classes[:3] == ["airplane", "automobile", "bird"]
    assert len(d.train_y) + len(d.val_y) == 2000 and len(d.test_y) == 500
    assert torch.bincount(d.test_y).tolist() == [50] * 10
    # second load comes from the cache and is identical
    again = load_data(f"imagefolder:{cifar_subset}")
    assert torch.equal(again.train_x, d.train_x) and again.digest() == d.digest()


def test_cifar10_python_layout(cifar_subset, tmp_path):
    """Write torchvision's cifar-10-batches-py layout from real images, read it back."""
    src = load_data(f"imagefolder:{cifar_subset}")
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    x = torch.cat([src.train_x, src.val_x]).numpy()
    y = torch.cat([src.train_y, src.val_y]).numpy()
    for i, part in enumerate(np.array_split(np.arange(len(y)), 5), 1):
        with open(root / f"data_batch_{i}", "wb") as fh:
            pickle.dump({"data": x[part].reshape(len(part), -1), "labels": y[part].tolist()}, fh)
    with open(root / "test_batch", "wb") as fh:
        pickle.dump({"data": src.test_x.numpy().reshape(len(src.test_y), -1),
                     "labels": src.test_y.tolist()}, fh)
    with open(root / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": src.classes}, fh)
    d = load_data(f"cifar10:{tmp_path}")
    assert d.classes == src.classes and d.input_shape == (3, 32, 32)
    assert torch.equal(d.test_x, src.test_x)
    assert sorted(torch.cat([d.train_y, d.val_y]).tolist()) == sorted(y.tolist())


@pytest.mark.parametrize("spec,needle", [
    ("mnist", "digits, cifar10:PATH or imagefolder:PATH"),
    ("cifar10", "needs a path"),
    ("cifar10:/no/such/folder", "does not exist"),
    ("imagefolder:/no/such/folder", "does not exist"),
])
def test_bad_data_specs_say_what_to_do(spec, needle):
    with pytest.raises(KdnasError, match=needle):
        load_data(spec)


def test_folder_that_is_not_a_dataset(tmp_path):
    (tmp_path / "junk.txt").write_text("x")
    with pytest.raises(KdnasError, match="not torchvision's CIFAR-10 layout"):
        load_data(f"cifar10:{tmp_path}")
    with pytest.raises(KdnasError, match="not an ImageFolder tree"):
        load_data(f"imagefolder:{tmp_path}")


def test_digits_are_read_as_scikit_learn_loads_them():
    """The embedded default is read from scikit-learn's own file without importing it: the
    same images and labels as ``load_digits``."""
    import numpy as np
    from sklearn.datasets import load_digits

    from kdnas.data import _digits_arrays

    images, labels = _digits_arrays()
    d = load_digits()
    assert images.shape == (1797, 8, 8)
    assert np.array_equal(images, d.images) and np.array_equal(labels, d.target)
