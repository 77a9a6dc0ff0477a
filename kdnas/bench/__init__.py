"""``kdnas bench``: the speed of kdnas' trials on this machine against a plain loop and this
machine's own GEMM rate, written to reports/BENCHMARKS.md and reports/benchmarks.json."""

from kdnas.bench.run import Workload, run

__all__ = ["Workload", "run"]
