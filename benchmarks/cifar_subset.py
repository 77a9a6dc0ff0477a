"""What the benchmark scripts share: real CIFAR-10 images from the shared archive."""

from __future__ import annotations

import random
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARCHIVE = ROOT.parent / "shared" / "datasets" / "cifar10-jpg.tar.gz"


def make_subset(archive: Path, out: Path, per_class: int | None, test_per_class: int | None,
                seed: int = 0) -> Path:
    """An ImageFolder tree (train/, test/) of CIFAR-10 JPEGs from ``archive``: every image, or
    ``per_class`` training and ``test_per_class`` test images a class chosen with a fixed seed.
    Written once; ``out/DONE`` marks a finished tree."""
    if (out / "DONE").exists():
        return out
    with tarfile.open(archive) as tar:
        names = [m.name for m in tar if m.isfile() and m.name.endswith(".jpg")]
    groups: dict[tuple[str, str], list[str]] = {}
    for name in names:
        split, cls = Path(name).parts[-3:-1]
        groups.setdefault((split, cls), []).append(name)
    rng = random.Random(seed)
    want = {"train": per_class, "test": test_per_class}
    chosen = {n for (split, _), ms in sorted(groups.items()) if split in want
              for n in (sorted(ms) if want[split] is None
                        else rng.sample(sorted(ms), want[split]))}
    with tarfile.open(archive) as tar:
        for m in tar:
            if m.name in chosen:
                split, cls, fname = Path(m.name).parts[-3:]
                dest = out / split / cls / fname
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(tar.extractfile(m).read())
    (out / "DONE").write_text("ok")
    return out
