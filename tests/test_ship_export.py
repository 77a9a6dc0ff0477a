from __future__ import annotations

import json

import pytest
import torch

from kdnas.core.settings import SearchConfig
from kdnas.core.errors import KdnasError
from kdnas.ship.export import export_trial
from kdnas.report import pick_trial
from kdnas.search.loop import run_search
from kdnas.search.storage import load_record
from kdnas.teacher import attach_to_data, load_teacher
from search_spaces import build


@pytest.fixture(scope="module")
def searched(tmp_path_factory, digits, digits_teacher):
    tmp = tmp_path_factory.mktemp("export")
    teacher = load_teacher(digits_teacher)
    data = digits.with_normalization(teacher.mean, teacher.std)
    attach_to_data(teacher, data)
    cfg = SearchConfig(study="e", teacher=str(digits_teacher), data="digits", budget="1MFLOPs",
                       trials=2, epochs=2, val_fraction=0.2, workdir=str(tmp / "runs"),
                       latency=False)
    out = run_search(cfg, teacher, data)
    return load_record(out.study), cfg, data, tmp


@pytest.mark.slow  # writes and checks every format (ONNX through torch.export: seconds)
def test_export_round_trips(searched):
    study, cfg, data, tmp = searched
    trial = pick_trial(study, "best")
    r = export_trial(study, cfg, trial, data, tmp / "out")
    meta = json.loads((tmp / "out" / "spec.json").read_text())
    record = study.trial(trial)
    assert meta["macs"] == record.cost["macs"] == r.macs
    assert r.val_accuracy == pytest.approx(record.val_accuracy, abs=0.002)
    # plain PyTorch, no kdnas: the exported program
    program = torch.export.load(str(tmp / "out" / "student.pt2")).module()
    # and the weights into a module rebuilt from the spec
    model = build(meta["spec"])
    model.load_state_dict(torch.load(tmp / "out" / "student_state_dict.pt", weights_only=True))
    model.eval()
    x = torch.cat([b[0] for b in data.batches("val", 100)]).contiguous()
    with torch.no_grad():
        a, b = program(x), model(x)
    assert (a - b).abs().max() < 1e-4
    acc = float((a.argmax(1) == data.val_y).float().mean())
    assert acc == pytest.approx(r.val_accuracy, abs=0.002)
    # and the ONNX file, in onnxruntime, on the same real images
    import onnxruntime

    session = onnxruntime.InferenceSession(str(tmp / "out" / "student.onnx"))
    onnx_logits = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    assert (onnx_logits - b).abs().max() < 1e-3
    assert meta["exports"]["onnx"]["max_abs_diff"] < 1e-3
    card = (tmp / "out" / "MODEL_CARD.md").read_text()
    assert "MACs" in card and "student.onnx" in card


def test_torchscript_only_when_asked(searched):
    study, cfg, data, tmp = searched
    trial = pick_trial(study, "best")
    r = export_trial(study, cfg, trial, data, tmp / "ts", formats=("torchscript",))
    assert set(r.max_abs_diff) == {"torchscript"}
    assert (tmp / "ts" / "student.ts").exists() and not (tmp / "ts" / "student.pt2").exists()
    with pytest.raises(KdnasError, match="unknown export format"):
        export_trial(study, cfg, trial, data, tmp / "x", formats=("tflite",))


def test_export_fails_loudly_when_weights_disagree_with_the_record(searched):
    study, cfg, data, tmp = searched
    trial = pick_trial(study, "knee")
    path = cfg.study_dir / study.trial(trial).weights  # stored relative to the study
    saved = torch.load(path, weights_only=True)
    original = {k: v.clone() for k, v in saved["state_dict"].items()}
    saved["state_dict"]["fc.weight"].normal_(0, 10.0, generator=torch.Generator().manual_seed(0))
    torch.save(saved, path)
    try:
        with pytest.raises(KdnasError, match="differs from the recorded"):
            export_trial(study, cfg, trial, data, tmp / "bad")
    finally:
        saved["state_dict"] = original
        torch.save(saved, path)


def test_export_of_an_unknown_trial(searched):
    study, cfg, data, tmp = searched
    with pytest.raises(KdnasError, match="no trial 999"):
        export_trial(study, cfg, 999, data, tmp / "none")


def test_an_export_is_judged_relative_to_the_largest_logit(searched, monkeypatch, tmp_path):
    """Float rounding grows with the logits: a student whose logits reach the thousands (a
    short DIST run left 6,400) passes with rounding-sized differences, and a difference
    beyond the tolerance at that scale still fails and removes the file."""
    from kdnas.ship import export

    study, cfg, data, _ = searched
    rec = study.trial(pick_trial(study, "knee"))
    class Large(torch.nn.Module):  # the student, its logits times 10,000
        def __init__(self):
            super().__init__()
            self.student = build(rec.spec)

        def forward(self, x):
            return self.student(x) * 1e4
    model = Large().eval()
    x = next(data.batches("val", 64))[0].contiguous()
    with torch.no_grad():
        scale = float(model(x).abs().max())
    assert scale > 10

    def writer(offset):
        def write(model, x, out):
            path = out / "student.pt2"
            path.write_text("")
            with torch.no_grad():
                return path, model(x) + offset
        return write
    tol = export.TOLERANCES["pt2"]
    monkeypatch.setattr(export, "_card", lambda meta: "")  # the card is not under test here
    monkeypatch.setitem(export._WRITERS, "pt2", writer(0.5 * tol * scale))
    diffs, _ = export.write_exports(model, rec.spec, data, tmp_path / "ok", formats=("pt2",),
                                    meta={"training": {}})
    # the offset is added to logits of about `scale` in float32: a few of its ulps off
    assert diffs["pt2"] == pytest.approx(0.5 * tol * scale, abs=8 * scale * 2 ** -23)
    monkeypatch.setitem(export._WRITERS, "pt2", writer(2 * tol * scale))
    with pytest.raises(KdnasError, match="disagrees"):
        export.write_exports(model, rec.spec, data, tmp_path / "bad", formats=("pt2",),
                             meta={"training": {}})
    assert not (tmp_path / "bad" / "student.pt2").exists()


@pytest.mark.slow  # writes and checks every format (ONNX through torch.export: seconds)
def test_int8_is_written_beside_fp32_and_measured_on_the_runtime(searched):
    """--int8: a QDQ model whose Conv and Gemm take int8 weights, its test accuracy and
    ONNX Runtime latency beside the fp32 file's (computed here again from the files), the
    card's table, and the figures in spec.json."""
    import numpy as np
    import onnx

    from kdnas.ship.export import Int8Options
    from kdnas.ort import session

    study, cfg, data, tmp = searched
    trial = pick_trial(study, "best")
    out = tmp / "int8"
    r = export_trial(study, cfg, trial, data, out, formats=("pt2",),
                     int8=Int8Options(images=64))
    assert (out / "student.onnx").is_file() and (out / "student.int8.onnx") in r.files
    graph = onnx.load(str(out / "student.int8.onnx")).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    q_weights = [i for i in graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert q_weights, "weights must be stored as int8"
    meta = json.loads((out / "spec.json").read_text())["int8"]
    right = {}
    for name, file in (("fp32", "student.onnx"), ("int8", "student.int8.onnx")):
        sess = session(out / file)
        logits = np.concatenate([sess.run(None, {"images": x.contiguous().numpy()})[0]
                                 for x, _, _ in data.batches("test", 256)])
        right[name] = logits.argmax(1) == data.test_y.numpy()
        acc = float(right[name].mean())
        assert meta[name]["accuracy"] == pytest.approx(acc)
        assert meta[name]["images"] == len(data.test_y)
        assert meta[name]["accuracy_lo"] <= acc <= meta[name]["accuracy_hi"]
        assert 0 < meta[name]["latency_p50_ms"] <= meta[name]["latency_p90_ms"]
    assert meta["accuracy_drop"] == pytest.approx(meta["fp32"]["accuracy"]
                                                  - meta["int8"]["accuracy"])
    pr = meta["paired"]  # image by image, counted again here from the two files' outputs
    assert pr["only_fp32"] == int((right["fp32"] & ~right["int8"]).sum())
    assert pr["only_int8"] == int((right["int8"] & ~right["fp32"]).sum())
    assert 0 < pr["mcnemar_p"] <= 1
    assert meta["slower"] == (meta["speedup_p50"] < 0.9)  # what the report marks
    assert meta["lost"] == (meta["accuracy_drop"] > 0.01)
    assert meta["calibration"]["images"] == 64 and meta["calibration"]["method"] == "minmax"
    card = (out / "MODEL_CARD.md").read_text()
    assert "## int8 (ONNX Runtime)" in card and "student.int8.onnx" in card
    assert f"| images right by this file alone | {pr['only_fp32']} | {pr['only_int8']} " in card
    assert "1 thread" in card


def test_int8_refuses_a_calibration_set_too_small_and_names_the_flag(searched):
    from kdnas.ship.export import Int8Options

    study, cfg, data, tmp = searched
    with pytest.raises(KdnasError, match="--calibration-images 8"):
        Int8Options(images=8)
    with pytest.raises(KdnasError, match="at most the"):
        export_trial(study, cfg, pick_trial(study, "best"), data, tmp / "many",
                     int8=Int8Options(images=10 ** 6))
    assert not (tmp / "many" / "student.int8.onnx").exists()


def test_the_int8_warning_says_what_was_lost_and_what_to_try():
    from kdnas.ship.int8 import Int8Report, Measured

    fp32 = Measured("student.onnx", 0.90, 0.89, 0.91, 1000, 2.0, 2.2)
    fine = Int8Report(fp32, Measured("s.int8.onnx", 0.895, 0.88, 0.91, 1000, 1.0, 1.1), {},
                      "x")
    assert fine.warning() is None and fine.speedup == pytest.approx(2.0)
    lost = Int8Report(fp32, Measured("s.int8.onnx", 0.87, 0.86, 0.88, 1000, 1.0, 1.1), {},
                      "x", {"Sigmoid": 3})
    text = lost.warning()
    assert "3.00 points" in text and "Sigmoid" in text and "--calibration-method" in text
    lost.paired = {"only_fp32": 40, "only_int8": 10, "mcnemar_p": 2.2e-5}
    assert lost.beyond_noise and "beyond the noise" in lost.warning()
    lost.paired = {"only_fp32": 31, "only_int8": 25, "mcnemar_p": 0.53}
    assert not lost.beyond_noise and "within the noise" in lost.warning()
    assert "slower" not in lost.warning()
    slow = Int8Report(fp32, Measured("s.int8.onnx", 0.90, 0.89, 0.91, 1000, 3.0, 3.3), {},
                      "onnxruntime, batch 1, 1 thread")
    assert slow.speedup == pytest.approx(2 / 3)
    assert "int8 runs slower than fp32 here" in slow.warning() and "0.67x" in slow.warning()
    assert "loses" not in slow.warning()
    near = Int8Report(fp32, Measured("s.int8.onnx", 0.90, 0.89, 0.91, 1000, 2.1, 2.3), {}, "x")
    assert near.warning() is None  # 0.95x: within the latency's own noise


def test_a_file_onnx_runtime_cannot_quantize_is_one_clear_message(digits, tmp_path):
    """ONNX Runtime's quantizer failing (here: a file that is not a model) is a user error
    that says which file, that the fp32 files stand, and what to do; no int8 file is left."""
    from kdnas.ship.int8 import quantize

    bad = tmp_path / "student.onnx"
    bad.write_bytes(b"not an onnx model" * 10)
    out = tmp_path / "student.int8.onnx"
    with pytest.raises(KdnasError) as e:
        quantize(bad, digits, out, images=64)
    text = str(e.value)
    assert "ONNX Runtime could not quantize student.onnx" in text
    assert "ship those, or export without --int8" in text and "\n" not in text
    assert not out.exists()
