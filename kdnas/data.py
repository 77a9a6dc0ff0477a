"""Data sets, seeded splits, augmentation and normalisation.

Images are held in memory as uint8 tensors (N, C, H, W); batches are augmented and normalised
on the fly, in channels_last float32, which is what the trainer wants on a CPU.

Supported specs (``--data``):

* ``digits``: scikit-learn's bundled 8x8 digits (1,797 images), the embedded default.
* ``cifar10:PATH``: torchvision's CIFAR-10 layout (``PATH/cifar-10-batches-py`` or that folder).
* ``imagefolder:PATH``: ``PATH/train/<class>/*`` and ``PATH/test/<class>/*`` (or ``val/``).
  Decoded arrays are cached (see :func:`cache_dir`) so that a folder is decoded once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from kdnas.core.errors import KdnasError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


def cache_dir() -> Path:
    """Where decoded data sets and the demo teacher are cached: ``$KDNAS_CACHE`` or
    ``~/.cache/kdnas``."""
    return Path(os.environ.get("KDNAS_CACHE", Path.home() / ".cache" / "kdnas"))


@dataclass
class DataBundle:
    """Train / val / test splits as uint8 tensors, with what is needed to feed a model.

    ``val`` is carved from the training data with ``seed``; search never touches ``test``.
    """

    spec: str
    classes: list[str]
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    flip: bool = True
    pad: int = 4
    seed: int = 0
    val_fraction: float = 0.1
    _hash: str | None = field(default=None, repr=False)
    _copies: dict = field(default_factory=dict, repr=False)  # device -> this data there

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def input_size(self) -> int:
        return int(self.train_x.shape[-1])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])  # type: ignore[return-value]

    def digest(self) -> str:
        """sha1 of all images and labels (train+val+test), for manifests and cache keys."""
        if self._hash is None:
            h = hashlib.sha1()
            for t in (self.train_x, self.train_y, self.val_x, self.val_y, self.test_x,
                      self.test_y):
                h.update(t.numpy().tobytes())
            self._hash = h.hexdigest()[:16]
        return self._hash

    def with_normalization(self, mean, std) -> DataBundle:
        """The same data fed with another normalisation (a teacher's own)."""
        mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        if len(mean) != self.in_channels or len(std) != self.in_channels:
            raise KdnasError(f"normalisation has {len(mean)} means and {len(std)} stds but the "
                             f"data has {self.in_channels} channels: give one value per channel")
        if any(s <= 0 for s in std):
            raise KdnasError(f"normalisation std must be positive, got {std}")
        b = DataBundle(**{k: getattr(self, k) for k in self.__dataclass_fields__
                          if k != "_copies"})
        b.mean, b.std = mean, std
        return b

    @property
    def device(self) -> torch.device:
        return self.train_x.device

    def on(self, device: torch.device) -> DataBundle:
        """This data with its images and labels resident on ``device`` (copied once, then
        kept), or this bundle itself when it is there already or would not fit (a quarter of
        the device's free memory); batches are then moved one at a time."""
        device = torch.device(device)
        if device == self.device or device.type == "cpu":
            return self
        key = str(device)
        if key not in self._copies:
            tensors = ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")
            size = sum(getattr(self, k).nbytes for k in tensors)
            if size > 0.25 * torch.cuda.mem_get_info(device)[0]:
                log.info("data (%.0f MB) kept on the CPU: it does not fit on %s", size / 1e6,
                         device)
                self._copies[key] = self
            else:
                self.digest()  # computed on the CPU copy, kept by the device copy
                values = {k: getattr(self, k) for k in self.__dataclass_fields__
                          if k != "_copies"}
                values.update({k: getattr(self, k).to(device) for k in tensors})
                self._copies[key] = DataBundle(**values)
        return self._copies[key]

    def subset_indices(self, fraction: float, seed: int) -> torch.Tensor:
        """A seeded subset of the training split, ``fraction`` of it (at least one batch)."""
        n = len(self.train_y)
        k = max(1, min(n, int(round(n * fraction))))
        g = torch.Generator().manual_seed(seed)
        return torch.randperm(n, generator=g)[:k].sort().values

    def normalize(self, x_uint8: torch.Tensor, consts: tuple | None = None) -> torch.Tensor:
        """Float images scaled by the mean and std (``consts``: them as tensors on the images'
        device, made once by the caller), channels_last."""
        mean, std = consts or self._consts(x_uint8.device)
        x = (x_uint8.float().div_(255.0) - mean) / std
        return x.contiguous(memory_format=torch.channels_last)

    def _consts(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.tensor(self.mean, device=device).view(1, -1, 1, 1),
                torch.tensor(self.std, device=device).view(1, -1, 1, 1))

    def _draws(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, ...]:
        """A batch's random crop offsets (rows, columns) and flips, drawn from ``g`` on the CPU
        in a fixed order, so a seed gives the same batches on every device."""
        p, none = self.pad, torch.zeros(n, dtype=torch.long)
        dy = torch.randint(0, 2 * p + 1, (n,), generator=g) if p else none
        dx = torch.randint(0, 2 * p + 1, (n,), generator=g) if p else none
        flip = torch.rand(n, generator=g) < 0.5 if self.flip else none.bool()
        return dy, dx, flip

    def augment(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Random crop after zero padding by ``pad`` pixels, and random horizontal flip, drawn
        from ``g`` (on the CPU whatever the device of ``x``)."""
        return self._crop_flip(x, *(t.to(x.device) for t in self._draws(len(x), g)))

    def _crop_flip(self, x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor,
                   flip: torch.Tensor) -> torch.Tensor:
        """Each image's crop of the zero-padded image at (``dy``, ``dx``), mirrored where
        ``flip``: one gather of the pixels, the mirror folded into the columns it reads
        (0.9 ms against 2.1 for indexing and then flipping a CIFAR batch of 128 on one core;
        the same pixels), channels_last."""
        n, c, h, w = x.shape
        dev, p = x.device, self.pad
        if not p and not self.flip:
            return x
        hh, ww = h + 2 * p, w + 2 * p
        pixels = torch.nn.functional.pad(x, (p, p, p, p)).permute(0, 2, 3, 1).reshape(
            n, hh * ww, c)  # n, pixels, c
        across = torch.arange(w, device=dev).view(1, w)
        if self.flip:
            across = torch.where(flip.view(n, 1), w - 1 - across, across)
        rows = dy.view(n, 1, 1) + torch.arange(h, device=dev).view(1, h, 1)
        where = (rows * ww + (dx.view(n, 1) + across).view(n, 1, w)).view(n, h * w, 1)
        out = torch.gather(pixels, 1, where.expand(n, h * w, c))
        return out.view(n, h, w, c).permute(0, 3, 1, 2)

    def batches(self, split: str, batch_size: int, *, indices: torch.Tensor | None = None,
                shuffle: bool = False, augment: bool = False, seed: int = 0,
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Yield ``(x, y, idx)``: normalised float images, labels and their split indices
        (``idx`` on the CPU). The order and the augmentation's draws are made on the CPU for
        the whole pass and, with the data on a GPU, copied there once: a copy from pageable
        memory inside a step would wait for the device to finish the steps before it."""
        if split == "test":
            log.info("reading the test split")
        xs, ys = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
        idx = torch.arange(len(ys)) if indices is None else indices
        g = torch.Generator().manual_seed(seed)
        if shuffle:
            idx = idx[torch.randperm(len(idx), generator=g)]
        starts = range(0, len(idx), batch_size)
        draws = [self._draws(min(batch_size, len(idx) - s), g) for s in starts] if augment \
            else []
        cols = [idx, *(torch.cat(c) for c in zip(*draws, strict=True))]
        dev = xs.device
        if dev.type != "cpu":
            cols = [c.pin_memory().to(dev, non_blocking=True) for c in cols]
        consts = self._consts(dev)
        for start in starts:
            part = [c[start:start + batch_size] for c in cols]
            x = xs[part[0]]
            if augment:
                x = self._crop_flip(x, *part[1:])
            yield self.normalize(x, consts), ys[part[0]], idx[start:start + batch_size]


NAMED_NORMALIZATION = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}


def parse_normalize(text: str, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``--normalize``: ``imagenet``, ``cifar10``, ``none`` (mean 0, std 1), ``M1,M2,M3:S1,S2,S3``
    or ``MEAN,STD`` (one value each, for every channel)."""
    t = text.strip().lower()
    if t == "none":
        return (0.0,) * channels, (1.0,) * channels
    if t in NAMED_NORMALIZATION:
        mean, std = NAMED_NORMALIZATION[t]
        if len(mean) != channels:
            raise KdnasError(f"--normalize {t} is for 3 channels but the data has {channels}")
        return mean, std
    try:
        if ":" in t:
            m, _, sd = t.partition(":")
            mean = tuple(float(v) for v in m.split(","))
            std = tuple(float(v) for v in sd.split(","))
        else:
            vals = [float(v) for v in t.split(",")]
            if len(vals) != 2:
                raise ValueError
            mean, std = (vals[0],) * channels, (vals[1],) * channels
    except ValueError:
        raise KdnasError(f"cannot read --normalize {text!r}: write imagenet, cifar10, none, "
                         "MEAN,STD or M1,M2,M3:S1,S2,S3 (pixels scaled to [0, 1])") from None
    if len(mean) == 1:
        mean, std = mean * channels, std * channels
    if len(mean) != channels or len(std) != channels:
        raise KdnasError(f"--normalize gives {len(mean)} means and {len(std)} stds but the data "
                         f"has {channels} channels")
    return mean, std


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The training and validation indices kdnas carves from ``n`` training images (in the
    order the loader lists them: class folders sorted, files sorted within each)."""
    if not 0 < val_fraction < 1:
        raise KdnasError(f"val fraction must be between 0 and 1, got {val_fraction}")
    perm = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(n * val_fraction)))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _split(x: np.ndarray, y: np.ndarray, val_fraction: float, seed: int):
    train, val = split_indices(len(y), val_fraction, seed)
    return x[train], y[train], x[val], y[val]


def _bundle(spec, classes, x_train, y_train, x_test, y_test, *, val_fraction, seed, flip, pad):
    if x_train.ndim != 4 or len(x_train) == 0:
        raise KdnasError(f"data {spec!r} holds no training images")
    tx, ty, vx, vy = _split(x_train, y_train, val_fraction, seed)
    mean, std = [], []
    for c in range(tx.shape[1]):
        f = tx[:, c].astype(np.float32) / 255.0
        mean.append(float(f.mean(dtype=np.float64)))
        std.append(max(float(f.std(dtype=np.float64)), 1e-3))
    t = torch.from_numpy
    return DataBundle(spec=spec, classes=list(classes),
                      train_x=t(np.ascontiguousarray(tx)), train_y=t(ty.astype(np.int64)),
                      val_x=t(np.ascontiguousarray(vx)), val_y=t(vy.astype(np.int64)),
                      test_x=t(np.ascontiguousarray(x_test)), test_y=t(y_test.astype(np.int64)),
                      mean=tuple(mean), std=tuple(std), flip=flip, pad=pad, seed=seed,
                      val_fraction=val_fraction)


def load_data(spec: str, *, val_fraction: float = 0.1, seed: int = 0,
              image_size: int | None = None) -> DataBundle:
    """Load a data set from a spec string (see the module docstring)."""
    kind, _, path = (spec or "").partition(":")
    kind = kind.strip().lower()
    if kind == "digits":
        return _load_digits(val_fraction, seed)
    if kind in ("cifar10", "imagefolder"):
        if not path:
            raise KdnasError(f"--data {spec!r} needs a path, e.g. {kind}:/data/{kind}")
        p = Path(path).expanduser()
        if not p.exists():
            raise KdnasError(f"data folder {str(p)!r} does not exist: check the path in "
                             f"--data {spec}")
        loader = _load_cifar10 if kind == "cifar10" else _load_imagefolder
        x_train, y_train, x_test, y_test, classes, flip, pad = loader(p, image_size)
        return _bundle(spec, classes, x_train, y_train, x_test, y_test,
                       val_fraction=val_fraction, seed=seed, flip=flip, pad=pad)
    raise KdnasError(f"cannot read data spec {spec!r}: use digits, cifar10:PATH or "
                     "imagefolder:PATH")


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as (images N,8,8 in 0..16, labels). Read from the file it ships
    (what ``load_digits`` reads) without importing scikit-learn, which takes about a second
    of every worker's start; through ``load_digits`` where the file is not found."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / \
        "digits.csv.gz" if spec and spec.submodule_search_locations else None
    if path is None or not path.is_file():
        from sklearn.datasets import load_digits

        d = load_digits()
        return d.images, d.target
    table = np.loadtxt(path, delimiter=",")
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(int)


def _load_digits(val_fraction: float, seed: int) -> DataBundle:
    images, target = _digits_arrays()
    x = np.round(images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # N,1,8,8
    y = target.astype(np.int64)
    # digits ships no test split: hold out a seeded 20% as test, then carve val from the rest
    perm = np.random.default_rng(12345).permutation(len(y))
    n_test = int(round(0.2 * len(y)))
    test, train = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    return _bundle("digits", [str(i) for i in range(10)], x[train], y[train], x[test], y[test],
                   val_fraction=val_fraction, seed=seed, flip=False, pad=1)


def _load_cifar10(path: Path, image_size: int | None):
    root = path / "cifar-10-batches-py" if (path / "cifar-10-batches-py").is_dir() else path
    files = [root / f"data_batch_{i}" for i in range(1, 6)]
    missing = [f.name for f in files + [root / "test_batch"] if not f.exists()]
    if missing:
        raise KdnasError(f"{root} is not torchvision's CIFAR-10 layout: missing {missing}. "
                         "Point cifar10: at the folder holding cifar-10-batches-py, or use "
                         "imagefolder:PATH for a folder of images")

    def read(f: Path):
        with open(f, "rb") as fh:
            d = pickle.load(fh, encoding="latin1")
        return (np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32),
                np.asarray(d["labels"], dtype=np.int64))

    parts = [read(f) for f in files]
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    x_test, y_test = read(root / "test_batch")
    classes = [str(i) for i in range(10)]
    meta = root / "batches.meta"
    if meta.exists():
        with open(meta, "rb") as fh:
            classes = list(pickle.load(fh, encoding="latin1")["label_names"])
    return x_train, y_train, x_test, y_test, classes, True, 4


def _list_images(split_dir: Path, classes: list[str]) -> list[tuple[Path, int]]:
    items = []
    for label, cls in enumerate(classes):
        d = split_dir / cls
        if d.is_dir():
            items += [(f, label) for f in sorted(d.iterdir())
                      if f.suffix.lower() in IMAGE_EXTENSIONS]
    return items


def _load_imagefolder(path: Path, image_size: int | None):
    train_dir = path / "train"
    test_dir = next((path / s for s in ("test", "val") if (path / s).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise KdnasError(f"{path} is not an ImageFolder tree: expected {path}/train/<class>/… "
                         f"and {path}/test/<class>/… (or val/)")
    classes = sorted(d.name for d in train_dir.iterdir() if d.is_dir())
    if not classes:
        raise KdnasError(f"{train_dir} has no class folders: put images in train/<class>/")
    test_classes = sorted(d.name for d in test_dir.iterdir() if d.is_dir())
    if test_classes != classes:
        only_train = sorted(set(classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(classes))
        raise KdnasError(f"the class folders of {train_dir} and {test_dir} differ (only in "
                         f"train: {only_train or 'none'}; only in {test_dir.name}: "
                         f"{only_test or 'none'}): labels would not match; give both splits "
                         "the same class folders")
    train_items = _list_images(train_dir, classes)
    test_items = _list_images(test_dir, classes)
    if not train_items or not test_items:
        raise KdnasError(f"no images found under {train_dir} or {test_dir} "
                         f"(extensions: {', '.join(IMAGE_EXTENSIONS)})")
    key = hashlib.sha1(repr((str(path.resolve()), image_size, len(train_items),
                             len(test_items), [(str(f), f.stat().st_size)
                                               for f, _ in train_items[:: 97] + test_items[:: 97]]
                             )).encode()).hexdigest()[:16]
    cached = cache_dir() / "data" / f"imagefolder-{key}.npz"
    if cached.exists():
        z = np.load(cached)
        arrays = [z[k] for k in ("x_train", "y_train", "x_test", "y_test")]
    else:
        log.info("decoding %d images from %s (cached in %s afterwards)",
                 len(train_items) + len(test_items), path, cached)
        x_train, y_train = _decode(train_items, image_size)
        size = image_size or x_train.shape[-1]
        x_test, y_test = _decode(test_items, size)
        arrays = [x_train, y_train, x_test, y_test]
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp.npz")
        np.savez(tmp, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
        os.replace(tmp, cached)
    return (*arrays, classes, True, max(1, arrays[0].shape[-1] // 8))


def _decode(items: list[tuple[Path, int]], size: int | None):
    from PIL import Image

    with Image.open(items[0][0]) as im:
        mode = "L" if im.mode in ("L", "1", "I;16", "I") else "RGB"
        size = size or im.size[0]
    channels = 1 if mode == "L" else 3
    x = np.empty((len(items), channels, size, size), dtype=np.uint8)
    y = np.empty(len(items), dtype=np.int64)
    for i, (f, label) in enumerate(items):
        with Image.open(f) as im:
            im = im.convert(mode)
            if im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            a = np.asarray(im, dtype=np.uint8)
        x[i] = a[None] if channels == 1 else a.transpose(2, 0, 1)
        y[i] = label
    return x, y
