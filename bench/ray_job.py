"""Ray engine beside the local pipeline: ``mask-submit --engine ray`` vs ``--engine local``, same model,
same >= 2,000 synthetic images, in one run.

Each engine runs as its own ``mask-submit`` command (twice; the faster counts), one after the other on
a warm page cache. Reported: img/s of each job's own loop (the summary line's seconds: decode +
inference + gathering, model load excluded) and end to end, the Ray/local ratio, whether the two
submission files are byte-identical, and Ray's start-up (``ray.init``) time from its log line.

    python -m bench.ray_job                         # makes data/bench-ray and a small model when missing
    python -m bench.ray_job --onnx data/bench/bench-runs/plain_cnn/model.onnx --data data/bench

Writes ``bench/results/ray_job.json`` and re-renders ``docs/benchmarks.md`` (section "Ray engine").
"""
from __future__ import annotations

import argparse
import logging
import re
import subprocess
import sys
import time
from pathlib import Path

from bench import common

log = logging.getLogger(__name__)

MIN_IMAGES = 2000
_SUMMARY = re.compile(r"(\d+) images, ([\d.]+) s")
_RAY_START = re.compile(r"Ray (?:started|joined) in ([\d.]+) s")


def ensure_inputs(data: Path, onnx: Path | None, eval_people: int) -> tuple[Path, Path, Path]:
    """(info.csv, images, model.onnx): a synthetic set with >= MIN_IMAGES eval images, a small model."""
    from maskdata.synth import generate

    info = data / "eval" / "info.csv"
    if not info.is_file():
        log.info("generating %d eval people into %s", eval_people, data)
        generate(data, people=20, eval_people=eval_people, seed=0, progress=True)
    n = sum(1 for _ in open(info, encoding="utf-8")) - 1
    if n < MIN_IMAGES:
        raise ValueError(f"{info} lists {n} images; this benchmark needs at least {MIN_IMAGES}")
    if onnx is None:
        onnx = data / "ray-run" / "model.onnx"
        if not onnx.is_file():
            from export.cli import main as export_main
            from training.cli import main as train_main

            run = onnx.parent
            if train_main(["--data-dir", str(data / "train"), "--out", str(run), "--model", "small_cnn",
                           "--epochs", "1", "--resize", "128", "96", "--seed", "0", "--no-progress"]) != 0:
                raise ValueError("mask-train failed")
            if export_main(["--checkpoint", str(run / "best.pt"), "--out", str(onnx)]) != 0:
                raise ValueError("mask-export failed")
    return info, data / "eval" / "images", onnx


def run_engine(engine: str, info: Path, images: Path, onnx: Path, out: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "serving.submit_cli", "--info", str(info), "--images", str(images), "--out", str(out),
           "--model", str(onnx), "--no-progress", "--engine", engine, *extra]
    log.info("running: %s", " ".join(cmd))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=common.REPO_ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise ValueError(f"--engine {engine} exited {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}")
    m, start = _SUMMARY.search(proc.stdout), _RAY_START.search(proc.stderr)
    images_n, loop_s = int(m.group(1)), float(m.group(2))
    return {"command": " ".join(cmd[3:]).replace(str(common.REPO_ROOT) + "/", ""), "wall_s": round(wall, 2),
            "loop_s": loop_s, "images": images_n, "loop_img_s": round(images_n / loop_s, 1),
            "end_to_end_img_s": round(images_n / wall, 1),
            "ray_start_s": float(start.group(1)) if start else None}


def best(runs: list[dict]) -> dict:
    out = dict(min(runs, key=lambda r: r["loop_s"]))
    out["all_loop_s"] = [r["loop_s"] for r in runs]
    return out


def section(result: dict | None) -> str:
    """The "Ray engine" section of docs/benchmarks.md (bench/report.py calls this)."""
    if not result:
        return "## Ray engine\n\nNot measured yet: `python -m bench.ray_job`.\n"
    lo, ra = result["local"], result["ray"]
    rows = [f"| local | {lo['images']} | {lo['loop_s']:.2f} | {lo['loop_img_s']:.0f} | {lo['end_to_end_img_s']:.0f} | — |",
            f"| ray | {ra['images']} | {ra['loop_s']:.2f} | {ra['loop_img_s']:.0f} | {ra['end_to_end_img_s']:.0f} | "
            f"{ra['ray_start_s'] if ra['ray_start_s'] is not None else 'n/a'} s |"]
    return "\n".join([
        "## Ray engine", "",
        f"`{result['command']}` ({result['finished']}): `mask-submit --engine ray` beside `--engine local` on the "
        f"same {lo['images']} synthetic images and model, each the faster of {len(lo['all_loop_s'])} runs. Loop "
        "= the summary line's seconds (decode + inference + gathering; model load and Ray start-up excluded); "
        "end to end = the whole command, interpreter start included. One machine: the multi-node case is "
        "not measured.", "",
        "| engine | images | loop s | loop img/s | end-to-end img/s | ray.init |",
        "| --- | --- | --- | --- | --- | --- |", *rows, "",
        f"Ray/local loop img/s: **{result['ratio_loop']:.2f}×** (end to end {result['ratio_end_to_end']:.2f}×); "
        f"submission files byte-identical: **{'yes' if result['identical'] else 'NO'}**. Ray options: "
        f"`{' '.join(result['ray_args']) or 'defaults'}`. Other cores busy during the run: "
        f"{result['cpu_monitor'].get('other_cores')} (this counts Ray's own worker processes too, which are "
        "not children of the bench; the machine was also shared with other engineers).", ""])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ray_job", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=common.REPO_ROOT / "data" / "bench-ray")
    p.add_argument("--onnx", type=Path, default=None, help="model to run (default: a small one trained here)")
    p.add_argument("--eval-people", type=int, default=300, help="7 images each (default 300: 2,100 images)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--ray-args", default="", help="extra mask-submit flags for the Ray run, e.g. '--num-actors 2'")
    args = p.parse_args(argv)
    common.setup_logging()
    started = common.utc_now()
    try:
        info, images, onnx = ensure_inputs(args.data, args.onnx, args.eval_people)
        for i in images.rglob("*"):   # warm page cache: neither engine pays for cold reads
            if i.is_file():
                i.read_bytes()
        out = args.data / "ray-bench"
        out.mkdir(exist_ok=True)
        ray_args = args.ray_args.split()
        with common.CpuMonitor() as monitor:
            local = best([run_engine("local", info, images, onnx, out / "local.csv", [])
                          for _ in range(args.repeats)])
            ray = best([run_engine("ray", info, images, onnx, out / "ray.csv", ray_args)
                        for _ in range(args.repeats)])
        identical = (out / "local.csv").read_bytes() == (out / "ray.csv").read_bytes()
    except (ValueError, OSError, subprocess.SubprocessError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = {"local": local, "ray": ray, "identical": identical, "ray_args": ray_args,
              "ratio_loop": round(ray["loop_img_s"] / local["loop_img_s"], 3),
              "ratio_end_to_end": round(ray["end_to_end_img_s"] / local["end_to_end_img_s"], 3)}
    common.save_run("ray_job", argv, started, monitor, False, {"onnx": str(onnx), "images": local["images"]},
                    result, common.RESULTS_DIR / "ray_job.json")
    common.render_docs()
    print(f"local {local['loop_img_s']} img/s, ray {ray['loop_img_s']} img/s (ratio {result['ratio_loop']}), "
          f"ray.init {ray['ray_start_s']} s, identical={identical}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
