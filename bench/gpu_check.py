"""``make gpu-check``: the GPU tests and the GPU benchmark rows in one run, one JSON out.

    python3 -m bench.gpu_check            # from the repo root, with the system python3; writes
                                          # ${OUT:-bench/results}/gpu_check.json; exit 1 if a check fails

Made for a lent GPU machine as it is (Python 3.12, torch 2.11, a CPU-only onnxruntime, no bentoml,
no pytest, no package registry): it installs nothing, needs no venv and imports neither bentoml nor
pytest. Every check is a plain function that raises ``Skip(reason)`` when what it needs is absent
(no torch, no CUDA device, no CUDA provider in onnxruntime, no onnx exporter), so on a CPU-only
machine it reports every check as skipped with its reason and every bench row as "not measured".
``tests/test_gpu.py`` runs this command under pytest (marker ``gpu``) and judges its JSON.

Checks: ORT's CUDA provider is active and its probabilities are within FP32 tolerance of the CPU
provider's; the FP16 variant agrees on the argmax; the PyTorch serving backend on CUDA (fp16
autocast) agrees with CPU; one AMP epoch (bf16 and fp16) trains and resumes. Bench rows: PyTorch
on CUDA forward img/s for plain_cnn and resnet18 at 128x96 and 224x224 in fp32/bf16/fp16, and ORT
CUDA img/s for the exported check model. A figure is written only for what ran on a GPU.
"""
from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

FP32_ATOL = 1e-4          # |prob difference| ORT CUDA vs ORT CPU, the exporter's own parity bar
FP16_MIN_AGREEMENT = 0.95  # argmax agreement of the FP16 variant (CUDA) with FP32 (CPU)
AUTOCAST_ATOL = 2e-2       # |prob difference| PyTorch fp16 autocast on CUDA vs fp32 on CPU
BENCH_BATCH, BENCH_ITERS = 64, 20


class Skip(Exception):
    """What the check needs is not on this machine (the message says what)."""


def need_cuda():
    try:
        import torch
    except Exception as e:  # ImportError, or a broken install
        raise Skip(f"torch not importable: {e}") from None
    if not torch.cuda.is_available():
        raise Skip(f"no CUDA device (torch {torch.__version__}, built for CUDA {torch.version.cuda})")
    return torch


def need_ort_cuda():
    try:
        import onnxruntime as ort
    except Exception as e:
        raise Skip(f"onnxruntime not importable: {e}") from None
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise Skip(f"onnxruntime {ort.__version__} has no CUDA provider (providers: {ort.get_available_providers()})")
    return ort


class Workdir:
    """One synthetic data set, one tiny CUDA-trained checkpoint and its ONNX export, made on first use."""

    def __init__(self, root: Path):
        self.root = root
        self._data = self._ckpt = self._onnx = None

    def data(self) -> Path:
        if self._data is None:
            from maskdata.synth import generate

            generate(self.root / "synth", people=16, eval_people=0, seed=0, workers=0)
            self._data = self.root / "synth" / "train"
        return self._data

    def train(self, out: Path, *extra: str) -> int:
        from training.cli import main

        return main(["--data-dir", str(self.data()), "--out", str(out), "--model", "tiny_cnn", "--resize", "64", "48",
                     "--batch-size", "16", "--workers", "0", "--device", "cuda", "--no-progress", *extra])

    def checkpoint(self) -> Path:
        if self._ckpt is None:
            need_cuda()
            assert self.train(self.root / "run", "--epochs", "1") == 0, "training the check model failed"
            self._ckpt = self.root / "run" / "best.pt"
        return self._ckpt

    def onnx(self) -> Path:
        if self._onnx is None:
            try:
                import onnx  # noqa: F401  (the exporter needs it)
                from export.cli import main
            except Exception as e:
                raise Skip(f"ONNX export not possible here: {e}") from None
            path = self.root / "model.onnx"
            assert main(["--checkpoint", str(self.checkpoint()), "--out", str(path), "--fp16", "-q"]) == 0, "export"
            self._onnx = path
        return self._onnx

    def images(self, n: int = 64):
        import numpy as np

        from maskdata.preprocess import Preprocess
        from training.checkpoint import load_checkpoint

        pre = Preprocess.from_dict(load_checkpoint(self.checkpoint())["preprocess"])
        paths = sorted(self.data().rglob("*.jpg"))[:n]
        return np.stack([pre(p) for p in paths])


def check_ort_cuda_parity(w: Workdir) -> dict:
    ort = need_ort_cuda()
    need_cuda()
    from export.parity import compare, onnx_probs, onnx_session

    batch = w.images()
    cpu = onnx_session(w.onnx())
    gpu = onnx_session(w.onnx(), ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert gpu.get_providers()[0] == "CUDAExecutionProvider", f"CUDA provider not active: {gpu.get_providers()}"
    diff, agree = compare(onnx_probs(cpu, batch), onnx_probs(gpu, batch))
    assert diff <= FP32_ATOL, f"ORT CUDA vs CPU max |prob diff| {diff:.2e} > {FP32_ATOL:g}"
    return {"max_abs_diff": diff, "argmax_agreement": agree, "onnxruntime": ort.__version__}


def check_ort_cuda_fp16_argmax(w: Workdir) -> dict:
    need_ort_cuda()
    need_cuda()
    from export.parity import compare, onnx_probs, onnx_session
    from export.variants import variant_path

    batch = w.images()
    fp16 = variant_path(w.onnx(), "fp16")
    gpu = onnx_session(fp16, ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert gpu.get_providers()[0] == "CUDAExecutionProvider", gpu.get_providers()
    diff, agree = compare(onnx_probs(onnx_session(w.onnx()), batch), onnx_probs(gpu, batch))
    assert agree >= FP16_MIN_AGREEMENT, f"FP16 on CUDA agrees on {agree:.1%} of argmaxes (< {FP16_MIN_AGREEMENT:.0%})"
    return {"max_abs_diff": diff, "argmax_agreement": agree}


def check_torch_backend_cuda_autocast(w: Workdir) -> dict:
    need_cuda()
    import numpy as np

    from serving.torch_backend import TorchBackend

    batch = w.images()
    gpu, cpu = TorchBackend(w.checkpoint(), "cuda"), TorchBackend(w.checkpoint(), "cpu")
    assert gpu.provider == "torch:cuda", gpu.provider
    pg, pc = gpu.run(batch), cpu.run(batch)
    assert pg.dtype == np.float32 and np.allclose(pg.sum(1), 1, atol=1e-4), "probabilities must sum to 1"
    diff = float(np.abs(pg - pc).max())
    agree = float((pg.argmax(1) == pc.argmax(1)).mean())
    assert diff <= AUTOCAST_ATOL, f"autocast CUDA vs fp32 CPU max |prob diff| {diff:.2e} > {AUTOCAST_ATOL:g}"
    return {"max_abs_diff": diff, "argmax_agreement": agree}


def check_amp_epoch_and_resume(w: Workdir, amp: str) -> dict:
    torch = need_cuda()
    import math

    from training.checkpoint import load_checkpoint
    from training.cli import main as train_main

    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        raise Skip("this GPU does not support bf16")
    out = w.root / f"amp_{amp}"
    assert w.train(out, "--amp", amp, "--epochs", "2", "--stop-after", "1") == 0, f"--amp {amp} epoch 1 failed"
    rc = train_main(["--resume", str(out / "last.pt"), "--workers", "0", "--no-progress", "--device", "cuda"])
    assert rc == 0, f"--amp {amp} resume failed (exit {rc})"
    ck = load_checkpoint(out / "last.pt")
    losses = [row["train_loss"] for row in ck["history"]]
    assert ck["epoch"] == 2 and ck["config"]["train"]["amp"] == amp, (ck["epoch"], ck["config"]["train"]["amp"])
    assert all(math.isfinite(v) for v in losses), f"non-finite training loss under --amp {amp}: {losses}"
    return {"train_loss": losses, "scaler_scale": ck["scaler"].get("scale")}


CHECKS = {
    "ort_cuda_parity": check_ort_cuda_parity,
    "ort_cuda_fp16_argmax": check_ort_cuda_fp16_argmax,
    "torch_backend_cuda_autocast": check_torch_backend_cuda_autocast,
    "amp_epoch_and_resume_bf16": lambda w: check_amp_epoch_and_resume(w, "bf16"),
    "amp_epoch_and_resume_fp16": lambda w: check_amp_epoch_and_resume(w, "fp16"),
}


def run_checks(w: Workdir) -> dict:
    out = {}
    for name, fn in CHECKS.items():
        t0 = time.perf_counter()
        try:
            out[name] = {"status": "pass", **fn(w)}
        except Skip as e:
            out[name] = {"status": "skip", "reason": str(e)}
        except Exception as e:  # a failing check is reported, the others still run
            out[name] = {"status": "fail", "error": f"{type(e).__name__}: {e}",
                         "traceback": traceback.format_exc()[-3000:]}
        out[name]["seconds"] = round(time.perf_counter() - t0, 2)
        print(f"{name}: {out[name]['status']} {out[name].get('reason', out[name].get('error', ''))}", flush=True)
    return out


def _torch_row(arch: str, hw: tuple[int, int], precision: str) -> dict:
    row = {"engine": "pytorch-cuda", "model": arch, "input": f"{hw[0]}x{hw[1]}", "precision": precision,
           "batch": BENCH_BATCH}
    try:
        torch = need_cuda()
        from maskdata.preprocess import Preprocess
        from training.models import create_model

        model = create_model(arch, "multi", Preprocess(*hw)).cuda().eval().to(memory_format=torch.channels_last)
        x = torch.randint(0, 256, (BENCH_BATCH, hw[0], hw[1], 3), dtype=torch.uint8, device="cuda")
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        with torch.inference_mode(), torch.autocast("cuda", dtype=dtype or torch.float16, enabled=dtype is not None):
            for _ in range(5):
                model(x)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(BENCH_ITERS):
                model(x)
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        row.update(measured=True, img_s=round(BENCH_BATCH * BENCH_ITERS / seconds, 1),
                   device=torch.cuda.get_device_name())
    except Exception as e:   # Skip included: not_measured says which
        not_measured(row, e)
    return row


def not_measured(row: dict, e: Exception) -> None:
    """Mark ``row`` unmeasured: a :class:`Skip`'s reason as it is, any other error as ``failed: ...``."""
    reason = str(e) if isinstance(e, Skip) else \
        f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    row.update(measured=False, reason=reason)


def _train_row(arch: str, hw: tuple[int, int], compiled: bool) -> dict:
    """Training steps (forward + cross-entropy + backward + Adam) under bf16 autocast with channels-last
    weights, eager or through torch.compile; the GPU counterpart of bench.train_ceiling's bare step."""
    row = {"engine": "pytorch-cuda train", "model": arch, "input": f"{hw[0]}x{hw[1]}",
           "precision": "bf16 + channels_last" + (" + torch.compile" if compiled else ""), "batch": BENCH_BATCH}
    try:
        torch = need_cuda()
        from maskdata.preprocess import Preprocess
        from training.models import create_model

        model = create_model(arch, "single", Preprocess(*hw)).cuda().train().to(memory_format=torch.channels_last)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        net = torch.compile(model) if compiled else model
        x = torch.randint(0, 256, (BENCH_BATCH, hw[0], hw[1], 3), dtype=torch.uint8, device="cuda")
        y = torch.randint(0, 18, (BENCH_BATCH,), device="cuda")

        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(net(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        for _ in range(5):   # with torch.compile the first steps compile
            step()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(BENCH_ITERS):
            step()
        torch.cuda.synchronize()
        row.update(measured=True, img_s=round(BENCH_BATCH * BENCH_ITERS / (time.perf_counter() - t0), 1),
                   device=torch.cuda.get_device_name())
    except Exception as e:   # Skip included: not_measured says which
        not_measured(row, e)
    return row


def _ort_row(w: Workdir) -> dict:
    row = {"engine": "onnxruntime-cuda", "model": "tiny_cnn (check model)", "input": "64x48", "precision": "fp32",
           "batch": BENCH_BATCH}
    try:
        need_ort_cuda()
        need_cuda()
        import numpy as np

        from export.parity import onnx_session

        sess = onnx_session(w.onnx(), ["CUDAExecutionProvider"])
        x = np.random.default_rng(0).integers(0, 256, (BENCH_BATCH, 64, 48, 3), dtype=np.uint8)
        for _ in range(5):
            sess.run(["probs"], {"image": x})
        t0 = time.perf_counter()
        for _ in range(BENCH_ITERS):
            sess.run(["probs"], {"image": x})
        row.update(measured=True, img_s=round(BENCH_BATCH * BENCH_ITERS / (time.perf_counter() - t0), 1))
    except Skip as e:
        row.update(measured=False, reason=str(e))
    except Exception as e:
        row.update(measured=False, reason=f"failed: {type(e).__name__}: {e}")
    return row


def run_bench(w: Workdir) -> list[dict]:
    rows = [_torch_row(arch, hw, prec) for arch in ("plain_cnn", "resnet18") for hw in ((128, 96), (224, 224))
            for prec in ("fp32", "bf16", "fp16")]
    rows.append(_ort_row(w))
    rows += [_train_row("resnet18", (128, 96), compiled) for compiled in (False, True)]
    for r in rows:
        print(f"bench {r['engine']} {r['model']} {r['input']} {r['precision']}: "
              f"{r['img_s'] if r['measured'] else 'not measured (' + r['reason'] + ')'}", flush=True)
    return rows


def _environment() -> dict:
    env = {"python": platform.python_version(), "machine": platform.machine(), "torch": None, "cuda_device": None}
    try:
        import torch

        env["torch"] = torch.__version__
        env["cuda_device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    except Exception as e:
        env["torch_error"] = str(e)
    return env


def main() -> int:
    out_dir = Path(os.environ.get("OUT") or "bench/results")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        w = Workdir(Path(tmp))
        checks = run_checks(w)
        bench = run_bench(w)
    result = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "environment": _environment(),
              "checks": checks, "bench": bench,
              "note": "img/s figures exist only for rows with measured: true, i.e. that ran on a GPU"}
    path = out_dir / "gpu_check.json"
    tmp_path = path.with_suffix(".json.tmp")
    tmp_path.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp_path, path)
    failed = [n for n, c in checks.items() if c["status"] == "fail"]
    print(f"wrote {path}; {len(failed)} check(s) failed{': ' + ', '.join(failed) if failed else ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
