"""Does eager PyTorch latency rank students as the runtime they ship on does? 30 candidates
(10 per family, drawn by the sampler's own code with seed 0 in 0.5-50M MACs, 32x32 inputs,
10 classes, random weights: latency does not depend on them), each timed at batch 1 on one
thread in eager PyTorch (channels_last, as `kdnas search` measures it), on ONNX Runtime fp32
and on ONNX Runtime int8 (as `--int8` writes it); Spearman's rho between each pair, and the
seconds each measurement costs per candidate. Writes reports/latency_runtimes.json and .md.

    OMP_NUM_THREADS=1 python -m benchmarks.latency_runtimes      # resumes where it stopped
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.common import ROOT, Results

RUNTIMES = ("torch", "onnxruntime", "onnxruntime-int8")
PER_FAMILY = 10
BAND = (0.5e6, 50e6)
SEED = 0
FAMILIES = ("resnet", "mobilenet", "shufflenet")


class Shape:
    """What the sampler reads of a data set: CIFAR-10's shapes, no images."""

    in_channels, num_classes, input_size = 3, 10, 32
    input_shape = (3, 32, 32)


def candidates() -> list[dict]:
    from kdnas.bench.workload import draw_in_band

    rng = np.random.RandomState(SEED)
    return [c for fam in FAMILIES for c in draw_in_band(fam, Shape, *BAND, PER_FAMILY, rng)]


def measure(out: Path) -> None:
    import torch

    from kdnas.cost import measure_latency
    from search_spaces import build, describe

    results = Results(out, figures, lambda r: write_markdown(out.with_suffix(".md"), r))
    cands = results.update(lambda d: {**d, "candidates": d.get("candidates") or [
        {**c, "arch": describe(c["spec"])} for c in candidates()]})["candidates"]
    for runtime in RUNTIMES:
        for c in cands:
            if c["id"] in results.runs().get(runtime, {}):
                continue
            torch.manual_seed(0)
            model = build(c["spec"])
            t0 = time.perf_counter()
            p50, p90, setting = measure_latency(model, Shape.input_shape, threads=1,
                                                runtime=runtime)
            results.put(runtime, {c["id"]: {"p50_ms": p50, "p90_ms": p90, "setting": setting,
                                            "seconds": time.perf_counter() - t0}})
            print(f"{c['arch']} {runtime}: {p50:.3g} ms", flush=True)


def figures(res: dict) -> dict:
    runs = res.get("runs", {})
    table = pd.DataFrame({r: pd.Series({k: v["p50_ms"] for k, v in runs.get(r, {}).items()},
                                       dtype=float) for r in RUNTIMES})
    fam = pd.Series({c["id"]: c["space"] for c in res.get("candidates", [])})
    out = {"candidates": int(table.dropna().shape[0]), "spearman": {}, "within_family": {},
           "seconds_per_candidate": {r: float(np.mean([v["seconds"] for v in runs[r].values()]))
                                     for r in RUNTIMES if runs.get(r)}}
    full = table.dropna()
    for a, b in (("torch", "onnxruntime"), ("torch", "onnxruntime-int8"),
                 ("onnxruntime", "onnxruntime-int8")):
        if len(full) >= 3:
            out["spearman"][f"{a} vs {b}"] = float(full[a].corr(full[b], method="spearman"))
            out["within_family"][f"{a} vs {b}"] = {
                f: float(full.loc[ids, a].corr(full.loc[ids, b], method="spearman"))
                for f, ids in fam.reindex(full.index).groupby(fam.reindex(full.index)).groups
                .items() if len(ids) >= 3}
    if len(full):
        out["int8_speedup"] = {"median": float((full["onnxruntime"]
                                                / full["onnxruntime-int8"]).median()),
                               "min": float((full["onnxruntime"]
                                             / full["onnxruntime-int8"]).min()),
                               "slower_in_int8": int((full["onnxruntime-int8"]
                                                      > full["onnxruntime"]).sum())}
    res["summary"] = out
    return res


def write_markdown(path: Path, res: dict) -> None:
    s = res.get("summary", {})
    runs = res.get("runs", {})
    lines = ["# Latency on eager PyTorch against ONNX Runtime (fp32, int8)", "",
             __doc__.split("\n\n")[0].replace("\n", " "), "",
             f"{s.get('candidates', 0)} candidates measured on every runtime.", "",
             "| pair | Spearman rho (all) | within families |", "| --- | --- | --- |"]
    for pair, rho in s.get("spearman", {}).items():
        within = ", ".join(f"{f} {v:.2f}" for f, v in s["within_family"][pair].items())
        lines.append(f"| {pair} | {rho:.2f} | {within} |")
    cost = ", ".join(f"{r} {v:.2f} s" for r, v in s.get("seconds_per_candidate", {}).items())
    lines += ["", f"Seconds per candidate to measure: {cost}."]
    if "int8_speedup" in s:
        sp = s["int8_speedup"]
        lines += [f"int8 against fp32 on ONNX Runtime: median speed-up {sp['median']:.2f}x, "
                  f"smallest {sp['min']:.2f}x; {sp['slower_in_int8']} candidates slower in "
                  "int8.", ""]
    lines += ["| candidate | family | MACs | " + " | ".join(f"{r} p50 ms" for r in RUNTIMES)
              + " |", "| --- | --- | --- | " + " | ".join("---" for _ in RUNTIMES) + " |"]
    for c in res.get("candidates", []):
        cells = [runs.get(r, {}).get(c["id"], {}).get("p50_ms") for r in RUNTIMES]
        lines.append(f"| {c['arch']} | {c['space']} | {c['macs'] / 1e6:.2f}M | " + " | ".join(
            "-" if v is None else f"{v:.3g}" for v in cells) + " |")
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "latency_runtimes.json")
    measure(ap.parse_args(argv).out)


if __name__ == "__main__":
    main()
