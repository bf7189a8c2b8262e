"""bf16 on the CPU: the PyTorch backend under ``torch.autocast("cpu", dtype=torch.bfloat16)`` vs FP32.

Model-only img/s (in-memory uint8 batches of 64 through the checkpoint's own preprocessing graph,
eval mode, ``inference_mode``) of FP32 and bf16 autocast, and bf16's argmax agreement with FP32
on held-out images, with the CPU's SIMD flags (bf16 is fast only with avx512_bf16 / amx_bf16)::

    python -m bench.bf16 --checkpoint data/bench/bench-runs/resnet18-6ep/best.pt --check-dir data/bench/eval/images \
        --onnx data/bench/bench-runs/resnet18-128x96/model.onnx --info data/bench/eval/info.csv

(``--info``: also ``mask-submit`` end to end on those images, ONNX Runtime FP32 vs ``--precision bf16``.)

Writes ``bench/results/bf16.json`` (rendered into docs/benchmarks.md). ``--precision bf16`` ships
only if it is faster than FP32 — PyTorch eager and the ONNX Runtime FP32 path (``--onnx``) — at
>= 99 % agreement.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from bench import common

log = logging.getLogger(__name__)


def measure(checkpoint: Path, check_dir: Path, n_check: int, batch_size: int = 64,
            onnx_path: Path | None = None) -> dict:
    import torch

    from export.parity import list_images, load_batch
    from serving.torch_backend import TorchBackend

    backend = TorchBackend(checkpoint, device="cpu")
    model = backend.model
    batch = load_batch(list_images(check_dir, n_check), backend.metadata.preprocess)

    def run(x: np.ndarray, bf16: bool) -> np.ndarray:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return model(torch.from_numpy(np.ascontiguousarray(x))).float().argmax(1).numpy()

    preds = {}
    for name, bf16 in (("fp32", False), ("bf16", True)):
        preds[name] = np.concatenate([run(batch[i:i + batch_size], bf16) for i in range(0, len(batch), batch_size)])
    x = batch[:batch_size]
    speed = {}
    for name, bf16 in (("fp32", False), ("bf16", True)):
        t = common.time_calls(lambda: run(x, bf16), warmup=1, min_repeats=5, budget_s=3.0, cap_s=10.0)
        speed[name] = batch_size / t.median
    if onnx_path is not None:   # the product's FP32 path on the same weights: what bf16 must beat to ship
        from serving.predictor import Predictor

        ort = Predictor(onnx_path)
        t = common.time_calls(lambda: ort.infer(x), warmup=1, min_repeats=5, budget_s=3.0, cap_s=10.0)
        speed["onnx_fp32"] = batch_size / t.median
    agreement = float((preds["fp32"] == preds["bf16"]).mean())
    log.info("torch fp32 %.1f img/s, bf16 autocast %.1f img/s, agreement %.2f%% on %d", speed["fp32"],
             speed["bf16"], 100 * agreement, len(batch))
    return {"checkpoint": str(checkpoint), "arch": backend.metadata.arch, "images": len(batch),
            "batch_size": batch_size, "torch_threads": torch.get_num_threads(),
            "img_per_s": speed, "bf16_speedup": speed["bf16"] / speed["fp32"], "argmax_agreement": agreement,
            "ships": speed["bf16"] > max(v for k, v in speed.items() if k != "bf16") and agreement >= 0.99}


def end_to_end(checkpoint: Path, onnx_path: Path, info: Path, images: Path) -> dict:
    """mask-submit as a command on the ONNX FP32 export and on the checkpoint under bf16 autocast:
    wall time, img/s and peak RSS of each, and the share of identical answers."""
    import tempfile

    from bench.batch_job import read_ans

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        runs = {"onnx_fp32": common.timed_submit(onnx_path, info, images, work / "fp32.csv"),
                "bf16": common.timed_submit(checkpoint, info, images, work / "bf16.csv", ["--precision", "bf16"])}
        a, b = read_ans(work / "fp32.csv"), read_ans(work / "bf16.csv")
    return {**runs, "identical": sum(a[k] == b[k] for k in a) / len(a),
            "speedup": runs["bf16"]["img_per_s"] / runs["onnx_fp32"]["img_per_s"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bf16", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--check-dir", type=Path, required=True)
    p.add_argument("--check-images", type=int, default=1000, help="default %(default)s")
    p.add_argument("--onnx", type=Path, help="the same weights exported: ORT FP32 timed in the same run")
    p.add_argument("--info", type=Path,
                   help="with --onnx: also run mask-submit end to end on this info.csv (images in --check-dir), "
                        "ONNX Runtime FP32 vs --precision bf16 on the checkpoint")
    p.add_argument("--out", type=Path, default=common.RESULTS_DIR / "bf16.json")
    args = p.parse_args(argv)
    common.setup_logging()
    if args.info and not args.onnx:
        p.error("--info needs --onnx (the FP32 path bf16 is compared with)")

    def body() -> None:
        for path in (args.checkpoint, args.check_dir, args.onnx, args.info):
            if path is not None and not path.exists():
                raise FileNotFoundError(f"not found: {path}")
        started = common.utc_now()
        with common.CpuMonitor() as monitor:
            result = measure(args.checkpoint, args.check_dir, args.check_images, onnx_path=args.onnx)
            if args.info:
                result["end_to_end"] = end_to_end(args.checkpoint, args.onnx, args.info, args.check_dir)
        common.save_run("bf16", argv, started, monitor, False, {"check_images": args.check_images}, result,
                        args.out)

    return common.run_part(body, no_report=True)


if __name__ == "__main__":
    raise SystemExit(main())
