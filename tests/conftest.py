"""Shared fixtures: real small data (digits, a seeded CIFAR-10 subset) and tiny teachers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kdnas.bench.workload import make_subset  # the benchmarks' seeded subset

ROOT = Path(__file__).resolve().parent.parent
CIFAR_ARCHIVE = Path(os.environ.get(
    "KDNAS_CIFAR10_JPG", ROOT.parent / "shared" / "datasets" / "cifar10-jpg.tar.gz"))


if os.environ.get("PYTEST_XDIST_WORKER"):  # tests run side by side: a core each
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    import kdnas.device

    # and a search a test starts plans one worker of one thread (--workers auto would read
    # the other test process as a busy core, or start helpers beside it): a test that wants
    # several workers names them, and the plan's own tests set the free cores they test
    kdnas.device.free_cores = lambda: 1


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Keep kdnas' cache (decoded data, demo teacher) inside the test's temporary folder."""
    old = os.environ.get("KDNAS_CACHE")
    os.environ["KDNAS_CACHE"] = str(tmp_path_factory.mktemp("kdnas-cache"))
    yield
    if old is None:
        os.environ.pop("KDNAS_CACHE", None)
    else:
        os.environ["KDNAS_CACHE"] = old


@pytest.fixture(scope="session")
def digits():
    from kdnas.data import load_data

    return load_data("digits", val_fraction=0.2)


@pytest.fixture(scope="session")
def cifar_subset(tmp_path_factory) -> Path:
    """An ImageFolder tree of real CIFAR-10 JPEGs: 200 train and 50 test images a class,
    chosen with a fixed seed (the archive lists files class by class)."""
    if not CIFAR_ARCHIVE.exists():
        pytest.skip(f"CIFAR-10 archive not found at {CIFAR_ARCHIVE} (set KDNAS_CIFAR10_JPG)")
    return make_subset(CIFAR_ARCHIVE, tmp_path_factory.mktemp("cifar-subset"), 200, 50, seed=0)


@pytest.fixture(scope="session")
def digits_teacher(tmp_path_factory) -> Path:
    """A resnet14 teacher trained on digits (about 10 s), as `kdnas teacher train` makes it."""
    from kdnas.teacher.train import train_teacher

    path = tmp_path_factory.mktemp("teacher") / "digits-resnet14.pt"
    _, acc = train_teacher("digits", "resnet14", epochs=15, out=path, val_fraction=0.2)
    assert acc > 0.85, acc
    return path


@pytest.fixture
def teacher_and_data(digits, digits_teacher):
    """The digits teacher, attached to digits fed with its normalisation."""
    from kdnas.teacher import attach_to_data, load_teacher

    teacher = load_teacher(digits_teacher)
    data = digits.with_normalization(teacher.mean, teacher.std)
    attach_to_data(teacher, data)
    return teacher, data


@pytest.fixture
def search_cfg(tmp_path, digits_teacher):
    """A small digits study under 0.5M MACs (no latency, no noise check, no references) in
    ``tmp_path``: tests replace the settings they vary."""
    from kdnas.core.settings import SearchConfig

    return SearchConfig(study="r", teacher=str(digits_teacher), data="digits",
                        budget="0.5MFLOPs", trials=3, steps=60, val_fraction=0.2,
                        workdir=str(tmp_path / "runs"), reports=str(tmp_path / "reports"),
                        latency=False, noise_check=False, references=("none",))
