"""The teacher cache: the teacher's logits and stage features for every step of the brief
recipe, computed once per study and read back by every later trial."""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from pathlib import Path

import torch

log = logging.getLogger(__name__)

DISK_SHARE = 0.5  # with no --cache-limit, a cache may take this share of the free disk
RESIDENT_SHARE = 0.25  # a complete cache moves to a GPU when it takes at most this share of
# the GPU's free memory (the data set follows the same rule)
_RESIDENT: dict[tuple, dict[int, dict]] = {}  # one cache on one device at a time


def disk_limit(path: Path) -> int:
    """The largest cache the machine takes where ``path`` will be: DISK_SHARE of the free
    space of its file system (read when a cache is about to be written; the cache is read
    memory-mapped, so RAM and GPU memory bound only its residency, RESIDENT_SHARE)."""
    path = Path(path).resolve()
    while not path.exists():
        path = path.parent
    return int(DISK_SHARE * shutil.disk_usage(path).free)


class TeacherCache:
    """Teacher logits and stage features for every step of the brief recipe, computed once.

    Every trial of a study trains on the same batches in the same order (data order and
    augmentation depend only on the seed and the epoch), so the teacher's outputs are computed
    during the first trial and read back by every later one instead of running the teacher.
    One worker writes it (a file lock); the others run the teacher until it is complete.
    Each step is one file of fp16 tensors, loaded memory-mapped. A cache becomes usable only
    when the trial that wrote it finished every step (an atomic rename), so an interrupted
    trial leaves nothing half-written behind.
    """

    def __init__(self, root: str | Path, key: str, *, limit_bytes: int | None = None,
                 features: bool = True) -> None:
        self.dir = Path(root) / key
        self.limit_bytes = limit_bytes
        # False: logits only, for a study whose method never reads the stage features (a
        # logit method): a few MB on CIFAR-10 instead of GB, so it fits any --cache-limit
        self.features = features
        self._tmp: Path | None = None
        self._lock = None
        self.hits = self.writes = 0
        self._resident: dict[int, dict] | None = None

    @property
    def complete(self) -> bool:
        return (self.dir / "COMPLETE").exists()

    def get(self, step: int, *, features: bool = True
            ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits (float32) and, if asked, stage features (fp16, memory-mapped, in the
        teacher's memory layout: the losses read them without a conversion pass)."""
        if self._resident is not None:
            d = self._resident[step]
        else:
            d = torch.load(self.dir / f"{step:06d}.pt", mmap=True, weights_only=True)
        self.hits += 1
        return d["logits"].float(), list(d["feats"]) if features else []

    def to_device(self, device: torch.device) -> bool:
        """On a GPU, keep the complete cache in its memory, read once from disk for the
        whole process (every later trial of the study reads it there): when it takes at most
        :data:`RESIDENT_SHARE` of the GPU's free memory. Returns whether it is resident."""
        if device.type != "cuda" or not self.complete:
            return False
        free, _ = torch.cuda.mem_get_info(device)
        return self.load_resident(device, free)

    def load_resident(self, device: torch.device, free_bytes: int) -> bool:
        """:meth:`to_device` with the free memory given: every step's tensors on ``device``
        unless they take more than :data:`RESIDENT_SHARE` of ``free_bytes``."""
        done = (self.dir / "COMPLETE").stat()  # a cache written again is another cache
        key = (str(self.dir.resolve()), str(device), done.st_ino, done.st_mtime_ns)
        if key not in _RESIDENT:
            files = sorted(self.dir.glob("*.pt"))
            size = sum(f.stat().st_size for f in files)
            if not files or size > RESIDENT_SHARE * free_bytes:
                return False
            _RESIDENT.clear()  # another study's cache gives way
            _RESIDENT[key] = {
                int(f.stem): {"logits": d["logits"].to(device), "feats": [
                    t.to(device) for t in d["feats"]]}
                for f in files for d in [torch.load(f, weights_only=True)]}
            log.info("teacher cache on %s: %.2f GB, %d steps", device, size / 1e9, len(files))
        self._resident = _RESIDENT[key]
        return True

    def begin(self) -> bool:
        """Start writing the cache, unless another worker is writing it (a file lock) or
        has finished it; returns whether this process writes."""
        self.dir.parent.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.dir.with_name(f".{self.dir.name}.lock"), "w")  # noqa: SIM115
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._unlock()
            return False
        self._drop_leftovers()
        if self.complete or self._too_large():
            self._unlock()
            return False
        self._tmp = self.dir.with_name(f"{self.dir.name}.tmp-{os.getpid()}")
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._tmp.mkdir(parents=True)
        return True

    def _drop_leftovers(self) -> None:
        """Remove what writers killed mid-write left (their ``.tmp-<pid>`` folders: up to the
        whole cache's size). Called holding the lock, so no other writer is at work."""
        for d in self.dir.parent.glob(f"{self.dir.name}.tmp-*"):
            if d != self._tmp:
                log.info("removing %s, left by a writer that was stopped", d.name)
                shutil.rmtree(d, ignore_errors=True)

    def _marker(self) -> Path:
        return self.dir.with_name(f".{self.dir.name}.too-large")

    def _too_large(self) -> bool:
        """A first step already showed this cache to exceed the (current) limit."""
        m = self._marker()
        return m.exists() and int(m.read_text() or 0) > self._limit()

    def _limit(self) -> int:
        return self.limit_bytes if self.limit_bytes is not None else disk_limit(self.dir)

    def _unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()  # releases the lock
            self._lock = None

    def put(self, step: int, logits: torch.Tensor, feats: list[torch.Tensor],
            total: int | None = None) -> bool:
        """Store one step; returns False (and stops writing) when the first step shows that
        ``total`` steps would exceed ``limit_bytes``."""
        if self._tmp is None:
            return False
        if not self.features:
            feats = []
        if self.writes == 0 and total:
            size = sum(t.numel() * 2 for t in (logits, *feats)) * total  # fp16
            limit = self._limit()
            if size > limit:
                self._marker().write_text(str(size))  # later trials need not try again
                log.warning("the teacher cache would take %.1f GB (limit %.1f GB%s): not "
                            "written; the teacher runs in every trial (%s)", size / 1e9,
                            limit / 1e9, "" if self.limit_bytes is not None else
                            f", {DISK_SHARE:.0%} of the free disk", "raise --cache-limit to "
                            "trade disk for speed" if self.limit_bytes is not None else
                            "free disk space where the study writes")
                self.abort()
                return False
        torch.save({"logits": logits.detach().half().contiguous().cpu(),
                    "feats": [f.detach().half().cpu() for f in feats]},  # layout kept
                   self._tmp / f"{step:06d}.pt")
        self.writes += 1
        return True

    def commit(self, steps: int) -> None:
        if self._tmp is None:
            return
        (self._tmp / "COMPLETE").write_text(str(steps))
        try:
            self._tmp.rename(self.dir)  # atomic; fails if another worker got there first
        except OSError:
            shutil.rmtree(self._tmp, ignore_errors=True)
        self._tmp = None
        self._drop_leftovers()
        self._unlock()

    def abort(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        self._unlock()
