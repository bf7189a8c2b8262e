"""INT8 calibration choices measured: argmax agreement with FP32 on held-out images, and speed.

For one exported FP32 model, quantizes with each calibration method (minmax / percentile /
entropy), per-channel weights, with the Gemm/MatMul heads in INT8 or kept float, calibrated on
``--calibration-images`` images drawn evenly from ``--calibration-dir`` (the training split), then
compares every variant with FP32 on ``--check-images`` held-out images (``--check-dir``, e.g. the
synthetic eval set of other people): argmax agreement, and macro F1 of both against the truth from
``--answers`` (default: ``answers.csv`` beside the check folder, when there is one)::

    python -m bench.int8_calibration --onnx data/bench/bench-runs/resnet18/model.onnx \\
        --calibration-dir data/bench/train/images --check-dir data/bench/eval/images

Writes ``bench/results/int8_calibration.json`` (rendered into docs/benchmarks.md).
"""
from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

from bench import common

log = logging.getLogger(__name__)

# (method, per-channel weights, quantize the Gemm/MatMul heads too)
CONFIGS = (("minmax", True, True), ("percentile", True, True), ("entropy", True, True),
           ("minmax", True, False), ("percentile", True, False))


def measure(onnx_path: Path, calibration_dir: Path, check_dir: Path, n_calib: int, n_check: int,
            configs=CONFIGS, answers: Path | None = None) -> dict:
    from export.parity import labels_for, labels_from_csv, list_images, load_batch
    from export.variants import compare_variant, to_int8
    from maskdata.artifact import read_metadata

    pre = read_metadata(onnx_path).preprocess
    calib = load_batch(list_images(calibration_dir, n_calib), pre)
    check_paths = list_images(check_dir, n_check)
    check = load_batch(check_paths, pre)
    y = labels_from_csv(check_paths, answers, check_dir) if answers else labels_for(check_paths)
    rows = []
    with tempfile.TemporaryDirectory(prefix="int8-calib-") as tmp:
        for method, per_channel, heads in configs:
            dst = Path(tmp) / f"{method}-{int(per_channel)}-{int(heads)}.onnx"
            t0 = time.perf_counter()
            to_int8(onnx_path, dst, calib, per_channel=per_channel, method=method, quantize_heads=heads)
            quant_s = time.perf_counter() - t0
            full = compare_variant(onnx_path, dst, check, y, timing=True, timing_images=256)
            row = {"method": method, "per_channel": per_channel, "quantize_heads": heads, "calibration_images": len(calib),
                   "quantize_s": quant_s, "check_images": len(check), "argmax_agreement": full.argmax_agreement,
                   "max_abs_diff": full.max_abs_diff, "f1_fp32": full.f1_fp32, "f1_int8": full.f1_variant,
                   "speedup_batch_256": full.speedup}
            log.info("%s per_channel=%s heads=%s: agreement %.2f%% on %d, speed x%.2f", method, per_channel, heads,
                     100 * row["argmax_agreement"], len(check), row["speedup_batch_256"] or 0)
            rows.append(row)
    return {"onnx": str(onnx_path), "answers": str(answers) if answers else None, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.int8_calibration", description=__doc__.split("\n")[0])
    p.add_argument("--onnx", type=Path, required=True, help="exported FP32 model")
    p.add_argument("--calibration-dir", type=Path, required=True, help="images to calibrate on (training split)")
    p.add_argument("--check-dir", type=Path, required=True, help="held-out images to measure agreement on")
    p.add_argument("--calibration-images", type=int, default=300, help="default %(default)s")
    p.add_argument("--check-images", type=int, default=2100, help="default %(default)s")
    p.add_argument("--answers", type=Path,
                   help="ImageID,ans truth for the check images (default: answers.csv beside --check-dir)")
    p.add_argument("--out", type=Path, default=common.RESULTS_DIR / "int8_calibration.json")
    args = p.parse_args(argv)
    common.setup_logging()
    answers = args.answers or (args.check_dir.parent / "answers.csv")

    def body() -> None:
        for path in (args.onnx, args.calibration_dir, args.check_dir, *([args.answers] if args.answers else [])):
            if not path.exists():
                raise FileNotFoundError(f"not found: {path}")
        started = common.utc_now()
        with common.CpuMonitor() as monitor:
            result = measure(args.onnx, args.calibration_dir, args.check_dir, args.calibration_images,
                             args.check_images, answers=answers if answers.is_file() else None)
        common.save_run("int8_calibration", argv, started, monitor, False, vars(args) | {
            k: str(v) for k, v in vars(args).items() if isinstance(v, Path)}, result, args.out)
        for r in result["rows"]:
            print(json.dumps(r))

    return common.run_part(body, no_report=True)


if __name__ == "__main__":
    raise SystemExit(main())
