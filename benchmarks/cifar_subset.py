"""What the benchmark scripts share: real CIFAR-10 images from the shared archive (carved by
the same code as ``kdnas bench``'s)."""

from __future__ import annotations

from kdnas.bench.workload import ARCHIVE, ROOT, make_subset

__all__ = ["ARCHIVE", "ROOT", "make_subset"]
