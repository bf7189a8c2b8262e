"""Memory under sustained load: a `bentoml serve` worker's RSS after 0, 10k and 50k requests (after a
warm-up round), beside the same request mix through the ``Predictor`` alone in one process; and the
``/submission`` task's worker RSS before, after one 12,600-image archive and after the next.

The load is a bounded loopback loop: ``--threads`` httpx clients on 127.0.0.1, 8 of 9 requests
``/predict`` (one image), 1 of 9 ``/predict_batch`` (4 images). Variants of the service:
``shipped`` (serving.service as it is) and ``bentoml-timeout`` (the same service with BentoML's own
request-timeout middleware put back, bench/upstream_timeout_service.py: the state before the fix
described in serving/request_timeout.py).

    python -m bench.memory_soak                                   # everything (~30 min on 2 busy cores)
    python -m bench.memory_soak --checkpoints 2000,10000 --variants shipped --archive-images 0

Writes ``bench/results/memory_soak.json`` and re-renders docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import io
import itertools
import json
import logging
import os
import sys
import threading
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
import psutil

from bench import common
from bench.rest import Server, default_images, default_model

log = logging.getLogger(__name__)

VARIANTS = {"shipped": None, "bentoml-timeout": "bench.upstream_timeout_service:MaskClassifier"}
BATCH_EVERY, BATCH_IMAGES = 9, 4


def rss_mb(pid: int, children: bool) -> float:
    proc = psutil.Process(pid)
    procs = proc.children(recursive=True) if children else [proc]
    return sum(p.memory_info().rss for p in procs) / 2**20


def load(url: str, n: int, images: list[bytes], threads: int) -> int:
    """``n`` requests from ``threads`` loopback clients; returns how many failed."""
    counter, failed = itertools.count(), []

    def client():
        with httpx.Client(base_url=url, timeout=120) as c:
            while (i := next(counter)) < n:
                if i % BATCH_EVERY == BATCH_EVERY - 1:
                    files = [("images", (f"{k}.jpg", images[(i + k) % len(images)], "image/jpeg"))
                             for k in range(BATCH_IMAGES)]
                    r = c.post("/predict_batch", files=files)
                else:
                    r = c.post("/predict", files={"image": ("a.jpg", images[i % len(images)], "image/jpeg")})
                if r.status_code != 200:
                    failed.append(r.status_code)

    workers = [threading.Thread(target=client) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return len(failed)


def soak_service(args, variant: str, model: str, images: list[bytes], workdir: Path, saved=lambda part: None) -> dict:
    server = Server(model, {"MASK_WORKERS": "1"}, workdir / f"serve-{variant}.log", service=VARIANTS[variant])
    try:
        server.wait_ready(300)
        failed = load(server.url, args.warmup, images, args.threads)
        rows, done, t0 = [{"requests": 0, "rss_mb": rss_mb(server.proc.pid, True)}], 0, time.perf_counter()
        for checkpoint in args.checkpoints:
            failed += load(server.url, checkpoint - done, images, args.threads)
            done = checkpoint
            rows.append({"requests": done, "rss_mb": rss_mb(server.proc.pid, True),
                         "elapsed_s": round(time.perf_counter() - t0, 1), "loadavg": os.getloadavg()[0]})
            log.info("%s: %d requests, workers' RSS %.1f MB", variant, done, rows[-1]["rss_mb"])
            saved({"variant": variant, "warmup": args.warmup, "failed": failed, "rows": rows, "partial": True})
    finally:
        server.stop()
    return {"variant": variant, "warmup": args.warmup, "failed": failed, "rows": rows,
            "growth_mb": rows[-1]["rss_mb"] - rows[0]["rss_mb"]}


def soak_predictor(args, model: str, images: list[bytes]) -> dict:
    """The same request mix, decode -> infer -> labels, through one in-process Predictor."""
    from serving.predictor import Predictor
    from serving.settings import Settings

    predictor = Predictor(model, settings=Settings())

    def one(i: int) -> None:
        k = BATCH_IMAGES if i % BATCH_EVERY == BATCH_EVERY - 1 else 1
        arrays = [predictor.load(images[(i + j) % len(images)]) for j in range(k)]
        for row in predictor.infer(np.stack(arrays)):
            predictor.decode(row)

    for i in range(args.warmup):
        one(i)
    pid, rows, done = os.getpid(), [{"requests": 0, "rss_mb": rss_mb(os.getpid(), False)}], 0
    for checkpoint in args.checkpoints:
        for i in range(done, checkpoint):
            one(i)
        done = checkpoint
        rows.append({"requests": done, "rss_mb": rss_mb(pid, False)})
        log.info("predictor alone: %d requests, RSS %.1f MB", done, rows[-1]["rss_mb"])
    return {"variant": "predictor", "warmup": args.warmup, "rows": rows,
            "growth_mb": rows[-1]["rss_mb"] - rows[0]["rss_mb"]}


def archive_inputs(n: int, workdir: Path) -> tuple[bytes, bytes]:
    """(info.csv bytes, zip bytes) of the first ``n`` images of bench.eval_scale's 12,600-image set."""
    from bench.eval_scale import EVAL_PEOPLE, ensure_data, head_csv

    info, images = ensure_data(common.REPO_ROOT / "data" / "bench-scale", max(EVAL_PEOPLE, -(-n // 7)))
    info = head_csv(info, n, workdir / "info.csv")
    ids = [line.split(",")[0] for line in info.read_text().splitlines()[1:]]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for i in ids:
            z.write(images / i, i)
    return info.read_bytes(), buf.getvalue()


def split_rss_mb(server_pid: int) -> tuple[float, float]:
    """(workers, job processes) resident memory in MB: the /submission job runs in a child of its
    worker (``python -m serving.task_runner``), counted apart so the worker's own figure is seen."""
    workers = jobs = 0
    for p in psutil.Process(server_pid).children(recursive=True):
        try:
            rss, job = p.memory_info().rss, "serving.task_runner" in " ".join(p.cmdline())
        except psutil.NoSuchProcess:
            continue
        jobs, workers = (jobs + rss, workers) if job else (jobs, workers + rss)
    return workers / 2**20, jobs / 2**20


def submission_job(url: str, info: bytes, archive: bytes, pid: int) -> dict:
    """One /submission task, polled to its end; the highest RSS of the workers and of the job process
    seen while it ran (sampled every 0.5 s)."""
    t0 = time.perf_counter()
    with httpx.Client(base_url=url, timeout=600) as c:
        r = c.post("/submission/submit", files={"info": ("info.csv", info, "text/csv"),
                                                "archive": ("images.zip", archive, "application/zip")})
        if r.status_code != 200:
            raise ValueError(f"/submission/submit answered {r.status_code}: {r.text[:200]}")
        task, peak, job_peak = r.json()["task_id"], 0.0, 0.0
        while (status := c.get("/submission/status", params={"task_id": task}).json()["status"]) == "in_progress":
            workers, jobs = split_rss_mb(pid)
            peak, job_peak = max(peak, workers), max(job_peak, jobs)
            time.sleep(0.5)
        rows = c.get("/submission/get", params={"task_id": task}).text.count("\n") - 1
    if status != "completed":
        raise ValueError(f"the /submission task ended {status}")
    return {"wall_s": round(time.perf_counter() - t0, 1), "rows": rows, "peak_rss_mb": peak,
            "job_peak_rss_mb": job_peak}


def soak_submission(args, model: str, workdir: Path) -> dict:
    info, archive = archive_inputs(args.archive_images, workdir)
    server = Server(model, {"MASK_WORKERS": "1", "MASK_TASKS_DIR": str(workdir / "tasks")},
                    workdir / "serve-submission.log")
    try:
        server.wait_ready(300)
        before = split_rss_mb(server.proc.pid)[0]
        jobs = []
        for _ in range(2):
            job = submission_job(server.url, info, archive, server.proc.pid)
            time.sleep(2)
            job["rss_after_mb"], job["job_rss_after_mb"] = split_rss_mb(server.proc.pid)
            log.info("submission of %d images: worker peak %.0f MB, job process peak %.0f MB, worker after %.0f MB "
                     "(before %.0f MB)", job["rows"], job["peak_rss_mb"], job["job_peak_rss_mb"], job["rss_after_mb"],
                     before)
            jobs.append(job)
    finally:
        server.stop()
    return {"images": args.archive_images, "archive_mb": len(archive) / 2**20, "rss_before_mb": before,
            "jobs": jobs, "after_over_before": jobs[-1]["rss_after_mb"] / before}


def run(args, argv) -> None:
    if args.model and not Path(args.model).is_file():
        raise FileNotFoundError(f"model not found: {args.model}")
    workdir = common.REPO_ROOT / "data" / "bench-memory"
    workdir.mkdir(parents=True, exist_ok=True)
    model = args.model or default_model(workdir)
    images = [Path(p).read_bytes() for p in default_images(64)]
    started = common.utc_now()
    result: dict = {"model": model.replace(str(common.REPO_ROOT) + "/", ""), "threads": args.threads,
                    "checkpoints": args.checkpoints, "service": [], "predictor": None, "submission": None}
    config = {k: v for k, v in vars(args).items() if k not in ("out", "merge")}

    def save_partial(part: dict) -> None:  # a long run keeps what it has measured if it is stopped
        snapshot = {**result, "service": [*result["service"], part]}
        common.write_result(args.out, {"name": "memory_soak", "command": common.command_line("bench.memory_soak", argv),
                                       "started": started, "partial": True, "machine": common.machine_info(),
                                       "config": config, **snapshot})

    with common.CpuMonitor() as monitor:
        for variant in args.variants:
            result["service"].append(soak_service(args, variant, model, images, workdir, save_partial))
        if not args.no_predictor:
            result["predictor"] = soak_predictor(args, model, images)
        if args.archive_images:
            result["submission"] = soak_submission(args, model, workdir)
    common.save_run("memory_soak", argv, started, monitor, False, config, result, args.out)


def merge(paths: list[Path], out: Path) -> None:
    """One result from parts measured by separate, possibly concurrent, runs of this script (each
    part keeps its own command and CPU-monitor figures)."""
    parts = []
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"result file not found: {p}")
        parts.append(json.loads(p.read_text()))
    first = parts[0]
    merged = {"name": "memory_soak", "command": " ; ".join(p["command"] for p in parts),
              "started": min(p["started"] for p in parts), "finished": max(p.get("finished", "") for p in parts),
              "partial": any(p.get("partial") for p in parts), "machine": first["machine"],
              "cpu_monitor": first.get("cpu_monitor", {}), "parts": [   # an earlier merge keeps its parts
                  inner for p in parts for inner in p.get("parts") or [
                      {"command": p["command"], "cpu_monitor": p.get("cpu_monitor"), "partial": p.get("partial", False)}]],
              "model": first["model"], "threads": first["threads"],
              "service": [s for p in parts for s in p["service"]],
              "predictor": next((p["predictor"] for p in parts if p.get("predictor")), None),
              "submission": next((p["submission"] for p in parts if p.get("submission")), None)}
    common.write_result(out, merged)


def _ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated request counts, got {text!r}") from None
    if not values or values != sorted(values) or values[0] <= 0:
        raise argparse.ArgumentTypeError(f"expected increasing positive counts, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.memory_soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="ONNX model (default: the bench's trained one, else a random-init small_cnn)")
    p.add_argument("--checkpoints", type=_ints, default=[10_000, 50_000],
                   help="request counts after warm-up at which RSS is read (default: 10000,50000)")
    p.add_argument("--warmup", type=int, default=1000, help="requests before the first reading (default: 1000)")
    p.add_argument("--threads", type=int, default=8, help="concurrent loopback clients (default: 8)")
    p.add_argument("--variants", type=lambda s: [v for v in s.split(",") if v], default=list(VARIANTS),
                   help=f"service variants, comma-separated, of {', '.join(VARIANTS)} (default: both; '' for none)")
    p.add_argument("--no-predictor", action="store_true", help="skip the Predictor-alone row")
    p.add_argument("--archive-images", type=int, default=12_600,
                   help="images in each /submission archive (0: skip that part; default: 12600)")
    p.add_argument("--out", type=Path, default=common.RESULTS_DIR / "memory_soak.json", help="result JSON")
    p.add_argument("--no-report", action="store_true", help="do not re-render docs/benchmarks.md")
    p.add_argument("--merge", type=Path, nargs="+", metavar="JSON",
                   help="measure nothing: combine these result files of separate runs into --out")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    common.setup_logging()
    if unknown := [v for v in args.variants if v not in VARIANTS]:
        print(f"error: unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    if args.merge:
        return common.run_part(lambda: merge(args.merge, args.out), args.no_report)
    return common.run_part(lambda: run(args, argv), args.no_report)


if __name__ == "__main__":
    sys.exit(main())
