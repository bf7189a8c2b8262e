"""REST: ``bentoml serve`` on loopback under 1, 8, 32 and 128 concurrent clients posting real JPEGs
to ``/predict``, then 1 client right after the 128-client burst, side by side in one run:

- ``batching_on``: the service as shipped (dynamic batching, ``serving/batching.py``);
- ``batching_off``: the same with ``MASK_BATCHING=0`` (every request is its own model call);
- ``gallery``: BentoML's gallery pattern (``bench/gallery_service.py``: a ``batchable=True`` API on
  PIL images, torch eager, the same checkpoint via ``--checkpoint``);
- ``noop``: a BentoML endpoint taking the same upload and doing nothing (``bench/noop_service.py``),
  the framework's ceiling.

For each mode the server is started as a subprocess on a free loopback port, polled on ``/readyz``;
the service's modes are checked on ``GET /model`` (a mode the service does not confirm in
``limits.batching`` is reported "not measured") and on ``/metrics`` afterwards (model calls and
mean batch size), loaded by :mod:`bench.loadgen` for a fixed window per level, and always stopped
at the end (SIGTERM to its process group, SIGKILL after a grace period).

    python -m bench.rest --checkpoint run/best.pt           # 4 modes x 5 levels x 10 s
    python -m bench.rest --quick                            # 1 and 8 clients, 3 s each
    python -m bench.rest --model model.onnx --checkpoint best.pt --duration 6 --warmup 1

The model defaults to the batch benchmark's exported plain_cnn (else small_cnn) (``data/bench/bench-runs``) or,
when that does not exist, a random-init ``small_cnn`` exported here (speed does not depend on
the weights). Images default to the synthetic eval set of ``bench.batch_job``.
Writes ``bench/results/rest.json`` and re-renders ``docs/benchmarks.md``.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from bench import common
from bench.loadgen import multipart_body, run_load

log = logging.getLogger(__name__)

CLIENTS = (1, 8, 32, 128)
AFTER_BURST = "1 after 128"


@dataclass(frozen=True)
class Mode:
    env: dict
    target: str | None = None  # None: the service, from bentofile.yaml
    field: str = "image"       # the multipart field its /predict takes

    @property
    def ours(self) -> bool:
        return self.target is None


# The service's own switch (serving/settings.py); each of its modes is checked against GET /model.
MODES = {"batching_on": Mode({"MASK_BATCHING": "1"}), "batching_off": Mode({"MASK_BATCHING": "0"}),
         "gallery": Mode({}, "bench.gallery_service:Gallery", "images"),
         "noop": Mode({}, "bench.noop_service:Noop")}
DEFAULT_DATA = common.REPO_ROOT / "data" / "bench"


@dataclass(frozen=True)
class RestConfig:
    model: str
    images: tuple[str, ...]
    clients: tuple[int, ...] = CLIENTS
    duration_s: float = 10.0
    warmup_s: float = 2.0
    start_timeout_s: float = 180.0
    modes: tuple[str, ...] = tuple(MODES)
    checkpoint: str | None = None  # the gallery mode's torch checkpoint (the ONNX model's source)
    after_burst: bool = True       # 1 client right after the largest level


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``bentoml serve`` in its own process group; ``stop()`` always leaves nothing running."""

    def __init__(self, model: str, env_extra: dict[str, str], log_path: Path, service: str | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "MASK_MODEL": model, "BENTOML_DO_NOT_TRACK": "True", **env_extra}
        # the documented command, `bentoml serve` from the root, reads bentofile.yaml
        if service:
            target = [service]
        else:
            target = [] if (common.REPO_ROOT / "bentofile.yaml").is_file() else ["serving.service:MaskClassifier"]
        script = Path(sys.executable).with_name("bentoml")  # a layered venv may only have `python -m bentoml`
        launcher = [str(script)] if script.is_file() else [sys.executable, "-m", "bentoml"]
        self.command = [*launcher, "serve", *target,
                        "--host", "127.0.0.1", "--port", str(self.port)]
        self.log_path = log_path
        self._log = open(log_path, "wb")
        log.info("starting MASK_MODEL=%s %s %s", model, " ".join(f"{k}={v}" for k, v in env_extra.items()),
                 " ".join(self.command))
        self.proc = subprocess.Popen(self.command, cwd=common.REPO_ROOT, env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout_s: float) -> float:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < timeout_s:
            if self.proc.poll() is not None:
                raise ValueError(f"bentoml serve exited with code {self.proc.returncode}; see {self.log_path}: "
                                 f"{self.tail()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return time.perf_counter() - t0
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise ValueError(f"bentoml serve not ready after {timeout_s:.0f} s; see {self.log_path}: {self.tail()}")

    def tail(self, lines: int = 3) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").strip().splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, grace_s: float = 20.0) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
            except ProcessLookupError:
                pass
        # workers that outlived the arbiter (same process group) must not keep the port or the CPUs
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._log.close()


def default_model(workdir: Path) -> str:
    for arch in ("plain_cnn", "small_cnn"):  # the default recipe's model first (make bench exports it)
        trained = DEFAULT_DATA / "bench-runs" / arch / "model.onnx"
        if trained.is_file():
            return str(trained)
    from bench.model_only import _metadata
    from export.graph import export_onnx
    from maskdata.preprocess import Preprocess
    from training.models import create_model

    net = create_model("small_cnn", "multi", preprocess=Preprocess(128, 96)).eval()
    log.info("no trained bench model; exporting a random-init small_cnn to %s", workdir)
    return str(export_onnx(net, workdir / "small_cnn_random.onnx", metadata=_metadata(net)))


def default_images(n: int = 64) -> list[str]:
    folder = DEFAULT_DATA / "eval" / "images"
    if not folder.is_dir():
        from maskdata.synth import generate

        log.info("no synthetic images yet; generating a small set in %s", DEFAULT_DATA.parent / "bench-rest")
        root = DEFAULT_DATA.parent / "bench-rest"
        if not (root / "eval").is_dir():
            generate(root, people=1, eval_people=10, seed=0)
        folder = root / "eval" / "images"
    return [str(p) for p in sorted(folder.glob("*.jpg"))[:n]]


def batch_size_metrics(url: str) -> dict | None:
    """Batched model calls and their mean size, from the service's ``mask_predict_batch_size`` histogram
    (or BentoML's own ``adaptive_batch_size`` one, which the gallery pattern's batchable API feeds) on
    /metrics; None if none."""
    try:
        text = httpx.get(url + "/metrics", timeout=10).text
    except httpx.HTTPError:
        return None
    sums: dict[str, float] = {}
    for line in text.splitlines():
        for metric in ("mask_predict_batch_size", "bentoml_service_adaptive_batch_size"):
            for part in ("_sum", "_count"):
                if line.startswith(metric + part):
                    sums[metric + part] = sums.get(metric + part, 0.0) + float(line.rsplit(" ", 1)[1])
    for metric in ("mask_predict_batch_size", "bentoml_service_adaptive_batch_size"):
        count = sums.get(metric + "_count", 0.0)
        if count:
            return {"metric": metric, "model_calls": int(count), "mean_batch_size": sums[metric + "_sum"] / count}
    return None


def _confirm(server: Server, mode: str, out: dict) -> bool:
    """The service's modes: GET /model must report the batching switch the mode sets."""
    info = httpx.get(server.url + "/model", timeout=10).json()
    out.update(limits=info.get("limits"), provider=info.get("provider"), arch=info.get("arch"),
               input=info.get("input"))
    batching = (info.get("limits") or {}).get("batching")
    if batching is not (mode == "batching_on"):
        out.update(status="not measured", reason=f"GET /model reports limits.batching={batching!r} under "
                                                 f"{MODES[mode].env}: the service does not confirm this mode")
        log.warning("%s: %s", mode, out["reason"])
        return False
    return True


def bench_mode(cfg: RestConfig, mode: str, images: list[Path], workdir: Path) -> dict:
    spec = MODES[mode]
    env = dict(spec.env)
    if mode == "gallery":
        if not cfg.checkpoint:
            return {"mode": mode, "status": "not measured", "reason": "no --checkpoint for the torch eager model"}
        env["GALLERY_CHECKPOINT"] = cfg.checkpoint
    bodies = [multipart_body(spec.field, p.name, p.read_bytes()) for p in images]
    server = Server(cfg.model, env, workdir / f"server_{mode}.log", spec.target)
    out = {"mode": mode, "env": spec.env, "service": spec.target or "serving.service:MaskClassifier",
           "server_command": " ".join(server.command).replace(str(Path(sys.executable).parent) + "/", ".venv/bin/")}
    try:
        out["ready_s"] = server.wait_ready(cfg.start_timeout_s)
        if spec.ours and not _confirm(server, mode, out):
            return out
        check = httpx.post(server.url + "/predict", content=bodies[0][0],
                           headers={"content-type": bodies[0][1]}, timeout=30)
        if check.status_code != 200 or (mode != "noop" and "class" not in check.text):
            raise ValueError(f"/predict answered {check.status_code}: {check.text[:200]}")
        levels = []
        plan = [(n, str(n), cfg.warmup_s) for n in cfg.clients]
        if cfg.after_burst and max(cfg.clients) > 1:
            plan.append((1, f"1 after {max(cfg.clients)}", 0.0))  # no warm-up: right after the burst
        for n, label, warmup in plan:
            r = asyncio.run(run_load(server.url + "/predict", bodies, n, cfg.duration_s, warmup))
            s = {**r.summary(), "label": label}
            log.info("%s %11s clients: %6.1f req/s p50 %.0f ms p99 %.0f ms errors %d", mode, label, s["req_per_s"],
                     s["p50_ms"] or 0, s["p99_ms"] or 0, s["errors"])
            levels.append(s)
        out.update(status="measured", levels=levels, bentoml_batching=batch_size_metrics(server.url))
        if any(lv["errors"] for lv in levels):
            out["server_log_tail"] = server.tail(20)
    finally:
        server.stop()
    return out


def run(cfg: RestConfig) -> dict:
    images = [Path(p) for p in cfg.images]
    with tempfile.TemporaryDirectory(prefix="bench-rest-") as tmp:
        modes = []
        for m in cfg.modes:
            try:
                modes.append(bench_mode(cfg, m, images, Path(tmp)))
            except ValueError as e:  # a server that will not start is a result for this mode, not the end
                log.error("%s: %s", m, e)
                modes.append({"mode": m, "status": "failed", "reason": str(e)})
    return {"modes": modes}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.rest", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="ONNX model to serve (default: the batch benchmark's plain_cnn or small_cnn, else random init)")
    p.add_argument("--images", nargs="+", help="JPEGs to post in turn (default: 64 synthetic eval images)")
    p.add_argument("--clients", nargs="+", type=int, default=list(CLIENTS), help="concurrency levels (default: 1 8 32 128)")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per level (default: 10)")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each level (default: 2)")
    p.add_argument("--modes", nargs="+", choices=sorted(MODES), default=list(MODES), help="servers to measure")
    p.add_argument("--checkpoint", help="the gallery mode's torch checkpoint (default: best.pt beside --model, "
                                        "or run/best.pt in its folder; else that mode is not measured)")
    p.add_argument("--no-after-burst", action="store_true", help="skip the 1-client level after the largest")
    p.add_argument("--quick", action="store_true", help="1 and 8 clients, 3 s each")
    p.add_argument("--out", type=Path, default=common.RESULTS_DIR / "rest.json", help="result JSON")
    p.add_argument("--no-report", action="store_true", help="do not re-render docs/benchmarks.md")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    common.setup_logging()

    def body() -> None:
        clients, duration, warmup = tuple(args.clients), args.duration, args.warmup
        if args.quick:
            clients, duration, warmup = (1, 8), 3.0, 1.0
        if any(c < 1 for c in clients) or duration <= 0 or warmup < 0:
            raise ValueError("--clients must be >= 1, --duration > 0, --warmup >= 0")
        with tempfile.TemporaryDirectory(prefix="bench-rest-model-") as tmp:
            model = args.model or default_model(Path(tmp))
            if not Path(model).is_file():
                raise FileNotFoundError(f"ONNX model not found: {model}")
            images = tuple(args.images or default_images())
            missing = [p for p in images if not Path(p).is_file()]
            if missing or not images:
                raise FileNotFoundError(f"image(s) not found: {missing[:3] or 'none given'}")
            checkpoint = args.checkpoint or next((str(c) for c in (Path(model).with_name("best.pt"),
                                                                   Path(model).parent / "run" / "best.pt")
                                                  if c.is_file()), None)
            if checkpoint and not Path(checkpoint).is_file():
                raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
            cfg = RestConfig(model=model, images=images, clients=clients, duration_s=duration, warmup_s=warmup,
                             modes=tuple(args.modes), checkpoint=checkpoint, after_burst=not args.no_after_burst)
            started = common.utc_now()
            with common.CpuMonitor() as monitor:
                result = run(cfg)
        config = {**asdict(cfg), "images": len(cfg.images),
                  "model": cfg.model.replace(str(common.REPO_ROOT) + "/", "")}
        common.save_run("rest", argv, started, monitor, args.quick, config, result, args.out)

    return common.run_part(body, args.no_report)


if __name__ == "__main__":
    sys.exit(main())
