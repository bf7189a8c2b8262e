"""INT8 whose answers do not depend on the CPU: the portable format's weights cannot saturate ORT's
non-VNNI kernels, the artifact records its format, ladder and CPU, and serving says whether the
measured agreement holds where it runs.

The emulator tests run ONNX Runtime under ``qemu-x86_64 -cpu Haswell-noTSX`` (Debian's qemu-user; an
AVX2 CPU without AVX-512 or VNNI): the real AVX2 kernels on this machine, whatever its own CPU.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from export.cli import main as export_main
from maskdata.artifact import read_metadata
from maskdata.cpu import int8_kernel, int8_on_this_cpu

QEMU = shutil.which("qemu-x86_64")
needs_qemu = pytest.mark.skipif(QEMU is None, reason="qemu-x86_64 (Debian qemu-user) is not installed")
AVX2_ONLY = {"sse2", "ssse3", "avx", "avx2", "fma"}
AVX512_NO_VNNI = AVX2_ONLY | {"avx512f", "avx512bw"}
VNNI = AVX512_NO_VNNI | {"avx512_vnni"}

PROBS = ("import sys, numpy as np, onnxruntime as ort\n"
         "x = np.load(sys.argv[1]); s = ort.InferenceSession(sys.argv[2], providers=['CPUExecutionProvider'])\n"
         "np.save(sys.argv[3], s.run(None, {s.get_inputs()[0].name: x})[0])\n")


def _run(model, x, tmp_path, emulated: bool) -> np.ndarray:
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / ("emu.npy" if emulated else "native.npy")
    cmd = [sys.executable, "-c", PROBS, str(tmp_path / "x.npy"), str(model), str(out)]
    if emulated:
        cmd = [QEMU, "-cpu", "Haswell-noTSX", *cmd]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return np.load(out)


def _int8_weights(path) -> list[np.ndarray]:
    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    return [numpy_helper.to_array(inits[n.input[0]]) for n in model.graph.node
            if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].data_type == onnx.TensorProto.INT8]


def test_the_int8_kernel_is_read_from_the_flags():
    assert int8_kernel(VNNI) == "vnni" and int8_kernel(AVX2_ONLY | {"avx_vnni"}) == "vnni"
    assert int8_kernel(AVX2_ONLY) == "pairwise16" and int8_kernel(AVX512_NO_VNNI) == "pairwise16"
    assert int8_kernel({"fp", "asimd"}) == "other" and int8_kernel(set()) == "other"


def test_whether_the_measured_agreement_holds_depends_on_format_and_kernel():
    vnni = {"format": "vnni", "exact_on": "CPUs with VNNI (AVX-512 VNNI, AVX-VNNI)", "agreement": 0.991,
            "measured_on": {"int8_kernel": "vnni"}}
    portable = {**vnni, "format": "portable", "exact_on": "every CPU"}
    assert int8_on_this_cpu(portable, AVX2_ONLY)["holds"] is True
    assert int8_on_this_cpu(vnni, VNNI)["holds"] is True
    moved = int8_on_this_cpu(vnni, AVX2_ONLY)
    assert moved["holds"] is False and "--int8-format portable" in moved["note"] and "99.10%" in moved["note"], moved
    assert int8_on_this_cpu({}, VNNI)["holds"] is None, "an artifact without the record cannot be vouched for"


@needs_qemu
def test_premise_full_range_weights_saturate_on_avx2_and_7_bit_ones_do_not(tmp_path):
    """The reason for the portable format, pinned on ORT itself: a 1x1 convolution over 64 channels of
    the largest activation with the largest weights is 64 exactly; ORT's AVX2 kernel clips each
    pair of products at 32,767 and answers about half that with full-range weights, not with 7-bit ones."""
    from onnx import TensorProto, helper
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    c = 64
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "sat",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, c, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4, 2, 2])],
                              [numpy_helper.from_array(np.ones((4, c, 1, 1), np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "f.onnx")

    class Reader(CalibrationDataReader):
        def __init__(self):
            # the ramp for the input's range, all ones so the output's range reaches 64
            self.feeds = [{"x": np.linspace(0, 1, 4 * c * 4, dtype=np.float32).reshape(4, c, 2, 2)},
                          {"x": np.ones((1, c, 2, 2), np.float32)}]

        def get_next(self):
            return self.feeds.pop() if self.feeds else None

    x = np.ones((1, c, 2, 2), np.float32)
    for name, reduce_range in (("full", False), ("reduced", True)):
        quantize_static(str(tmp_path / "f.onnx"), str(tmp_path / f"{name}.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=reduce_range,
                        per_channel=True)
    full, reduced = (_run(tmp_path / f"{n}.onnx", x, tmp_path, emulated=True) for n in ("full", "reduced"))
    assert np.allclose(reduced, 64, atol=0.5), f"7-bit weights must sum exactly on AVX2, got {reduced.ravel()[:4]}"
    assert full.max() < 40, (f"full-range weights were expected to saturate on ORT's AVX2 kernel (about 32), got "
                             f"{full.ravel()[:4]}: if ORT stopped saturating, the portable default costs precision for nothing")
    if int8_kernel() == "vnni":
        native = _run(tmp_path / "full.onnx", x, tmp_path, emulated=False)
        assert np.allclose(native, 64, atol=0.5), f"VNNI sums exactly, got {native.ravel()[:4]}"


@pytest.fixture(scope="module")
def exported(trained_run, synth_root, tmp_path_factory):
    """{format: (model.onnx, report)} for the default (portable, ladder) and a full-range vnni export."""
    out = {}
    for fmt, extra in (("portable", []), ("vnni", ["--int8-format", "vnni", "--int8-float-convs", "0"])):
        folder = tmp_path_factory.mktemp(f"int8-{fmt}")
        path, report = folder / "model.onnx", folder / "report.json"
        rc = export_main(["--checkpoint", str(trained_run / "best.pt"), "--out", str(path), "--int8", "-q",
                          "--int8-calibration-images", "16", "--int8-check-images", str(synth_root / "eval" / "images"),
                          "--report", str(report), *extra])
        assert rc == 0, f"mask-export --int8 {' '.join(extra)} failed with {rc}"
        out[fmt] = (path, json.loads(report.read_text()))
    return out


def test_the_default_export_is_portable_and_records_its_choice(exported):
    path, report = exported["portable"]
    int8 = path.with_name("model.int8.onnx")
    q = read_metadata(int8).quantization
    assert q["format"] == "portable" and q["exact_on"] == "every CPU", q
    assert q["measured_on"]["int8_kernel"] == int8_kernel() and q["measured_on"]["simd"] is not None, q
    weights = _int8_weights(int8)
    assert weights, "the INT8 model has no int8 weights"
    peak = max(int(np.abs(w.astype(int)).max()) for w in weights)
    assert peak <= 64, f"portable weights must stay in the 7-bit range (|w| <= 64) so pairs cannot saturate; got {peak}"
    ladder = [c["float_convs"] for c in q["candidates"]]
    assert ladder == sorted(ladder) and ladder[0] == 0, f"the ladder climbs from no float layer: {ladder}"
    kept = [c for c in q["candidates"] if c["agreement"] >= 0.99]
    chosen = kept[0] if kept else max(q["candidates"], key=lambda c: c["agreement"])
    assert q["float_convs"] == chosen["float_convs"] and q["agreement"] == chosen["agreement"], (q, chosen)
    assert report["variants"]["int8"]["argmax_agreement"] == pytest.approx(q["agreement"]), \
        "the report and the artifact must state the same agreement"
    assert q["why"], "the artifact must say why this rung was taken"


def test_a_vnni_export_keeps_full_range_weights_and_says_where_it_is_exact(exported):
    path, _ = exported["vnni"]
    q = read_metadata(path.with_name("model.int8.onnx")).quantization
    assert q["format"] == "vnni" and "VNNI" in q["exact_on"] and q["float_convs"] == 0, q
    assert q["candidates"] == [c for c in q["candidates"] if c["float_convs"] == 0], "--int8-float-convs 0: one rung"
    peak = max(int(np.abs(w.astype(int)).max()) for w in _int8_weights(path.with_name("model.int8.onnx")))
    assert peak > 64, f"full-range weights should use the int8 range beyond 64, got at most {peak}"


def test_serving_reports_whether_the_agreement_holds_on_its_cpu(exported):
    from serving.predictor import load_predictor

    info = load_predictor(exported["portable"][0], "int8").info()
    here = info["quantization"]["on_this_cpu"]
    assert here["holds"] is True and here["int8_kernel"] == int8_kernel(), here
    assert load_predictor(exported["portable"][0], "fp32").info()["quantization"] == {}, "FP32 has no INT8 record"


@needs_qemu
@pytest.mark.slow
def test_the_portable_artifact_answers_identically_on_an_avx2_only_cpu(exported, tmp_path):
    int8 = exported["portable"][0].with_name("model.int8.onnx")
    h, w = read_metadata(int8).preprocess.size[::-1]
    x = np.random.default_rng(0).integers(0, 256, (16, h, w, 3), dtype=np.uint8)
    native, emulated = _run(int8, x, tmp_path, emulated=False), _run(int8, x, tmp_path, emulated=True)
    assert (native.argmax(1) == emulated.argmax(1)).all(), "the portable INT8 model answered differently on AVX2"
    assert np.abs(native - emulated).max() < 1e-5, f"probabilities moved by {np.abs(native - emulated).max():.3g}"
