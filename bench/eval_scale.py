"""The real eval set's size: ``mask-submit`` on 12,600 images beside the first 2,100 of them.

Makes (or reuses) a synthetic set the size of the competition's eval split
(``mask-data synth --people 2 --eval-people 1800``: 1,800 people x 7 = 12,600 JPEGs), then runs
``mask-submit`` as a command twice, on an ``info.csv`` of the first ``--short`` rows and on all of
them, each under ``os.wait4`` for its own peak RSS. "Linear with flat memory" is read off the pair:
img/s of the long run over the short one, and peak RSS of the long run over the short one. The
first ``--short`` predictions of both runs must be the same (checked).

    python -m bench.eval_scale --model data/bench/bench-runs/plain_cnn-128x96/model.onnx

Writes ``bench/results/eval_scale.json`` and re-renders docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import csv
import logging
import shlex
import sys
from pathlib import Path

from bench import common
from bench.batch_job import read_ans

log = logging.getLogger(__name__)

EVAL_PEOPLE, SHORT = 1800, 2100


def ensure_data(root: Path, eval_people: int) -> tuple[Path, Path]:
    info, images = root / "eval" / "info.csv", root / "eval" / "images"
    if not info.is_file():
        log.info("making %d eval people under %s (mask-data synth)", eval_people, root)
        from maskdata.cli import main as data_main

        if data_main(["synth", "--out", str(root), "--people", "2", "--eval-people", str(eval_people)]) != 0:
            raise ValueError("mask-data synth failed")
    return info, images


def head_csv(info: Path, rows: int, out: Path) -> Path:
    with open(info, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        lines = [next(reader)] + [r for _, r in zip(range(rows), reader)]
    with open(out, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(lines)
    return out


def self_check() -> int:
    """The short run's info.csv is the header and the first rows of the full one, in order."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        info = Path(tmp) / "info.csv"
        info.write_text("ImageID,ans\n" + "".join(f"{i}.jpg,0\n" for i in range(10)), encoding="utf-8")
        got = head_csv(info, 3, Path(tmp) / "short.csv").read_text().splitlines()
    want = ["ImageID,ans", "0.jpg,0", "1.jpg,0", "2.jpg,0"]
    if got != want:
        print(f"error: self-check: the short info.csv is {got}, expected {want}", file=sys.stderr)
        return 1
    print("self-check: ok: the short run takes the first rows")
    return 0


def run(args: argparse.Namespace, argv: list[str] | None) -> None:
    if not args.model.is_file():
        raise FileNotFoundError(f"model not found: {args.model}")
    info, images = ensure_data(args.data, args.eval_people)
    work = args.data / "bench-out"
    work.mkdir(parents=True, exist_ok=True)
    short_info = head_csv(info, args.short, work / "info_short.csv")
    for i in images.iterdir():    # a warm page cache for both runs
        i.read_bytes()
    extra = shlex.split(args.submit_args)
    started = common.utc_now()
    with common.CpuMonitor() as monitor:
        short = common.timed_submit(args.model, short_info, images, work / "short.csv", extra)
        full = common.timed_submit(args.model, info, images, work / "full.csv", extra)
    a, b = read_ans(work / "short.csv"), read_ans(work / "full.csv")
    if any(a[k] != b[k] for k in a):
        raise ValueError("the short run's predictions differ from the same rows of the full run")
    if not short["images"] or full["images"] <= short["images"]:
        raise ValueError(f"the full set ({full['images']} images) must be larger than --short")
    root = str(common.REPO_ROOT) + "/"
    result = {"model": str(args.model).replace(root, ""), "short": short, "full": full,
              "img_per_s_ratio": full["img_per_s"] / short["img_per_s"],
              "max_rss_ratio": full["max_rss_mb"] / short["max_rss_mb"]}
    log.info("short %d images %.1f img/s %.0f MB; full %d images %.1f img/s %.0f MB", short["images"],
             short["img_per_s"], short["max_rss_mb"], full["images"], full["img_per_s"], full["max_rss_mb"])
    config = {"data": str(args.data).replace(root, ""), "short": args.short, "submit_args": args.submit_args}
    common.save_run("eval_scale", argv, started, monitor, False, config, result, args.out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.eval_scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, help="exported ONNX model (mask-export; required)")
    p.add_argument("--data", type=Path, default=common.REPO_ROOT / "data" / "bench-scale",
                   help="synthetic set (made here if missing; default: data/bench-scale)")
    p.add_argument("--eval-people", type=int, default=EVAL_PEOPLE,
                   help=f"eval people of a set made here, 7 images each (default: {EVAL_PEOPLE})")
    p.add_argument("--short", type=int, default=SHORT, help=f"rows of the short run (default: {SHORT})")
    p.add_argument("--submit-args", default="", metavar="FLAGS", help="more mask-submit flags, one string")
    p.add_argument("--out", type=Path, default=common.RESULTS_DIR / "eval_scale.json", help="result JSON")
    p.add_argument("--no-report", action="store_true", help="do not re-render docs/benchmarks.md")
    p.add_argument("--self-check", action="store_true",
                   help="instead: check on a made-up info.csv that the short run reads the first rows; exit 1 if not")
    args = p.parse_args(argv)
    if args.self_check:
        return self_check()
    if args.model is None:
        p.error("the following arguments are required: --model")
    common.setup_logging()
    return common.run_part(lambda: run(args, argv), args.no_report)

if __name__ == "__main__":
    sys.exit(main())
