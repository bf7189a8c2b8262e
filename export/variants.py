"""FP16 and INT8 variants of an exported FP32 model, and how far they move from it.

    to_fp16("model.onnx", "model.fp16.onnx")                       # for GPUs; input uint8, outputs float32
    to_int8("model.onnx", "model.int8.onnx", calibration_batch)    # static QDQ quantization (ORT)
    compare_variant("model.onnx", "model.int8.onnx", batch, y_true)  # agreement, macro-F1 delta, CPU speed

Both keep the ``image`` uint8 input and float32 ``logits``/``probs`` outputs, carry the FP32
model's metadata with ``precision`` changed, pass ``onnx.checker`` and are written atomically.
"""
from __future__ import annotations

import logging
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from maskdata import metrics
from maskdata.artifact import INPUT_NAME, read_metadata, variant_path  # noqa: F401  (variant_path: export's callers)

from export.graph import save_checked, set_metadata
from export.parity import compare, onnx_probs, onnx_session

log = logging.getLogger(__name__)

# Conv/Gemm/MatMul carry the compute; quantizing the small float tail (softmax, joint log-probs,
# ensemble mean) would cost accuracy for no speed. The classifier heads (Gemm/MatMul) stay float by
# default too: on a trained resnet18 that kept 99.38 % of FP32's answers instead of 99.00 %, at no
# measurable speed cost (docs/benchmarks.md, INT8 calibration).
INT8_OP_TYPES = ("Conv", "Gemm", "MatMul")
HEAD_OP_TYPES = ("Gemm", "MatMul")


def _load(path):
    import onnx

    return onnx.load(str(path))


def to_fp16(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """FP16 weights and activations; Cast(uint8→float) becomes Cast(uint8→float16), outputs stay float32."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    meta = read_metadata(src)
    model = convert_float_to_float16(_load(src), keep_io_types=True)
    set_metadata(model, replace(meta, precision="fp16"))
    return save_checked(model, dst)


class _BatchReader(CalibrationDataReader):
    """onnxruntime CalibrationDataReader over an in-memory uint8 batch."""

    def __init__(self, batch: np.ndarray, batch_size: int = 16):  # CALIBRATION_CHUNK
        self.chunks = [np.ascontiguousarray(batch[i:i + batch_size]) for i in range(0, len(batch), batch_size)]
        self.index = 0

    def get_next(self) -> dict | None:
        if self.index >= len(self.chunks):
            return None
        self.index += 1
        return {INPUT_NAME: self.chunks[self.index - 1]}

    def rewind(self) -> None:
        self.index = 0


# How the weights are stored, and so on which CPUs the integer sums are exact (maskdata.cpu explains
# the kernels): "portable" (int8 weights in a 7-bit range: exact on every kernel, the default),
# "u8u8" (uint8 weights: exact on every kernel, another ORT kernel) and "vnni" (full-range int8:
# a bit finer, exact only where the CPU has VNNI; elsewhere pairs of products saturate).
INT8_FORMATS = {
    "portable": {"weights": "int8, 7-bit range (reduce_range)", "exact_on": "every CPU"},
    "u8u8": {"weights": "uint8", "exact_on": "every CPU"},
    "vnni": {"weights": "int8, full range", "exact_on": "CPUs with VNNI (AVX-512 VNNI, AVX-VNNI)"},
}
DEFAULT_INT8_FORMAT = "portable"
MIN_INT8_AGREEMENT = 0.99              # argmax agreement with FP32 an INT8 choice must keep to count as good

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
DEFAULT_CALIBRATION = "percentile"   # measured best by bench/int8_calibration.py (docs/benchmarks.md)
DEFAULT_CALIBRATION_IMAGES = 300
CALIBRATION_CHUNK = 16               # images per calibration call


def to_int8(src: str | os.PathLike, dst: str | os.PathLike, calibration: np.ndarray,
            per_channel: bool = True, method: str = DEFAULT_CALIBRATION, quantize_heads: bool = False,
            fmt: str = DEFAULT_INT8_FORMAT, float_convs: int = 0, cache: str | os.PathLike | None = None) -> Path:
    """Static INT8 quantization (QDQ, uint8 activations, weights as ``fmt`` says: :data:`INT8_FORMATS`;
    ranges from ``calibration``).

    ``method`` is ORT's activation-range calibration: ``minmax`` (the observed extremes),
    ``percentile`` (99.999th percentile of |x|) or ``entropy`` (KL-divergence optimal threshold).

    ``float_convs``: the first this many Conv nodes in graph order stay float (the early,
    high-resolution layers are where quantization moves the answers most: docs/benchmarks.md).
    ``cache``: ORT's calibration cache file (written on the first call, read by later ones on the
    same model and images), so several variants of one model calibrate once.

    ``quant_pre_process`` runs first, as ORT recommends: it folds BatchNorm into Conv and infers
    shapes, without which fewer tensors can be quantized. It drops metadata, so it is set again.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if calibration is None or len(calibration) == 0:
        raise ValueError("INT8 quantization needs calibration images")
    if fmt not in INT8_FORMATS:
        raise ValueError(f"unknown INT8 format {fmt!r}; expected one of {', '.join(INT8_FORMATS)}")
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"unknown INT8 calibration method {method!r}; expected one of {', '.join(CALIBRATION_METHODS)}")
    calibrate = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                 "entropy": CalibrationMethod.Entropy}[method]
    if method != "minmax" and len(calibration) > CALIBRATION_CHUNK:
        # ORT's histogram calibrators stack every chunk's tensors into one array (calibrate.py,
        # HistogramCollector), which fails on a short last chunk: keep whole chunks only
        calibration = calibration[:len(calibration) - len(calibration) % CALIBRATION_CHUNK]
    meta = read_metadata(src)
    with tempfile.TemporaryDirectory(prefix="mask-int8-") as tmp:
        pre, out = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        convs = conv_nodes(pre)
        if not 0 <= float_convs <= len(convs):
            raise ValueError(f"float_convs must be 0..{len(convs)} (the model has {len(convs)} Conv nodes), got {float_convs}")
        quantize_static(str(pre), str(out), _BatchReader(calibration, CALIBRATION_CHUNK), quant_format=QuantFormat.QDQ,
                        per_channel=per_channel, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QUInt8 if fmt == "u8u8" else QuantType.QInt8,
                        reduce_range=fmt == "portable",
                        op_types_to_quantize=[t for t in INT8_OP_TYPES if quantize_heads or t not in HEAD_OP_TYPES],
                        nodes_to_exclude=convs[:float_convs], calibrate_method=calibrate,
                        calibration_cache_path=None if cache is None else str(cache))
        model = _load(out)
    record = {"format": fmt, **INT8_FORMATS[fmt], "activations": "uint8", "calibration": method,
              "calibration_images": len(calibration), "float_convs": float_convs, "convs": len(convs)}
    set_metadata(model, replace(meta, precision="int8", quantization=record))
    return save_checked(model, dst)


def conv_nodes(path: str | os.PathLike) -> list[str]:
    """Names of the Conv nodes of an ONNX file, in graph (topological) order."""
    return [n.name for n in _load(path).graph.node if n.op_type == "Conv"]


def time_sessions(sessions: list, batch: np.ndarray, repeats: int = 5) -> list[float]:
    """Median seconds of one ``run`` on ``batch`` per session, runs interleaved round-robin after a
    warm-up each, so load from other processes hits every session alike."""
    feed = {INPUT_NAME: np.ascontiguousarray(batch)}
    for s in sessions:
        s.run(["probs"], feed)
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(repeats):
        for s, t in zip(sessions, times):
            t0 = time.perf_counter()
            s.run(["probs"], feed)
            t.append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


@dataclass(frozen=True)
class VariantReport:
    precision: str
    images: int
    argmax_agreement: float          # with the FP32 model
    max_abs_diff: float              # of probabilities, vs FP32
    f1_fp32: float | None            # macro F1 on the same images, when their labels are known
    f1_variant: float | None
    fp32_seconds: float | None       # median time of one batch on ``provider`` (interleaved runs)
    variant_seconds: float | None
    provider: str = "CPUExecutionProvider"
    timed_images: int | None = None  # images in the timed batch (default: all of them)

    @property
    def f1_delta(self) -> float | None:
        return None if self.f1_fp32 is None else self.f1_variant - self.f1_fp32

    @property
    def speedup(self) -> float | None:
        """FP32 time / variant time: above 1 means the variant is faster."""
        return None if not self.variant_seconds else self.fp32_seconds / self.variant_seconds

    def summary(self) -> str:
        parts = [f"{self.precision}: argmax agreement with fp32 {self.argmax_agreement:.2%} on {self.images} images",
                 f"max |Δprob| {self.max_abs_diff:.3g}"]
        if self.f1_fp32 is not None:
            parts.append(f"macro F1 {self.f1_variant:.4f} vs {self.f1_fp32:.4f} (Δ {self.f1_delta:+.4f})")
        else:
            parts.append("macro F1 delta: n/a (images have no labels)")
        if self.speedup is not None:
            parts.append(f"{self.provider} batch of {self.timed_images or self.images}: {self.variant_seconds * 1e3:.1f} ms vs "
                         f"{self.fp32_seconds * 1e3:.1f} ms fp32 (speed ratio {self.precision}/fp32 = {self.speedup:.2f}x)")
        return "; ".join(parts)

    def to_dict(self) -> dict:
        return asdict(self) | {"f1_delta": self.f1_delta, "speedup": self.speedup}


def compare_variant(fp32_path: str | os.PathLike, variant: str | os.PathLike, batch: np.ndarray,
                    y_true: np.ndarray | None = None, *, timing: bool = True,
                    providers: list[str] | None = None, timing_images: int | None = None) -> VariantReport:
    """Agreement, macro-F1 delta (when ``y_true`` is known) and speed of ``variant`` against FP32
    (timed on the first ``timing_images`` of ``batch``, default all)."""
    s32, svar = onnx_session(fp32_path, providers), onnx_session(variant, providers)
    p32, pvar = onnx_probs(s32, batch), onnx_probs(svar, batch)
    diff, agree = compare(p32, pvar)
    f1_32 = f1_var = None
    if y_true is not None:
        f1_32 = metrics.macro_f1(y_true, p32.argmax(1))
        f1_var = metrics.macro_f1(y_true, pvar.argmax(1))
    t32 = tvar = None
    if timing:
        t32, tvar = time_sessions([s32, svar], batch[:timing_images])
    return VariantReport(read_metadata(variant).precision, len(batch), agree, diff, f1_32, f1_var, t32, tvar,
                         svar.get_providers()[0], len(batch[:timing_images]))
