"""Batch job: the competition baseline's inference loop vs ``mask-submit``, same weights, same images.

For each architecture: make (or reuse) a synthetic data set with >= 2,000 eval JPEGs of 384×512,
train a checkpoint briefly with ``mask-train`` (or take ``--checkpoint``), export it with
``mask-export --int8``, then run as commands, one after the other on a warm page cache:

* ``python -m bench.baseline`` — the baseline loop as the competition's ``inference.py`` writes it
  (PIL full decode, torchvision Resize/ToTensor/Normalize in a Dataset, ``DataLoader(batch_size=1000,
  num_workers=cpu_count() // 2)``, eager PyTorch in eval mode) on the checkpoint, and at batch 64;
* ``mask-submit`` with its defaults on the exported ONNX model; then, for reference, on the same
  graph with its recorded preprocessing changed (JPEG draft off; the other draft scale) and on the
  INT8 export.

Reported: img/s of each command end to end (interpreter start and model load included) and of each
job's own loop, their ratio, the share of identical predictions, accuracy of both against the
synthetic ground truth, the combined ceiling 1 / (1/model-only + 1/decode-only) measured on all
cores and each precision's share of it, and a stage breakdown (read, decode, resize, to-tensor,
infer, write) from an instrumented serial pass of each pipeline over a subset. Each row records how
busy the machine was apart from the benchmark while it ran.

    python -m bench.batch_job --checkpoint runs/default/best.pt   # the default recipe's model (make bench)
    python -m bench.batch_job                       # resnet18, efficientnet_b0, plain_cnn, each trained briefly here
    python -m bench.batch_job --archs efficientnet_b0 --epochs 24 --train-args='--lr 0.001' --retrain --append
    python -m bench.batch_job --archs resnet18 --size 224 224 --train-args='--aspect stretch' --append
    python -m bench.batch_job --quick

Writes ``bench/results/batch_job.json`` and re-renders ``docs/benchmarks.md``.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bench import common
from serving.settings import JOB_DEFAULTS

log = logging.getLogger(__name__)

ARCHS = ("resnet18", "efficientnet_b0", "plain_cnn")
MIN_IMAGES = 2000


@dataclass(frozen=True)
class JobConfig:
    data: Path
    archs: tuple[str, ...] = ARCHS
    checkpoint: str | None = None
    train_people: int = 100
    eval_people: int = 300        # 7 images each: 2,100 eval images
    epochs: int = 4
    size: tuple[int, int] = (128, 96)
    stage_images: int = 640       # images in the instrumented stage-breakdown passes
    min_images: int = MIN_IMAGES
    retrain: bool = False
    repeats: int = 2              # runs of each command; the fastest counts
    train_args: tuple[str, ...] = ()  # extra mask-train flags of the quick training run


# ----------------------------------------------------------------------------- inputs

def ensure_data(cfg: JobConfig) -> tuple[Path, Path, Path]:
    """(info.csv, images dir, answers.csv) of a synthetic set with enough eval images."""
    from maskdata.synth import generate

    info, images, answers = cfg.data / "eval" / "info.csv", cfg.data / "eval" / "images", cfg.data / "eval" / "answers.csv"
    if not info.is_file():
        log.info("generating %d train + %d eval people into %s", cfg.train_people, cfg.eval_people, cfg.data)
        generate(cfg.data, people=cfg.train_people, eval_people=cfg.eval_people, seed=0, progress=True)
    n = sum(1 for _ in open(info, encoding="utf-8")) - 1
    if n < cfg.min_images:
        raise ValueError(f"{info} lists {n} images; the batch benchmark needs at least {cfg.min_images} "
                         f"(delete {cfg.data} or pass --data to a larger set)")
    return info, images, answers


def ensure_model(cfg: JobConfig, arch: str) -> tuple[Path, Path]:
    """(checkpoint, exported ONNX) for ``arch``: trained briefly with mask-train unless given."""
    from export.cli import main as export_main

    work = cfg.data / "bench-runs" / f"{arch}-{cfg.size[0]}x{cfg.size[1]}"
    if cfg.checkpoint:
        ckpt = Path(cfg.checkpoint)
        if not ckpt.is_file():
            raise FileNotFoundError(f"checkpoint not found: {ckpt}")
    else:
        ckpt = work / "best.pt"
        if cfg.retrain or not ckpt.is_file():
            from training.cli import main as train_main

            h, w = cfg.size
            argv = ["--data-dir", str(cfg.data / "train"), "--out", str(work), "--model", arch,
                    "--epochs", str(cfg.epochs), "--resize", str(h), str(w), "--seed", "0", "--no-progress",
                    *cfg.train_args]
            log.info("training %s: mask-train %s", arch, " ".join(argv))
            if train_main(argv) != 0:
                raise ValueError(f"mask-train failed for {arch}")
    onnx_path = work / "model.onnx"
    work.mkdir(parents=True, exist_ok=True)
    stale = not onnx_path.is_file() or onnx_path.stat().st_mtime < ckpt.stat().st_mtime
    if cfg.retrain or cfg.checkpoint or stale or not onnx_path.with_name("model.int8.onnx").is_file():
        # --int8 also writes model.int8.onnx (static quantization calibrated on training images)
        if export_main(["--checkpoint", str(ckpt), "--out", str(onnx_path), "--int8"]) != 0:
            raise ValueError(f"mask-export failed for {ckpt}")
    return ckpt, onnx_path


def warm_cache(images: Path, ids: list[str]) -> None:
    """Read every file once, and import both sides' libraries once in a throwaway interpreter, so
    neither timed command pays for a cold page cache (a first torch import after an idle spell took
    ~20 s here)."""
    for i in ids:
        (images / i).read_bytes()
    subprocess.run([sys.executable, "-c", "import torch, torchvision, onnxruntime, serving.local_engine"],
                   cwd=common.REPO_ROOT, check=True, capture_output=True)


def best_of(runs: list[dict]) -> dict:
    """The fastest of repeated runs of one command (the least disturbed by a shared machine)."""
    best = dict(min(runs, key=lambda r: r["wall_s"]))
    best["all_wall_s"] = [r["wall_s"] for r in runs]
    return best


def read_ans(path: Path) -> dict[str, int]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        return {r["ImageID"]: int(r["ans"]) for r in csv.DictReader(f)}


# ----------------------------------------------------------------------------- the two commands

def _run(cmd: list[str]) -> tuple[float, str, float]:
    """(wall seconds, stdout, peak RSS MB of the command's main process) of one command."""
    log.info("running: %s", " ".join(cmd))
    stdout, _, wall, rss = common.run_measured(cmd)
    return wall, stdout, rss


def run_baseline(ckpt: Path, info: Path, images: Path, out: Path, batch_size: int | None = None) -> dict:
    cmd = [sys.executable, "-m", "bench.baseline", "--checkpoint", str(ckpt), "--info", str(info),
           "--images", str(images), "--out", str(out)]
    if batch_size:
        cmd += ["--batch-size", str(batch_size)]
    wall, stdout, rss = _run(cmd)
    inner = json.loads(stdout.strip().splitlines()[-1])
    return {"command": _display(cmd), "wall_s": wall, "loop_s": inner["loop_s"], "load_s": inner["load_s"],
            "max_rss_mb": rss}  # the main process only: DataLoader workers are its children


def run_submit(onnx_path: Path, info: Path, images: Path, out: Path) -> dict:
    r = common.timed_submit(onnx_path, info, images, out)
    return {k: r[k] for k in ("command", "wall_s", "loop_s", "max_rss_mb")}


def _display(cmd: list[str]) -> str:
    root = str(common.REPO_ROOT) + "/"
    return " ".join(c.replace(root, "") for c in [".venv/bin/python", *cmd[1:]])


# ----------------------------------------------------------------------------- stage breakdowns

def product_stages(onnx_path: Path, paths: list[Path], out_csv: Path,
                   batch_size: int = JOB_DEFAULTS.batch_size) -> dict[str, float]:
    """mask-submit's per-image work done serially in this process, each stage timed (seconds per
    stage) through the product's own entry points: ``Preprocess.decode`` and ``Preprocess.resize``
    (what the decode workers run, as two halves), ``Predictor.infer`` and the job's writer."""
    from serving.submission_job import write_outputs
    from serving.predictor import Predictor

    predictor = Predictor(onnx_path)
    pre, max_pixels = predictor.preprocess, predictor.settings.max_pixels
    t = dict.fromkeys(("read", "decode", "resize", "infer", "write"), 0.0)
    probs: list[np.ndarray] = []
    for start in range(0, len(paths), batch_size):
        arrays = []
        for p in paths[start:start + batch_size]:
            t0 = time.perf_counter()
            data = p.read_bytes()
            t1 = time.perf_counter()
            img, source_size = pre.decode(data, max_pixels)
            t2 = time.perf_counter()
            arrays.append(pre.resize(img, source_size))
            t3 = time.perf_counter()
            t["read"] += t1 - t0
            t["decode"] += t2 - t1
            t["resize"] += t3 - t2
        t0 = time.perf_counter()
        probs.append(predictor.infer(np.stack(arrays)))
        t["infer"] += time.perf_counter() - t0
    p_all = np.concatenate(probs)
    t0 = time.perf_counter()
    write_outputs(out_csv, ["ImageID", "ans"], [{"ImageID": p.name} for p in paths], p_all.argmax(axis=1), p_all,
                  {}, None, out_csv.with_name(out_csv.name + ".errors.csv"))
    t["write"] = time.perf_counter() - t0
    return t


def baseline_stages(ckpt: Path, info: Path, images: Path, out_csv: Path, limit: int) -> dict[str, float]:
    """The baseline's per-stage seconds over the first ``limit`` images, in a fresh process like its run."""
    cmd = [sys.executable, "-m", "bench.baseline", "--checkpoint", str(ckpt), "--info", str(info),
           "--images", str(images), "--out", str(out_csv), "--stages", str(limit)]
    _, stdout, _ = _run(cmd)
    return json.loads(stdout.strip().splitlines()[-1])["stages"]


def preprocess_variant(onnx_path: Path, name: str, **changes) -> Path:
    """A copy of the exported model with its recorded preprocessing changed (e.g. ``jpeg_draft=False``
    so ``mask-submit`` decodes full-size like the baseline); weights and graph are unchanged."""
    from dataclasses import replace

    import onnx

    from export.graph import save_checked, set_metadata
    from maskdata.artifact import read_metadata

    meta = read_metadata(onnx_path)
    model = onnx.load(str(onnx_path))
    set_metadata(model, replace(meta, preprocess=replace(meta.preprocess, **changes)))
    return save_checked(model, onnx_path.with_name(f"model.{name}.onnx"))


def variants(onnx_path: Path) -> list[tuple[str, Path, dict]]:
    """(result key, model file, preprocessing change) of the reference runs after the shipped one."""
    from maskdata.artifact import read_metadata

    pre = read_metadata(onnx_path).preprocess
    out = [("submit_no_draft", preprocess_variant(onnx_path, "nodraft", jpeg_draft=False), {"jpeg_draft": False})]
    # artifacts record the draft scale they were exported with; the other scale is measured too
    if pre.jpeg_draft:
        other = 2 if pre.draft_scale == 1 else 1
        out.append((f"submit_draft_scale_{other}", preprocess_variant(onnx_path, f"draft{other}", draft_scale=other),
                    {"draft_scale": other}))
    out.append(("submit_int8", onnx_path.with_name("model.int8.onnx"), {}))
    return out


def decode_ceiling(onnx_path: Path, paths: list[Path], threads: int) -> float:
    """img/s of read + decode + resize alone (the model's own preprocessing), in ``threads`` threads."""
    from maskdata.artifact import read_metadata

    pre = read_metadata(onnx_path).preprocess
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(pre, paths, chunksize=16):
            pass
    return len(paths) / (time.perf_counter() - t0)


def infer_ceiling(onnx_path: Path, batch_size: int = 64) -> float:
    """img/s of ONNX Runtime inference alone at ``batch_size`` on in-memory uint8 (the model-only figure)."""
    from serving.predictor import Predictor

    p = Predictor(onnx_path)
    x = np.random.default_rng(0).integers(0, 256, (batch_size, *p.input_shape), dtype=np.uint8)
    t = common.time_calls(lambda: p.infer(x), warmup=1, min_repeats=5, budget_s=3.0, cap_s=8.0)
    # the fastest call: a ceiling is what the model can do, and a shared machine only slows calls
    return batch_size / min(t.times)


def combined(model_only: float, decode_only: float) -> float:
    """The job's ceiling when both stages share the cores: 1 / (1/model_only + 1/decode_only)."""
    return 1.0 / (1.0 / model_only + 1.0 / decode_only)


def _fractions(stages: dict[str, float]) -> dict[str, float]:
    total = sum(stages.values())
    return {k: v / total for k, v in stages.items()} if total else {}


# ----------------------------------------------------------------------------- one architecture

def bench_arch(cfg: JobConfig, arch: str, info: Path, images: Path, answers: Path) -> dict:
    from maskdata.artifact import read_metadata
    from training.checkpoint import load_checkpoint

    load_start = [round(x, 2) for x in os.getloadavg()]
    ckpt, onnx_path = ensure_model(cfg, arch)
    work = onnx_path.parent
    ids = list(read_ans(info))
    warm_cache(images, ids)
    b_runs, s_runs = [], []
    for _ in range(cfg.repeats):  # interleaved, so a burst of outside load hits both sides alike
        b_runs.append(run_baseline(ckpt, info, images, work / "baseline.csv"))
        s_runs.append(run_submit(onnx_path, info, images, work / "submission.csv"))
    base, sub = best_of(b_runs), best_of(s_runs)
    pred_b, pred_s = read_ans(work / "baseline.csv"), read_ans(work / "submission.csv")
    truth = read_ans(answers) if answers.is_file() else {}
    n = len(ids)
    identical = sum(pred_b[i] == pred_s[i] for i in ids) / n
    meta = load_checkpoint(ckpt)
    root = str(common.REPO_ROOT) + "/"
    optim = (meta.get("config") or {}).get("optim") or {}
    row = {"arch": arch, "checkpoint": str(ckpt).replace(root, ""), "onnx": str(onnx_path).replace(root, ""),
           "images": n,
           "trained_epochs": meta.get("epoch"), "val_f1": (meta.get("metrics") or {}).get("f1"),
           "train_lr": optim.get("lr"),
           "train_epochs": ((meta.get("config") or {}).get("train") or {}).get("epochs"),
           # the run's own record: `mask-train --config <this>` retrains it
           "train_config": (str(ckpt.parent / "config.yaml").replace(root, "")
                            if (ckpt.parent / "config.yaml").is_file() else None),
           "input_size": list(cfg.size), "preprocess": read_metadata(onnx_path).preprocess.to_dict(),
           "baseline": base, "submit": sub,
           "identical": identical, "distinct_classes_predicted": len(set(pred_s.values()))}
    for side in ("baseline", "submit"):
        r = row[side]
        r["img_per_s"] = n / r["wall_s"]
        r["loop_img_per_s"] = n / r["loop_s"] if r.get("loop_s") else None
    row["ratio"] = row["submit"]["img_per_s"] / row["baseline"]["img_per_s"]
    if row["submit"]["loop_img_per_s"]:
        row["loop_ratio"] = row["submit"]["loop_img_per_s"] / row["baseline"]["loop_img_per_s"]
    if truth:
        row["accuracy"] = {"baseline": sum(pred_b[i] == truth[i] for i in ids) / n,
                           "submit": sum(pred_s[i] == truth[i] for i in ids) / n}
    log.info("%s: ceilings (inference alone, decode alone)", arch)
    all_paths = [images / i for i in ids]
    cores = os.cpu_count() or 1
    row["ceilings"] = {"infer_img_per_s": infer_ceiling(onnx_path),
                       "infer_int8_img_per_s": infer_ceiling(onnx_path.with_name("model.int8.onnx")),
                       "decode_img_per_s_all_cores": decode_ceiling(onnx_path, all_paths, threads=cores),
                       "decode_img_per_s_1_thread": decode_ceiling(onnx_path, all_paths, threads=1),
                       "cores": cores}
    c = row["ceilings"]
    c["combined_img_per_s"] = combined(c["infer_img_per_s"], c["decode_img_per_s_all_cores"])
    c["combined_int8_img_per_s"] = combined(c["infer_int8_img_per_s"], c["decode_img_per_s_all_cores"])
    for key, model, change in variants(onnx_path):
        log.info("%s: mask-submit on %s", arch, model.name)
        csv_name = f"{key}.csv"
        variant = run_submit(model, info, images, work / csv_name)
        variant["preprocess_change"] = change
        pred_v = read_ans(work / csv_name)
        variant.update(img_per_s=n / variant["wall_s"],
                       loop_img_per_s=n / variant["loop_s"] if variant.get("loop_s") else None)
        variant["ratio"] = variant["img_per_s"] / row["baseline"]["img_per_s"]
        variant["identical"] = sum(pred_b[i] == pred_v[i] for i in ids) / n
        row[key] = variant
    row["identical_without_draft"] = row["submit_no_draft"]["identical"]
    log.info("%s: the baseline at batch 64", arch)
    b64 = run_baseline(ckpt, info, images, work / "baseline_b64.csv", batch_size=64)
    b64["img_per_s"] = n / b64["wall_s"]
    row["baseline_b64"] = b64
    row["submit"]["share_of_ceiling"] = row["submit"]["img_per_s"] / c["combined_img_per_s"]
    row["submit"]["loop_share_of_ceiling"] = (row["submit"]["loop_img_per_s"] or 0) / c["combined_img_per_s"]
    row["submit_int8"]["share_of_ceiling"] = row["submit_int8"]["img_per_s"] / c["combined_int8_img_per_s"]
    row["submit_int8"]["loop_share_of_ceiling"] = ((row["submit_int8"]["loop_img_per_s"] or 0)
                                                   / c["combined_int8_img_per_s"])
    int8_vs_fp32 = read_ans(work / "submit_int8.csv")
    row["submit_int8"]["identical_to_fp32"] = sum(int8_vs_fp32[i] == pred_s[i] for i in ids) / n
    subset = ids[:cfg.stage_images]
    paths = [images / i for i in subset]
    log.info("%s: stage breakdown over %d images (baseline, then mask-submit's stages)", arch, len(subset))
    b_stages = baseline_stages(ckpt, info, images, work / "baseline_stages.csv", len(subset))
    p_stages = product_stages(onnx_path, paths, work / "submit_stages.csv")
    row["stages"] = {"images": len(subset),
                     "baseline": {"seconds": b_stages, "fraction": _fractions(b_stages)},
                     "submit": {"seconds": p_stages, "fraction": _fractions(p_stages)}}
    row["loadavg_start_end"] = [load_start, [round(x, 2) for x in os.getloadavg()]]
    row["measured"] = common.utc_now()
    log.info("%s: baseline %.1f img/s, mask-submit %.1f img/s (%.2fx), identical %.2f%%", arch,
             row["baseline"]["img_per_s"], row["submit"]["img_per_s"], row["ratio"], 100 * identical)
    return row


def merge_rows(old: list[dict], new: list[dict]) -> list[dict]:
    """``old`` with each row re-measured in ``new`` replaced in place (same arch and input size);
    rows of ``new`` that ``old`` lacks go at the end."""
    def key(r: dict) -> tuple:
        return r["arch"], tuple(r["input_size"])

    fresh = {key(r): r for r in new}
    merged = [fresh.pop(key(r), r) for r in old]
    return merged + [r for r in new if key(r) in fresh]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.batch_job", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=common.REPO_ROOT / "data" / "bench",
                   help="synthetic data set (made here if missing; default: data/bench)")
    p.add_argument("--archs", nargs="+", default=list(ARCHS), help=f"architectures (default: {' '.join(ARCHS)})")
    p.add_argument("--size", nargs=2, type=int, default=[128, 96], metavar=("H", "W"),
                   help="input size of the trained models (default 128 96; with --checkpoint: the checkpoint's)")
    p.add_argument("--checkpoint", help="use this mask-train checkpoint instead of training (one arch: its own)")
    p.add_argument("--epochs", type=int, default=4, help="epochs of the quick training run (default: 4)")
    p.add_argument("--stage-images", type=int, default=640, help="images in the stage-breakdown passes (default: 640)")
    p.add_argument("--train-args", default="", metavar="FLAGS",
                   help="more mask-train flags for the quick training, one string, e.g. "
                        "--train-args='--lr 0.001 --aspect stretch' (default: none)")
    p.add_argument("--retrain", action="store_true", help="train and export again even if a run exists")
    p.add_argument("--repeats", type=int, default=2,
                   help="runs of the baseline and mask-submit commands, interleaved; the fastest counts (default: 2)")
    p.add_argument("--quick", action="store_true", help="small_cnn only, 1 epoch, 320-image stage passes")
    p.add_argument("--out", type=Path, default=common.RESULTS_DIR / "batch_job.json", help="result JSON")
    p.add_argument("--append", action="store_true",
                   help="keep the rows of --out measured earlier (other arch/size), replacing only those run now")
    p.add_argument("--no-report", action="store_true", help="do not re-render docs/benchmarks.md")
    p.add_argument("--self-check", action="store_true",
                   help="instead: check how --append merges rows, on made-up rows, and exit (1 if wrong)")
    return p


def self_check() -> int:
    """``--append``: a re-measured (arch, size) row replaces the old one in place; new rows go last."""
    def row(arch, size, tag):
        return {"arch": arch, "input_size": size, "tag": tag}

    old = [row("resnet18", [128, 96], "old"), row("plain_cnn", [128, 96], "old"), row("resnet18", [224, 224], "old")]
    new = [row("resnet18", [128, 96], "new"), row("small_cnn", [128, 96], "new")]
    got = [(r["arch"], r["input_size"][0], r["tag"]) for r in merge_rows(old, new)]
    want = [("resnet18", 128, "new"), ("plain_cnn", 128, "old"), ("resnet18", 224, "old"), ("small_cnn", 128, "new")]
    if got != want:
        print(f"error: self-check: --append merged {got}, expected {want}", file=sys.stderr)
        return 1
    print("self-check: ok: --append replaces re-measured rows in place")
    return 0


def job_config(args: argparse.Namespace) -> JobConfig:
    """The run's configuration from the parsed flags (``--quick`` and ``--checkpoint`` applied; the
    parsed flags themselves stay as given)."""
    archs, epochs, stage_images, repeats = tuple(args.archs), args.epochs, args.stage_images, args.repeats
    size = tuple(args.size)
    if args.quick:
        archs, epochs, stage_images, repeats = ("small_cnn",), 1, 320, 1
    if args.checkpoint:
        from training.checkpoint import load_checkpoint

        ckpt = load_checkpoint(args.checkpoint)
        archs = (ckpt["arch"],)
        # the row is the checkpoint's own input size (its work folder and its key in --append)
        size = (ckpt["preprocess"]["height"], ckpt["preprocess"]["width"])
    if epochs < 1 or stage_images < 64 or repeats < 1:
        raise ValueError("--epochs and --repeats must be >= 1 and --stage-images >= 64")
    return JobConfig(data=args.data, archs=archs, checkpoint=args.checkpoint, epochs=epochs,
                     stage_images=stage_images, retrain=args.retrain, repeats=repeats, size=size,
                     train_args=tuple(shlex.split(args.train_args)))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.self_check:
        return self_check()
    common.setup_logging()
    try:
        cfg = job_config(args)
        info, images, answers = ensure_data(cfg)
        started = common.utc_now()
        runs = []
        with common.CpuMonitor() as monitor:
            for arch in cfg.archs:
                with common.CpuMonitor() as row_monitor:  # per row: --append merges rows of other runs
                    row = bench_arch(cfg, arch, info, images, answers)
                row["cpu_monitor"] = row_monitor.summary
                row["bench_command"] = common.command_line("bench.batch_job", argv)
                runs.append(row)
        if args.append and args.out.is_file():  # rows measured in earlier runs stay, unless re-measured now
            runs = merge_rows(json.loads(args.out.read_text()).get("runs", []), runs)
        config = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
        common.save_run("batch_job", argv, started, monitor, args.quick, config, {"runs": runs}, args.out)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not args.no_report:
        common.render_docs()
    return 0


if __name__ == "__main__":
    sys.exit(main())
