"""Which INT8 model ``mask-export --int8`` writes, chosen by measurement and recorded in the artifact.

    report, record = choose_int8("model.onnx", "model.int8.onnx", calibration, check, y_true)

An INT8 artifact is built once and served on many CPUs, so its answers must not depend on which one.
The default format, ``portable`` (int8 weights in a 7-bit range), gives the same integer sums on
every ONNX Runtime kernel, VNNI or not (:mod:`maskdata.cpu` explains why), so the agreement measured
here holds on an AVX2-only CPU too; ``vnni`` (full-range weights) is a user's explicit choice for a
fleet of VNNI CPUs, and serving warns where it runs on another kind.

Quantization error is not spread evenly: the early, high-resolution convolutions move the answers
most (measured on resnet18: keeping the stem and the first stage float took agreement from 99.10 %
to 99.62 %; any single later layer changed it by at most ±0.2 points). So the choice climbs a short
ladder of "first K convolutions stay float" (:func:`float_ladder`), measuring agreement with FP32 and
speed on the check images at each rung, and takes the first (fastest) rung that keeps
``min_agreement``; if none does, the one that agrees best, and says so. The artifact's
``quantization`` metadata records the format, the rung, every candidate measured, the CPU they were
measured on and why this one was taken.
"""
from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from export.graph import save_checked, set_metadata
from export.parity import compare, onnx_probs, onnx_session
from export.variants import (DEFAULT_CALIBRATION, DEFAULT_INT8_FORMAT, INT8_FORMATS, MIN_INT8_AGREEMENT,
                             VariantReport, _load, time_sessions, to_int8)
from maskdata import metrics
from maskdata.artifact import read_metadata
from maskdata.cpu import describe

log = logging.getLogger(__name__)

TIMING_IMAGES = 64        # images in the timed batch of each candidate


def float_ladder(convs: int) -> list[int]:
    """How many leading Conv nodes stay float at each rung: none, the stem, a quarter, a half."""
    return sorted({k for k in (0, 1, convs // 4, convs // 2) if 0 <= k <= convs})


def choose_int8(src: str | os.PathLike, dst: str | os.PathLike, calibration: np.ndarray, check: np.ndarray,
                y_true: np.ndarray | None = None, *, fmt: str = DEFAULT_INT8_FORMAT, method: str = DEFAULT_CALIBRATION,
                float_convs: int | None = None, min_agreement: float = MIN_INT8_AGREEMENT,
                providers: list[str] | None = None) -> tuple[VariantReport, dict]:
    """Quantize ``src`` into ``dst`` (``fmt``; ``float_convs`` fixed, or None to climb the ladder),
    measured against FP32 on ``check``; (the chosen model's report, its ``quantization`` record)."""
    if fmt not in INT8_FORMATS:
        raise ValueError(f"unknown INT8 format {fmt!r}; expected one of {', '.join(INT8_FORMATS)}")
    s32 = onnx_session(src, providers)
    p32 = onnx_probs(s32, check)
    f1_32 = None if y_true is None else metrics.macro_f1(y_true, p32.argmax(1))
    candidates: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="mask-int8-choice-") as tmp:
        cache = Path(tmp) / "calibration.json"
        first = Path(tmp) / "k0.onnx"
        to_int8(src, first, calibration, method=method, fmt=fmt, float_convs=float_convs or 0, cache=cache)
        convs = read_metadata(first).quantization["convs"]
        rungs = [float_convs] if float_convs is not None else float_ladder(convs)
        for k in rungs:
            path = first if k == (float_convs or 0) else Path(tmp) / f"k{k}.onnx"
            if not path.is_file():
                to_int8(src, path, calibration, method=method, fmt=fmt, float_convs=k, cache=cache)
            session = onnx_session(path, providers)
            probs = onnx_probs(session, check)
            diff, agree = compare(p32, probs)
            t32, t8 = time_sessions([s32, session], check[:TIMING_IMAGES])
            candidates.append({"float_convs": k, "agreement": agree, "max_abs_diff": diff, "speedup": t32 / t8,
                               "fp32_seconds": t32, "int8_seconds": t8, "path": path,
                               "f1": None if y_true is None else metrics.macro_f1(y_true, probs.argmax(1))})
            log.info("INT8 %s, first %d of %d convolutions float: agreement %.2f%% on %d images, %.2fx FP32",
                     fmt, k, convs, 100 * agree, len(check), t32 / t8)
            if agree >= min_agreement:
                break
        chosen = next((c for c in candidates if c["agreement"] >= min_agreement), None)
        if chosen is not None:
            why = (f"the fastest measured rung keeping >= {min_agreement:.0%} argmax agreement with FP32"
                   if float_convs is None else f"--int8-float-convs {float_convs}, as asked")
        else:
            chosen = max(candidates, key=lambda c: (c["agreement"], c["speedup"]))
            why = (f"no rung kept {min_agreement:.0%} agreement; this one agreed best "
                   f"({chosen['agreement']:.2%}): consider FP32 for this model")
            log.warning("INT8: %s", why)
        model = _load(chosen["path"])
        meta = read_metadata(chosen["path"])
        record = {**meta.quantization, "agreement": chosen["agreement"], "check_images": len(check),
                  "speedup": chosen["speedup"], "measured_on": describe(), "why": why,
                  "candidates": [{k: v for k, v in c.items() if k not in ("path", "fp32_seconds", "int8_seconds")}
                                 for c in candidates]}
        set_metadata(model, replace(meta, quantization=record))
        save_checked(model, dst)
    report = VariantReport("int8", len(check), chosen["agreement"], chosen["max_abs_diff"], f1_32, chosen["f1"],
                           chosen["fp32_seconds"], chosen["int8_seconds"], s32.get_providers()[0],
                           len(check[:TIMING_IMAGES]))
    return report, record
