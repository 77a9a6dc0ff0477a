"""Int8 for the runtime the student ships on: post-training static quantization of the
exported ONNX student with ONNX Runtime's own quantizer (QDQ format, int8 weights per output
channel, uint8 activations: the U8S8 form ONNX Runtime runs fastest on x86 CPUs), calibrated
on training images of the study's data, then measured beside the fp32 file on the same
runtime: test accuracy with its 95% interval, and latency (batch 1, one thread, p50 and p90).

Which operators stayed in float is read from the quantized graph: a node none of whose inputs
comes from a DequantizeLinear computes in float (ONNX Runtime has no int8 kernel it could
use there), and the card names those operators.
"""

from __future__ import annotations

import logging
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from kdnas.core.errors import KdnasError
from kdnas.core.settings import (
    INT8_CALIBRATION_DEFAULT,
    INT8_CALIBRATION_IMAGES,
    INT8_CALIBRATION_METHODS,
)
from kdnas import ort
from kdnas.front import mcnemar_p, wilson

log = logging.getLogger(__name__)

CALIBRATION_IMAGES = INT8_CALIBRATION_IMAGES  # training images, drawn with CALIBRATION_SEED
CALIBRATION_SEED = 0
CALIBRATION_METHODS = INT8_CALIBRATION_METHODS  # kdnas.ort.QUANTIZE_METHODS
CALIBRATION_DEFAULT = INT8_CALIBRATION_DEFAULT
MIN_CALIBRATION = 32
MAX_DROP = 0.01  # int8 losing more accuracy than this is said on the card and the console
NOISE_P = 0.05  # a drop with McNemar's exact p under this is beyond the images' noise
SLOWER = 0.9  # int8 at under this share of fp32's speed is said to be slower (p50 moves ~5%)
LATENCY_RUNS = 200
LATENCY_WARMUP = 20
BATCH = 64
SKIP = {"QuantizeLinear", "DequantizeLinear", "Constant", "Shape", "Identity"}


@dataclass
class Measured:
    """One ONNX file on ONNX Runtime: test accuracy (and its 95% interval), latency."""

    file: str
    accuracy: float
    accuracy_lo: float
    accuracy_hi: float
    images: int
    latency_p50_ms: float
    latency_p90_ms: float


@dataclass
class Int8Report:
    fp32: Measured
    int8: Measured
    calibration: dict
    latency_setting: str
    float_ops: dict = field(default_factory=dict)  # op type -> nodes left in float
    # fp32 against int8 image by image: right by one file alone, and McNemar's exact p
    paired: dict = field(default_factory=dict)

    @property
    def beyond_noise(self) -> bool:
        """The drop is more than the two files' disagreements give by chance (p < NOISE_P)."""
        return self.paired.get("mcnemar_p", 1.0) < NOISE_P

    @property
    def drop(self) -> float:
        """Accuracy points lost (0..1 scale), positive when int8 is worse."""
        return self.fp32.accuracy - self.int8.accuracy

    @property
    def speedup(self) -> float:
        return self.fp32.latency_p50_ms / self.int8.latency_p50_ms

    def to_dict(self) -> dict:
        return {**asdict(self), "accuracy_drop": self.drop, "speedup_p50": self.speedup,
                "lost": self._lost() is not None, "slower": self._slower() is not None,
                "beyond_noise": self.beyond_noise}

    def warning(self) -> str | None:
        """What to say when int8 loses more than MAX_DROP, or runs slower than fp32 on this
        machine, with what to try."""
        said = [s for s in (self._lost(), self._slower()) if s]
        return " ".join(said) or None

    def _slower(self) -> str | None:
        if self.speedup >= SLOWER:
            return None
        return (f"int8 runs slower than fp32 here (p50 {self.int8.latency_p50_ms:.3g} ms "
                f"against {self.fp32.latency_p50_ms:.3g} ms, {self.speedup:.2f}x; "
                f"{self.latency_setting}): at this size its quantize and layout steps cost "
                "more than the int8 arithmetic saves. Ship the fp32 file for this CPU, or "
                "measure both on the device you ship to.")

    def _lost(self) -> str | None:
        if self.drop <= MAX_DROP:
            return None
        left = (f"; left in float: {', '.join(sorted(self.float_ops))}" if self.float_ops
                else "")
        noise = ("" if not self.paired else
                 f", {'beyond' if self.beyond_noise else 'within'} the noise of these images "
                 f"(McNemar p {self.paired['mcnemar_p']:.3g})")
        return (f"int8 loses {100 * self.drop:.2f} points of test accuracy "
                f"({100 * self.fp32.accuracy:.2f}% -> {100 * self.int8.accuracy:.2f}%"
                f"{noise}){left}. "
                "Try another --calibration-method (percentile or entropy) or more "
                "--calibration-images, or ship the fp32 file.")


def check_calibration(images: int, method: str, n_train: int | None = None) -> None:
    """A clear error for a calibration kdnas cannot run (before anything is written)."""
    if method not in CALIBRATION_METHODS:
        raise KdnasError(f"unknown calibration method {method!r}: choose one of "
                         f"{', '.join(CALIBRATION_METHODS)}")
    if images < MIN_CALIBRATION or (n_train is not None and images > n_train):
        most = "" if n_train is None else f" and at most the {n_train} the data has"
        raise KdnasError(f"--calibration-images {images}: int8 calibration needs at least "
                         f"{MIN_CALIBRATION} training images{most}")


def calibration_batches(data, images: int, seed: int = CALIBRATION_SEED):
    """Normalised training images (no augmentation), drawn with ``seed``, as arrays."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.train_y), generator=g)[:images]
    for x, _, _ in data.batches("train", BATCH, indices=idx):
        yield x.contiguous().numpy()


def quantize(fp32: Path, data, out: Path, *, images: int = CALIBRATION_IMAGES,
             method: str = CALIBRATION_DEFAULT, seed: int = CALIBRATION_SEED) -> dict:
    """Write the int8 model of ``fp32`` to ``out``; returns the calibration as recorded."""
    check_calibration(images, method, len(data.train_y))
    try:
        seconds = ort.quantize(fp32, out, calibration_batches(data, images, seed),
                               method=method)
    except KdnasError as e:
        raise KdnasError(f"{e}. The fp32 files are written; ship those, or export without "
                         "--int8") from e
    return {"images": images, "method": method, "seed": seed, "format": "QDQ",
            "weights": "int8 per channel", "activations": "uint8 per tensor",
            "seconds": round(seconds, 2)}


def float_ops(path: Path) -> dict[str, int]:
    """Op types (and how many nodes) of a QDQ model that compute in float: no input from a
    DequantizeLinear."""
    import onnx

    graph = onnx.load(str(path)).graph
    made_by = {o: n.op_type for n in graph.node for o in n.output}
    out: dict[str, int] = {}
    for n in graph.node:
        if n.op_type in SKIP:
            continue
        if not any(made_by.get(i) == "DequantizeLinear" for i in n.input):
            out[n.op_type] = out.get(n.op_type, 0) + 1
    return out


def hits(path: Path, data, split: str = "test") -> np.ndarray:
    """Whether an ONNX file classifies each image of ``split`` right, on ONNX Runtime (in the
    split's order: two files compare image by image)."""
    sess, out = ort.session(path), []
    for x, y, _ in data.batches(split, 256):
        logits = sess.run(None, {"images": x.contiguous().numpy()})[0]
        out.append(np.argmax(logits, 1) == y.numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=bool)


def latency_setting(threads: int = 1) -> str:
    return (f"{ort.runtime_name()} CPU, batch 1, {threads} thread, "
            f"{platform.machine()} {platform.processor() or ''}".strip())


def measure(path: Path, data, shape, split: str = "test",
            right: np.ndarray | None = None) -> Measured:
    """Accuracy (from ``right``, the file's :func:`hits`, when given) and latency."""
    right = hits(path, data, split) if right is None else right
    acc, n = (float(right.mean()) if len(right) else 0.0), len(right)
    lo, hi = wilson(acc, n)
    p50, p90 = ort.onnx_latency(path, shape, warmup=LATENCY_WARMUP,
                                repeats=LATENCY_RUNS)
    return Measured(path.name, acc, lo, hi, n, p50, p90)


def paired(a: np.ndarray, b: np.ndarray) -> dict:
    """Two files' :func:`hits` on the same images: how many each alone gets right, and the
    exact McNemar p of the difference."""
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    return {"only_fp32": only_a, "only_int8": only_b, "mcnemar_p": mcnemar_p(only_a, only_b)}


def int8_export(fp32: Path, data, *, images: int = CALIBRATION_IMAGES,
                method: str = CALIBRATION_DEFAULT, split: str = "test") -> Int8Report:
    """Quantize ``fp32`` (an exported student.onnx) beside it as ``student.int8.onnx`` and
    measure both on ONNX Runtime."""
    out = fp32.with_name(fp32.stem + ".int8.onnx")
    calibration = quantize(fp32, data, out, images=images, method=method)
    shape = tuple(data.input_shape)
    right = {f: hits(f, data, split) for f in (fp32, out)}
    report = Int8Report(measure(fp32, data, shape, split, right[fp32]),
                        measure(out, data, shape, split, right[out]),
                        {**calibration, "split": split}, latency_setting(), float_ops(out),
                        paired(right[fp32], right[out]))
    if report.warning():
        log.warning(report.warning())
    return report


def card_section(d: dict) -> str:
    """The model card's fp32 / int8 table, from :meth:`Int8Report.to_dict`."""
    f, q, c = d["fp32"], d["int8"], d["calibration"]

    def acc(m):
        return (f"{100 * m['accuracy']:.2f}% [{100 * m['accuracy_lo']:.1f}, "
                f"{100 * m['accuracy_hi']:.1f}] ({m['images']} {c['split']} images)")
    left = ", ".join(f"{k} x{v}" for k, v in sorted(d["float_ops"].items())) or "none"
    warn, pr = d.get("warning"), d.get("paired")
    paired_row = (f"| images right by this file alone | {pr['only_fp32']} | {pr['only_int8']} "
                  f"(exact McNemar p {pr['mcnemar_p']:.3g}) |\n" if pr else "")
    return f"""## int8 (ONNX Runtime)

| | fp32 (`{f['file']}`) | int8 (`{q['file']}`) |
| --- | --- | --- |
| test accuracy, 95% interval | {acc(f)} | {acc(q)} |
| latency p50 / p90 | {f['latency_p50_ms']:.3g} / {f['latency_p90_ms']:.3g} ms | \
{q['latency_p50_ms']:.3g} / {q['latency_p90_ms']:.3g} ms ({d['speedup_p50']:.2f}x) |
{paired_row}
Latency: {d['latency_setting']}, on the machine that exported it. Quantization: post-training,
static, {c['format']}, weights {c['weights']}, activations {c['activations']}, calibrated
with {c['method']} on {c['images']} training images (seed {c['seed']}). Operators left in
float: {left}.{(chr(10) * 2 + "**" + warn + "**") if warn else ""}
"""
