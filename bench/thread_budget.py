"""Thread budget of ``mask-submit``: decode workers × ONNX Runtime intra-op threads × ORT spinning.

On a few cores the decode workers and ORT's intra-op threads compete for the same CPUs. This runs
``mask-submit`` over one eval set for every combination of ``--workers`` {1, 2}, ``--threads``
{1, 2} and ``--ort-spinning`` {off, on} (decode workers at the default ``--decode-nice``), per model
file, then ``--batch-size`` {32, 64, 128} and ``--decode-nice`` {0, 10, 19} at the defaults, beside the machine's combined ceiling
``1 / (1/model_only + 1/decode_only)`` measured in the same run on all cores (model only: ORT on
in-memory uint8 batches of 64, its fastest call, the better of spinning off/on and of a measurement
before and one after the grid; decode only: read + draft decode +
resize in as many threads as cores)::

    python -m bench.thread_budget --models data/bench/bench-runs/resnet18/model.onnx \\
        data/bench/bench-runs/resnet18/model.int8.onnx --data data/bench/eval

Writes ``bench/results/thread_budget.json`` (rendered into docs/benchmarks.md).
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from bench import common

log = logging.getLogger(__name__)

GRID = {"workers": (1, 2), "threads": (1, 2), "spinning": ("off", "on")}
BATCH_SIZES = (32, 64, 128)   # swept at mask-submit's defaults after the grid
NICES = (0, 10, 19)           # --decode-nice, swept at the defaults after the grid


def submit_args(workers: int, threads: int, spinning: str, batch_size: int = 64, nice: int | None = None) -> list[str]:
    return ["-q", "--workers", str(workers), "--threads", str(threads), "--ort-spinning", spinning,
            "--batch-size", str(batch_size)] + ([] if nice is None else ["--decode-nice", str(nice)])


def run_submit(model: Path, data: Path, out: Path, args: list[str]) -> dict:
    """img/s of one mask-submit command end to end, and of its own loop (its summary line)."""
    r = common.timed_submit(model, data / "info.csv", data / "images", out, args)
    n = r["images"]
    return {"wall_s": r["wall_s"], "img_per_s": r["img_per_s"],
            "loop_img_per_s": n / r["loop_s"] if r["loop_s"] else None, "max_rss_mb": r["max_rss_mb"]}


def model_only(model: Path, batch_size: int = 64) -> dict:
    """ORT alone on in-memory uint8 at ``batch_size``, all cores, spinning off and on (img/s)."""
    from serving.predictor import Predictor
    from serving.settings import Settings

    out = {}
    for spin in (False, True):
        p = Predictor(model, settings=Settings.from_env({}).replace(ort_spinning=spin))
        x = np.random.default_rng(0).integers(0, 256, (batch_size, *p.input_shape), dtype=np.uint8)
        t = common.time_calls(lambda: p.infer(x), warmup=1, min_repeats=5, budget_s=3.0, cap_s=8.0)
        # the fastest call: a ceiling is what the model can do, and a shared machine only slows calls
        out["spinning_on" if spin else "spinning_off"] = batch_size / min(t.times)
    return out


def decode_only(model: Path, paths: list[Path]) -> float:
    from bench.batch_job import decode_ceiling

    return decode_ceiling(model, paths, threads=os.cpu_count() or 1)


def _spin(stop) -> None:
    while not stop.is_set():
        pass


@contextlib.contextmanager
def busy_cores(n: int):
    """``n`` processes at the default priority spinning the whole time: another user's job."""
    import multiprocessing as mp

    stop = mp.Event()
    procs = [mp.Process(target=_spin, args=(stop,), daemon=True) for _ in range(n)]
    for proc in procs:
        proc.start()
    try:
        yield
    finally:
        stop.set()
        for proc in procs:
            proc.join()


def _sweep(model: Path, data: Path, work: Path, key: str, values, args_for, label: str) -> list[dict]:
    """One mask-submit run per value of one knob at the defaults (workers per core, ORT's own thread
    count, no spinning); ``args_for(value)`` gives the mask-submit flags."""
    from serving.settings import JOB_DEFAULTS

    rows = []
    for value in values:
        r = run_submit(model, data, work / "tb.csv", args_for(value))
        r.update({key: value, "workers": JOB_DEFAULTS.workers(), "threads": 0, "spinning": "off"})
        log.info("%s %s %s: %.1f img/s (loop %.1f)", model.name, label, value, r["img_per_s"], r["loop_img_per_s"] or 0)
        rows.append(r)
    return rows


def bench_model(model: Path, data: Path, work: Path, grid: dict, batch_sizes: tuple[int, ...] = BATCH_SIZES,
                nices: tuple[int, ...] = NICES, contention: int = 0) -> dict:
    from bench.batch_job import read_ans
    from serving.settings import JOB_DEFAULTS, Settings

    ids = list(read_ans(data / "info.csv"))
    paths = [data / "images" / i for i in ids]
    for p in paths:  # warm page cache
        p.read_bytes()
    mo, do = model_only(model), decode_only(model, paths)
    grid_nice = Settings.model_fields["decode_nice"].default   # the grid runs at the shipped default
    rows = []
    for workers, threads, spin in itertools.product(grid["workers"], grid["threads"], grid["spinning"]):
        r = run_submit(model, data, work / "tb.csv", submit_args(workers, threads, spin, nice=grid_nice))
        r.update(workers=workers, threads=threads, spinning=spin, decode_nice=grid_nice)
        log.info("%s workers=%d threads=%d spinning=%s: %.1f img/s (loop %.1f)", model.name, workers, threads,
                 spin, r["img_per_s"], r["loop_img_per_s"] or 0)
        rows.append(r)
    workers = JOB_DEFAULTS.workers()
    batch_rows = _sweep(model, data, work, "batch_size", batch_sizes,
                        lambda bs: submit_args(workers, 0, "off", bs, nice=grid_nice), "batch size")
    nice_rows = _sweep(model, data, work, "decode_nice", nices,
                       lambda n: submit_args(workers, 0, "off", nice=n), "decode nice")
    contended_rows = []
    if contention:   # the same sweep while other processes keep `contention` cores busy
        with busy_cores(contention):
            contended_rows = _sweep(model, data, work, "decode_nice", nices,
                                    lambda n: submit_args(workers, 0, "off", nice=n),
                                    f"decode nice ({contention} busy cores)")
    # ceilings measured before and after the grid; the better of each (the less disturbed) counts
    mo = {k: max(v, w) for (k, v), w in zip(mo.items(), model_only(model).values())}
    do = max(do, decode_only(model, paths))
    ceiling = 1.0 / (1.0 / max(mo.values()) + 1.0 / do)
    for r in rows + batch_rows + nice_rows + contended_rows:
        r.update(share_of_ceiling=r["img_per_s"] / ceiling, loop_share_of_ceiling=(r["loop_img_per_s"] or 0) / ceiling)
    root = str(common.REPO_ROOT) + "/"
    return {"model": str(model).replace(root, ""), "images": len(ids), "model_only_img_per_s": mo,
            "decode_only_img_per_s": do, "combined_ceiling_img_per_s": ceiling, "rows": rows,
            "grid_decode_nice": grid_nice, "batch_rows": batch_rows, "nice_rows": nice_rows,
            "contention": contention, "contended_nice_rows": contended_rows,
            "best": max(rows, key=lambda r: r["img_per_s"])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.thread_budget", description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", type=Path, required=True, help="exported .onnx files")
    p.add_argument("--data", type=Path, required=True, help="folder with info.csv and images/")
    p.add_argument("--batch-sizes", nargs="*", type=int, default=list(BATCH_SIZES),
                   help="--batch-size values swept at the defaults after the grid (default: %(default)s)")
    p.add_argument("--contention", type=int, default=0, metavar="N",
                   help="also sweep --decode-nice while N busy processes (another user's job) hold N cores "
                        "(default: 0, off)")
    p.add_argument("--out", type=Path, default=common.RESULTS_DIR / "thread_budget.json")
    args = p.parse_args(argv)
    common.setup_logging()

    def body() -> None:
        for path in (*args.models, args.data / "info.csv"):
            if not path.is_file():
                raise FileNotFoundError(f"not found: {path}")
        if args.contention < 0 or any(b < 1 for b in args.batch_sizes):
            raise ValueError("--contention must be >= 0 and --batch-sizes >= 1")
        started = common.utc_now()
        with tempfile.TemporaryDirectory(prefix="thread-budget-") as work, common.CpuMonitor() as monitor:
            result = {"models": [bench_model(m, args.data, Path(work), GRID, tuple(args.batch_sizes),
                                             contention=args.contention) for m in args.models]}
        common.save_run("thread_budget", argv, started, monitor, False,
                        {"grid": GRID, "batch_sizes": args.batch_sizes, "nices": list(NICES),
                         "contention": args.contention, "data": str(args.data)}, result, args.out)

    return common.run_part(body, no_report=True)


if __name__ == "__main__":
    raise SystemExit(main())
