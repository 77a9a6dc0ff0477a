"""How `--int8` calibrates: each calibration method at two calibration sizes, on CIFAR-10
models of the three families, the test accuracy lost and the ONNX Runtime speed-up (batch 1,
one thread) against the fp32 file. A measurement to set the default, not a protocol's
evidence: the students are brief-trained (400 steps of dkd-ls, rank_fresh's fresh set, the
first of each family; about 40-50% accuracy) and the kept resnet14 teacher (79%) stands in
for a well-trained student.

    OMP_NUM_THREADS=1 python -m benchmarks.int8_calibration   # resumes; reports/int8_calibration.*
"""

from __future__ import annotations

import argparse
import contextlib
import io
import warnings
from pathlib import Path

from benchmarks.common import ROOT, Results, add_setup_args, prepared

SIZES = (128, 1024)
METHODS = ("minmax", "percentile", "entropy")
CKPT = "fresh-brief-dkd-ls-s2.pt"


def models(teacher, data, work: Path) -> dict:
    """name -> (module, label): the teacher and one brief-trained student of each family."""
    import json

    import torch

    from search_spaces import build

    res = json.loads((ROOT / "reports" / "rank_fresh.json").read_text())
    out = {"teacher-resnet14": (teacher.module.cpu().eval(), "teacher (79.40% val)")}
    seen = set()
    for c in res["fresh_candidates"]:
        path = work / "rank_fresh" / "ckpt" / c["id"] / CKPT
        if c["space"] in seen or not path.exists():
            continue
        seen.add(c["space"])
        model = build(c["spec"])
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["student"])
        out[f"{c['space']}-{c['id']}"] = (model.eval(), c["arch"])
    return out


def onnx_file(model, data, path: Path) -> Path:
    import torch

    if path.exists():
        return path
    x = next(data.batches("val", 2))[0].contiguous()
    model = model.to(memory_format=torch.contiguous_format)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), dynamo=True, input_names=["images"],
                          output_names=["logits"],
                          dynamic_shapes=({0: torch.export.Dim("batch")},)).save(str(path))
    return path


def measure(args) -> None:
    from kdnas.ship import int8

    results = Results(args.out, figures, lambda r: write_markdown(args.out.with_suffix(".md"), r))
    _, teacher, data, _ = prepared(args, study="int8", budget_macs=1e9, steps=None, seed=0)
    work = args.work / "int8"
    work.mkdir(parents=True, exist_ok=True)
    shape = tuple(data.input_shape)
    for name, (model, label) in models(teacher, data, args.work).items():
        fp32 = onnx_file(model, data, work / f"{name}.onnx")
        if name not in results.runs().get("fp32", {}):
            m = int8.measure(fp32, data, shape)
            results.put("fp32", {name: {"label": label, **m.__dict__,
                                        "float_ops": int8.float_ops(fp32)}})
        for method in METHODS:
            for size in SIZES:
                key = f"{method}/{size}"
                if name in results.runs().get(key, {}):
                    continue
                q = work / f"{name}-{method}-{size}.int8.onnx"
                cal = int8.quantize(fp32, data, q, images=size, method=method)
                m = int8.measure(q, data, shape)
                results.put(key, {name: {**m.__dict__, "calibration_seconds": cal["seconds"],
                                         "float_ops": int8.float_ops(q)}})
                print(f"{name} {key}: {100 * m.accuracy:.2f}% p50 {m.latency_p50_ms:.3g} ms",
                      flush=True)


def figures(res: dict) -> dict:
    """Per setting: the largest and mean accuracy drop (points) and the smallest speed-up."""
    base = res.get("runs", {}).get("fp32", {})
    out = {}
    for key, runs in res.get("runs", {}).items():
        if key == "fp32" or not runs:
            continue
        drops = [100 * (base[n]["accuracy"] - r["accuracy"]) for n, r in runs.items() if n in base]
        speed = [base[n]["latency_p50_ms"] / r["latency_p50_ms"] for n, r in runs.items()
                 if n in base]
        out[key] = {"models": len(drops), "drop_max": max(drops), "drop_mean":
                    sum(drops) / len(drops), "speedup_min": min(speed)}
    res["summary"] = out
    return res


def write_markdown(path: Path, res: dict) -> None:
    base = res.get("runs", {}).get("fp32", {})
    names = list(base)
    lines = ["# int8 calibration: method and size", "", __doc__.split("\n\n")[0], "",
             "| model | fp32 test accuracy | fp32 p50 ms |", "| --- | --- | --- |"]
    lines += [f"| {base[n]['label']} | {100 * base[n]['accuracy']:.2f}% | "
              f"{base[n]['latency_p50_ms']:.3g} |" for n in names]
    lines += ["", "Accuracy drop in points (fp32 - int8) and p50 speed-up, per model:", "",
              "| calibration | " + " | ".join(n.split("-")[0] for n in names)
              + " | max drop | mean drop | min speed-up |",
              "| --- | " + " | ".join("---" for _ in names) + " | --- | --- | --- |"]
    for key, s in res.get("summary", {}).items():
        runs = res["runs"][key]
        cells = [f"{100 * (base[n]['accuracy'] - runs[n]['accuracy']):+.2f} / "
                 f"{base[n]['latency_p50_ms'] / runs[n]['latency_p50_ms']:.2f}x"
                 if n in runs else "-" for n in names]
        lines.append(f"| {key} | " + " | ".join(cells) + f" | {s['drop_max']:.2f} | "
                     f"{s['drop_mean']:.2f} | {s['speedup_min']:.2f}x |")
    left = {n: r["float_ops"] for n, r in res["runs"].get("minmax/1024", {}).items()}
    if left:
        lines += ["", "Operators left in float (minmax/1024): " + "; ".join(
            f"{n.split('-')[0]}: {', '.join(f'{k} x{v}' for k, v in ops.items()) or 'none'}"
            for n, ops in left.items()) + "."]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_setup_args(ap, out="int8_calibration.json")
    measure(ap.parse_args(argv))


if __name__ == "__main__":
    main()
