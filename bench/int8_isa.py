"""INT8 on every x86 CPU: argmax agreement with FP32 on this CPU's kernel and on an AVX2-only one.

ONNX Runtime sums uint8 x int8 products exactly where the CPU has VNNI and in saturating 16-bit
pairs where it does not (maskdata/cpu.py). This bench quantizes one FP32 model in each
``mask-export --int8-format`` (and the float-layer ladder ``mask-export`` climbs by default), then
measures every variant's agreement with FP32 twice on the same held-out images: natively, and under
``qemu-x86_64 -cpu Haswell-noTSX`` (user-mode emulation of an AVX2 + FMA CPU without AVX-512 or VNNI:
ONNX Runtime reads the emulated CPUID and runs its real AVX2 kernels). Speed is native only (an
emulator's speed says nothing); the FP32 reference is the native run (FP32 kernels differ between the
two ISAs by ~1e-6 in probability, measured on ``--fp32-emulated`` images and reported)::

    python -m bench.int8_isa --onnx data/bench/bench-runs/resnet18-6ep/model.onnx \\
        --calibration-dir data/bench/train/images --check-dir data/bench/eval/images

Needs Debian's ``qemu-user`` for the AVX2 column (``apt-get install qemu-user``); without it that
column says "not measured". Writes ``bench/results/int8_isa.json`` (rendered into docs/benchmarks.md).
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import common

log = logging.getLogger(__name__)

EMULATED_CPU = "Haswell-noTSX"      # AVX2 + FMA, no AVX-512, no VNNI
# (row name, --int8-format, --int8-float-convs or None for the ladder)
VARIANTS = (("vnni, all convolutions int8", "vnni", 0), ("u8u8, all convolutions int8", "u8u8", 0),
            ("portable, all convolutions int8", "portable", 0), ("mask-export default (portable + ladder)", "portable", None))


def emulated_probs(models: list[Path], images: np.ndarray, tmp: Path) -> list[np.ndarray] | None:
    """Each model's probabilities on ``images`` computed under qemu's AVX2-only CPU; None without qemu."""
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        log.warning("qemu-x86_64 not found (apt-get install qemu-user): the AVX2-only column is not measured")
        return None
    np.save(tmp / "images.npy", images)
    out = tmp / "emulated.npz"
    code = ("import sys, numpy as np, onnxruntime as ort\n"
            "x = np.load(sys.argv[1]); res = {}\n"
            "for i, m in enumerate(sys.argv[3:]):\n"
            "    s = ort.InferenceSession(m, providers=['CPUExecutionProvider'])\n"
            "    res[str(i)] = np.concatenate([s.run(['probs'], {'image': x[j:j + 64]})[0] for j in range(0, len(x), 64)])\n"
            "np.savez(sys.argv[2], **res)\n")
    cmd = [qemu, "-cpu", EMULATED_CPU, sys.executable, "-c", code, str(tmp / "images.npy"), str(out),
           *map(str, models)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"emulated run failed: {done.stderr.strip().splitlines()[-1:]}")
    log.info("emulated %d models on %d images in %.0f s", len(models), len(images), time.perf_counter() - t0)
    arrays = np.load(out)
    return [arrays[str(i)] for i in range(len(models))]


def measure(onnx_path: Path, calibration_dir: Path, check_dir: Path, n_calib: int, n_check: int,
            n_emulated: int, n_fp32_emulated: int) -> dict:
    from export.int8_choice import choose_int8
    from export.parity import list_images, load_batch, onnx_probs, onnx_session
    from export.variants import time_sessions
    from maskdata.artifact import read_metadata
    from maskdata.cpu import describe

    pre = read_metadata(onnx_path).preprocess
    calib = load_batch(list_images(calibration_dir, n_calib), pre)
    check = load_batch(list_images(check_dir, n_check), pre)
    emu = check[np.linspace(0, len(check) - 1, min(n_emulated, len(check))).astype(int)]
    s32 = onnx_session(onnx_path)
    p32, p32_emu = onnx_probs(s32, check), onnx_probs(s32, emu)
    rows, paths = [], []
    with tempfile.TemporaryDirectory(prefix="int8-isa-") as tmp:
        tmp = Path(tmp)
        for i, (name, fmt, float_convs) in enumerate(VARIANTS):
            path = tmp / f"v{i}.onnx"
            t0 = time.perf_counter()
            _, record = choose_int8(onnx_path, path, calib, check, fmt=fmt, float_convs=float_convs)
            quant_s = time.perf_counter() - t0
            s8 = onnx_session(path)
            p8 = onnx_probs(s8, check)
            t32, t8 = time_sessions([s32, s8], check[:64])
            rows.append({"variant": name, "format": fmt, "float_convs": record["float_convs"], "convs": record["convs"],
                         "exact_on": record["exact_on"], "check_images": len(check),
                         "agreement_native": float((p8.argmax(1) == p32.argmax(1)).mean()),
                         "speedup_batch_64": t32 / t8, "choose_s": quant_s, "ladder": record["candidates"],
                         "native_emulated_subset": onnx_probs(s8, emu)})
            paths.append(path)
            log.info("%s: native agreement %.2f%%, %.2fx FP32", name, 100 * rows[-1]["agreement_native"], t32 / t8)
        probs = emulated_probs(paths, emu, tmp)
        fp32_sub = emu[:n_fp32_emulated]
        f32 = emulated_probs([onnx_path], fp32_sub, tmp) if probs is not None and len(fp32_sub) else None
    emulated = None
    if probs is not None:
        emulated = {"cpu": EMULATED_CPU, "images": len(emu), "fp32_images": len(fp32_sub)}
        if f32 is not None:
            emulated["fp32_max_abs_diff"] = float(np.abs(f32[0] - p32_emu[:len(fp32_sub)]).max())
            emulated["fp32_argmax_agreement"] = float((f32[0].argmax(1) == p32_emu[:len(fp32_sub)].argmax(1)).mean())
        for row, pe in zip(rows, probs):
            native = row["native_emulated_subset"]
            row["agreement_emulated"] = float((pe.argmax(1) == p32_emu.argmax(1)).mean())
            row["agreement_native_same_images"] = float((native.argmax(1) == p32_emu.argmax(1)).mean())
            row["emulated_vs_native_max_abs_diff"] = float(np.abs(pe - native).max())
            row["emulated_vs_native_argmax_same"] = float((pe.argmax(1) == native.argmax(1)).mean())
    for row in rows:
        row.pop("native_emulated_subset")
    return {"onnx": str(onnx_path), "native_cpu": describe(), "emulated": emulated, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.int8_isa", description=__doc__.split("\n")[0])
    p.add_argument("--onnx", type=Path, required=True, help="exported FP32 model")
    p.add_argument("--calibration-dir", type=Path, required=True, help="images to calibrate on (training split)")
    p.add_argument("--check-dir", type=Path, required=True, help="held-out images to measure agreement on")
    p.add_argument("--calibration-images", type=int, default=300, help="default %(default)s")
    p.add_argument("--check-images", type=int, default=2100, help="native agreement on these (default %(default)s)")
    p.add_argument("--emulated-images", type=int, default=700,
                   help="of them, evenly drawn, also under the AVX2-only emulator (about 0.3 s each per model; "
                        "default %(default)s)")
    p.add_argument("--fp32-emulated", type=int, default=0, metavar="N",
                   help="also run FP32 under the emulator on the first N of those (slow: ~3 s an image)")
    p.add_argument("--out", type=Path, default=common.RESULTS_DIR / "int8_isa.json")
    args = p.parse_args(argv)
    common.setup_logging()

    def body() -> None:
        for path in (args.onnx, args.calibration_dir, args.check_dir):
            if not path.exists():
                raise FileNotFoundError(f"not found: {path}")
        started = common.utc_now()
        with common.CpuMonitor() as monitor:
            result = measure(args.onnx, args.calibration_dir, args.check_dir, args.calibration_images,
                             args.check_images, args.emulated_images, args.fp32_emulated)
        common.save_run("int8_isa", argv, started, monitor, False, vars(args) | {
            k: str(v) for k, v in vars(args).items() if isinstance(v, Path)}, result, args.out)
        for r in result["rows"]:
            print(json.dumps({k: v for k, v in r.items() if k != "ladder"}))

    return common.run_part(body, no_report=True)


if __name__ == "__main__":
    raise SystemExit(main())
