"""Model-only throughput: PyTorch eager vs ONNX Runtime FP32 vs ONNX Runtime INT8 on the CPU
(and PyTorch FP16 vs ORT CUDA FP16 / TensorRT when a CUDA device exists).

Every network is the product's own ``MaskNet`` (``training.models.create_model``, random init:
speed does not depend on the weights' values) fed what production feeds it, uint8 NHWC; the ONNX
rows use the product's exporter (``export.graph.export_onnx``, ``export.variants.to_int8``) and
run through the product's ``serving.predictor.Predictor``, so they measure the serving path.
Inputs are random pixels, already in memory: no decoding here (that is ``bench.batch_job``).

    python -m bench.model_only                 # full grid, a few minutes on 2 cores
    python -m bench.model_only --quick         # 2 small archs at 128x96: a smoke run
    python -m bench.model_only --archs resnet18 --sizes 224x224 --batches 1 8 32

Writes ``bench/results/model_only.json`` and re-renders ``docs/benchmarks.md``.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bench import common

log = logging.getLogger(__name__)

# the four, plus small_cnn, the depthwise CPU-sized model of the registry
ARCHS = ("resnet18", "resnet50", "efficientnet_b0", "mobilenet_v3_large", "small_cnn")
SIZES = ((128, 96), (224, 224), (384, 288))
CPU_BATCHES = (1, 32)
GPU_BATCHES = (1, 64, 256)
GPU_SIZES = ((224, 224),)
CPU_BACKENDS = ("torch_eager", "ort_fp32", "ort_int8")
GPU_BACKENDS = ("torch_fp16", "ort_cuda_fp16", "ort_tensorrt_fp16")
QUICK_ARCHS = ("resnet18", "mobilenet_v3_large")


@dataclass(frozen=True)
class GridConfig:
    archs: tuple[str, ...] = ARCHS
    sizes: tuple[tuple[int, int], ...] = SIZES
    batches: tuple[int, ...] = CPU_BATCHES
    gpu_sizes: tuple[tuple[int, int], ...] = GPU_SIZES
    gpu_batches: tuple[int, ...] = GPU_BATCHES
    budget_s: float = 1.0         # timed seconds per cell once min_repeats is reached
    cap_s: float = 4.0            # stop a slow cell after this many timed seconds (>= 1 call)
    min_repeats: int = 3
    threads: int = 0              # 0: each library's default (torch: all cores; ORT: physical cores)
    calib_images: int = 8         # INT8 calibration batch (random pixels: ranges, not accuracy, matter here)
    gpu: bool = True              # measure the GPU rows when CUDA is available


def parse_size(text: str) -> tuple[int, int]:
    """'224x224' (height x width) → (224, 224)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"size must look like HEIGHTxWIDTH, e.g. 128x96; got {text!r}") from None
    if h < 8 or w < 8:
        raise ValueError(f"size must be at least 8x8, got {text!r}")
    return h, w


def _metadata(net, precision: str = "fp32"):
    from maskdata.artifact import ModelMetadata

    return ModelMetadata(preprocess=net.preprocess, arch=net.arch, head=net.head_type, precision=precision,
                         producer_version="bench.model_only (random init)")


def _predictor(path: Path, providers: tuple[str, ...], threads: int, tensorrt: bool = False):
    from serving.predictor import Predictor
    from serving.settings import Settings

    settings = Settings(model=str(path), providers=providers, threads=threads, tensorrt=tensorrt)
    return Predictor(path, settings=settings, warmup=False)


def _row(arch: str, size: tuple[int, int], batch: int, backend: str, device: str, **fields) -> dict:
    return {"arch": arch, "height": size[0], "width": size[1], "batch": batch, "backend": backend,
            "device": device, **fields}


def _timed_row(arch, size, batch, backend, device, fn, cfg: GridConfig, **extra) -> dict:
    try:
        t = common.time_calls(fn, warmup=1, min_repeats=cfg.min_repeats, budget_s=cfg.budget_s, cap_s=cfg.cap_s)
    except Exception as e:  # a backend failing on one cell must not lose the rest of the grid
        log.warning("%s %s %dx%d b%d failed: %s", backend, arch, *size, batch, e)
        return _row(arch, size, batch, backend, device, status="failed", error=str(e).splitlines()[0][:300])
    row = _row(arch, size, batch, backend, device, status="measured", img_per_s=batch / t.median,
               **t.to_dict(), **extra)
    log.info("%-18s %-18s %3dx%-3d b%-3d %8.1f img/s  (%d calls)", backend, arch, *size, batch,
             row["img_per_s"], t.to_dict()["repeats"])
    return row


def cpu_cells(arch: str, size: tuple[int, int], cfg: GridConfig, workdir: Path) -> list[dict]:
    """Eager, ORT FP32 and ORT INT8 rows for one architecture and input size, every batch size."""
    import torch

    from export.graph import export_onnx
    from export.variants import to_int8, variant_path
    from maskdata.preprocess import Preprocess
    from training.models import create_model

    rng = np.random.default_rng(0)
    net = create_model(arch, "single", preprocess=Preprocess(*size)).eval()
    inputs = {b: rng.integers(0, 256, (b, *size, 3), dtype=np.uint8) for b in cfg.batches}
    rows = []
    for b, x in inputs.items():
        xt = torch.from_numpy(x)

        def eager(xt=xt):
            with torch.inference_mode():
                return net(xt)
        rows.append(_timed_row(arch, size, b, "torch_eager", "cpu", eager, cfg))

    onnx_paths: dict[str, Path] = {}
    t0 = time.perf_counter()
    try:
        onnx_paths["ort_fp32"] = export_onnx(net, workdir / f"{arch}_{size[0]}x{size[1]}.onnx",
                                             metadata=_metadata(net))
        log.info("exported %s %dx%d in %.1fs", arch, *size, time.perf_counter() - t0)
        t0 = time.perf_counter()
        calib = rng.integers(0, 256, (cfg.calib_images, *size, 3), dtype=np.uint8)
        onnx_paths["ort_int8"] = to_int8(onnx_paths["ort_fp32"], variant_path(onnx_paths["ort_fp32"], "int8"), calib)
        log.info("quantized %s %dx%d in %.1fs", arch, *size, time.perf_counter() - t0)
    except Exception as e:  # export/quantization failure is a result to report, not a crash
        log.warning("export of %s %dx%d failed: %s", arch, *size, e)
        for backend in ("ort_fp32", "ort_int8"):
            if backend not in onnx_paths:
                rows += [_row(arch, size, b, backend, "cpu", status="failed", error=str(e).splitlines()[0][:300])
                         for b in cfg.batches]

    for backend, path in onnx_paths.items():
        predictor = _predictor(path, ("CPUExecutionProvider",), cfg.threads)
        for b, x in inputs.items():
            extra = {"provider": predictor.provider}
            if backend == "ort_fp32" and b == min(inputs):
                with torch.inference_mode():
                    ref = torch.softmax(net(torch.from_numpy(x)), dim=1).numpy()
                extra["max_abs_diff_vs_eager"] = float(np.abs(predictor.infer(x) - ref).max())
            rows.append(_timed_row(arch, size, b, backend, "cpu", lambda p=predictor, x=x: p.infer(x), cfg, **extra))
    _add_ratios(rows)
    return rows


def _add_ratios(rows: list[dict]) -> None:
    """ratio_to_eager = img/s ÷ eager img/s of the same arch, size and batch."""
    eager = {(r["arch"], r["height"], r["width"], r["batch"]): r.get("img_per_s")
             for r in rows if r["backend"] in ("torch_eager", "torch_fp16") and r.get("status") == "measured"}
    for r in rows:
        base = eager.get((r["arch"], r["height"], r["width"], r["batch"]))
        if r.get("status") == "measured" and base:
            r["ratio_to_eager"] = r["img_per_s"] / base


def gpu_cells(arch: str, size: tuple[int, int], cfg: GridConfig, workdir: Path) -> list[dict]:
    """PyTorch FP16 vs ORT CUDA FP16 vs ORT TensorRT FP16, host uint8 in, host probabilities out."""
    import onnxruntime as ort
    import torch

    from export.graph import export_onnx
    from export.variants import to_fp16, variant_path
    from maskdata.preprocess import Preprocess
    from training.models import create_model

    rng = np.random.default_rng(0)
    net = create_model(arch, "single", preprocess=Preprocess(*size)).eval()
    fp32 = export_onnx(net, workdir / f"{arch}_{size[0]}x{size[1]}_gpu.onnx", metadata=_metadata(net))
    fp16 = to_fp16(fp32, variant_path(fp32, "fp16"))
    # .half() converts the mean/std buffers too, so MaskNet.normalize casts the uint8 input to fp16
    net_fp16 = net.half().cuda().eval()
    inputs = {b: rng.integers(0, 256, (b, *size, 3), dtype=np.uint8) for b in cfg.gpu_batches}
    rows = []
    for b, x in inputs.items():
        xt = torch.from_numpy(x)

        def torch_fp16(xt=xt):
            with torch.inference_mode():
                return net_fp16(xt.cuda()).float().cpu()  # .cpu() synchronizes
        rows.append(_timed_row(arch, size, b, "torch_fp16", "cuda", torch_fp16, cfg))
    sessions = {"ort_cuda_fp16": lambda: _predictor(fp16, ("CUDAExecutionProvider", "CPUExecutionProvider"),
                                                     cfg.threads)}
    if "TensorrtExecutionProvider" in ort.get_available_providers():
        sessions["ort_tensorrt_fp16"] = lambda: _predictor(fp32, (), cfg.threads, tensorrt=True)
    for backend, make in sessions.items():
        try:
            predictor = make()
        except Exception as e:
            rows += [_row(arch, size, b, backend, "cuda", status="failed", error=str(e).splitlines()[0][:300])
                     for b in inputs]
            continue
        if predictor.provider == "CPUExecutionProvider":
            rows += [_row(arch, size, b, backend, "cuda", status="failed",
                          error="ONNX Runtime fell back to the CPU provider") for b in inputs]
            continue
        for b, x in inputs.items():
            rows.append(_timed_row(arch, size, b, backend, "cuda", lambda p=predictor, x=x: p.infer(x), cfg,
                                   provider=predictor.provider))
    if "ort_tensorrt_fp16" not in sessions:
        rows += [_row(arch, size, b, "ort_tensorrt_fp16", "cuda", status="not measured",
                      reason="TensorRT execution provider not available") for b in inputs]
    _add_ratios(rows)
    return rows


def run_grid(cfg: GridConfig) -> dict:
    import torch

    from tqdm import tqdm

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    cuda = cfg.gpu and torch.cuda.is_available()
    cells = [(a, s) for a in cfg.archs for s in cfg.sizes]
    rows: list[dict] = []
    gpu_rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-model-") as tmp:
        for arch, size in tqdm(cells, desc="model-only (cpu)", unit="cell"):
            rows += cpu_cells(arch, size, cfg, Path(tmp))
        if cuda:
            for arch, size in tqdm([(a, s) for a in cfg.archs for s in cfg.gpu_sizes], desc="model-only (gpu)"):
                gpu_rows += gpu_cells(arch, size, cfg, Path(tmp))
    gpu_status = {"measured": bool(gpu_rows), "device": common.gpu_names(),
                  "reason": "" if cuda else ("no CUDA device on this machine" if cfg.gpu else "--no-gpu given")}
    if not cuda:
        gpu_rows = [_row(a, s, b, backend, "cuda", status="not measured", reason=gpu_status["reason"])
                    for a in cfg.archs for s in cfg.gpu_sizes for b in cfg.gpu_batches for backend in GPU_BACKENDS]
    return {"cpu_rows": rows, "gpu_rows": gpu_rows, "gpu": gpu_status,
            "torch_threads": torch.get_num_threads()}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.model_only", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Rows: " + ", ".join(CPU_BACKENDS) + " (CPU); " + ", ".join(GPU_BACKENDS)
                                       + " (only with a CUDA device; otherwise reported as 'not measured').")
    p.add_argument("--quick", action="store_true", help=f"smoke run: {', '.join(QUICK_ARCHS)} at 128x96 only")
    p.add_argument("--archs", nargs="+", default=None, help=f"architectures (default: {' '.join(ARCHS)})")
    p.add_argument("--sizes", nargs="+", default=None, help="input sizes HxW (default: 128x96 224x224 384x288)")
    p.add_argument("--batches", nargs="+", type=int, default=list(CPU_BATCHES), help="CPU batch sizes (default: 1 32)")
    p.add_argument("--gpu-sizes", nargs="+", default=["224x224"], help="input sizes of the GPU rows (default: 224x224)")
    p.add_argument("--gpu-batches", nargs="+", type=int, default=list(GPU_BATCHES), help="GPU batch sizes (default: 1 64 256)")
    p.add_argument("--no-gpu", action="store_true", help="skip the GPU rows even when CUDA is available")
    p.add_argument("--budget", type=float, default=1.0, help="timed seconds per cell after the minimum repeats (default: 1)")
    p.add_argument("--cap", type=float, default=4.0, help="stop a slow cell after this many timed seconds (default: 4)")
    p.add_argument("--min-repeats", type=int, default=3, help="timed calls per cell unless --cap is hit (default: 3)")
    p.add_argument("--threads", type=int, default=0, help="torch and ONNX Runtime intra-op threads (0: library default)")
    p.add_argument("--out", type=Path, default=common.RESULTS_DIR / "model_only.json", help="result JSON")
    p.add_argument("--no-report", action="store_true", help="do not re-render docs/benchmarks.md")
    return p


def config_from_args(args: argparse.Namespace) -> GridConfig:
    from training.models import MODELS

    archs = tuple(args.archs or (QUICK_ARCHS if args.quick else ARCHS))
    for a in archs:
        if a not in MODELS:
            raise ValueError(f"unknown model {a!r}; expected one of {sorted(MODELS)}")
    sizes = tuple(parse_size(s) for s in args.sizes) if args.sizes else (((128, 96),) if args.quick else SIZES)
    if any(b < 1 for b in args.batches + args.gpu_batches):
        raise ValueError("batch sizes must be at least 1")
    if args.budget <= 0 or args.cap <= 0 or args.min_repeats < 1 or args.threads < 0:
        raise ValueError("--budget and --cap must be > 0, --min-repeats >= 1, --threads >= 0")
    return GridConfig(archs=archs, sizes=sizes, batches=tuple(args.batches),
                      gpu_sizes=tuple(parse_size(s) for s in args.gpu_sizes), gpu_batches=tuple(args.gpu_batches),
                      budget_s=args.budget, cap_s=args.cap, min_repeats=args.min_repeats, threads=args.threads,
                      gpu=not args.no_gpu)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    common.setup_logging()

    def body() -> None:
        cfg = config_from_args(args)
        started = common.utc_now()
        with common.CpuMonitor() as monitor:
            result = run_grid(cfg)
        common.save_run("model_only", argv, started, monitor, args.quick, asdict(cfg), result, args.out)

    return common.run_part(body, args.no_report)


if __name__ == "__main__":
    sys.exit(main())
