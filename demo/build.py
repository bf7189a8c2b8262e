"""The demo model `make serve` needs when the store has none.

    python -m demo              # make serve: check the shipped demo/model.onnx on fresh synthetic
                                #   eval images, then import it into the store as mask-classifier
    python -m demo --rebuild    # make demo-model: synthetic data -> the default training recipe ->
                                #   parity-checked ONNX -> the same check -> demo/model.onnx + the store

The repository ships the demo model (``demo/model.onnx``, with ``demo/model.json`` recording how it
was built and what it scored), so a first ``make serve`` costs a small synthetic check set and a
model-store import instead of a training run. Both paths refuse a model that scores below
``MIN_MACRO_F1`` on the check set: images of people drawn with another seed than the training set's,
so the model has never seen them. This module imports torch (through training and export) only for
``--rebuild``, which is why it lives outside ``serving/``: neither the bento nor the Docker image
carries it.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from demo.ready import wait_ready
from maskdata.artifact import STORE_NAME
from maskdata.cpu import simd_flags
from maskdata.io import atomic_write_text, sha256_file

log = logging.getLogger(__name__)

SHIPPED = Path(__file__).with_name("model.onnx")       # the demo model the repository ships
SHIPPED_CARD = Path(__file__).with_name("model.json")   # how it was built, what it scored
MIN_MACRO_F1 = 0.90   # a demo model below this on the check set is refused (install and rebuild alike)


@dataclass(frozen=True)
class DemoConfig:
    workdir: Path = Path(".demo")
    people: int = 300          # training people (--rebuild)
    eval_people: int = 50      # people in the check set (7 photos each)
    # None = mask-train's default CPU recipe (recipes/cpu_demo.yaml, docs/training.md)
    epochs: int | None = None
    model: str | None = None
    sampler: str | None = None
    seed: int = 0              # training data and training seed (--rebuild)
    check_seed: int = 1        # the check set's seed: other people than the training set's
    force: bool = False
    rebuild: bool = False
    model_file: Path = SHIPPED


def stored_model() -> str | None:
    """Tag of the newest ``STORE_NAME`` model in the BentoML store, or None."""
    import bentoml

    try:
        return str(bentoml.models.get(f"{STORE_NAME}:latest").tag)
    except bentoml.exceptions.NotFound:
        return None


def describe_stored(tag: str, demo_file: Path = SHIPPED) -> str:
    """What `make serve` is about to serve: the demo model, or a model a user stored under its name."""
    from export.store import model_file

    stored = model_file(tag)
    if demo_file.is_file() and sha256_file(stored) == sha256_file(demo_file):
        return f"model store already has {tag} (the demo model {demo_file.name}); serving it"
    return (f"model store already has {tag}, which is not the demo model (you stored it, e.g. with "
            f"`mask-export --bento-tag {STORE_NAME}`); serving it. `python -m demo --force` stores the demo "
            "model again")


def _stage(name: str) -> float:
    print(f"\n==> {name}", flush=True)
    return time.perf_counter()


def _done(t: float) -> None:
    print(f"    {time.perf_counter() - t:.0f}s", flush=True)


def check_data(cfg: DemoConfig) -> Path:
    """``workdir/data``: one training person (unused) and ``eval_people`` check people drawn with
    ``check_seed``; its eval images are also what the `make serve` banner's curl command posts."""
    from maskdata.synth import generate

    data = cfg.workdir / "data"
    answers = data / "eval" / "answers.csv"
    recorded = data / "synth_summary.json"
    if answers.is_file() and recorded.is_file() and not cfg.force:
        summary = json.loads(recorded.read_text())
        if (summary.get("seed"), summary.get("eval_people")) == (cfg.check_seed, cfg.eval_people):
            print("    already there, reusing it")
            return data
    generate(data, people=1, eval_people=cfg.eval_people, seed=cfg.check_seed, overwrite=True, progress=True)
    return data


def evaluate(model: str | os.PathLike, eval_dir: Path) -> dict:
    """Macro F1 / accuracy of ``model`` (an ONNX path or a store tag) on ``eval_dir``'s answers.csv."""
    from maskdata import metrics
    from serving.predictor import Predictor

    with open(eval_dir / "answers.csv", newline="") as f:
        answers = [(r["ImageID"], int(r["ans"])) for r in csv.DictReader(f)]
    predictor = Predictor(str(model))
    predicted = [p["class"] for p in predictor.predict([eval_dir / "images" / name for name, _ in answers])]
    report = metrics.report([c for _, c in answers], predicted)
    return {"images": len(answers), "macro_f1": round(report["f1"], 4), "accuracy": round(report["acc"], 4)}


def checked(model: Path, data: Path) -> dict:
    """The check-set score of ``model``; refuses (RuntimeError) one below ``MIN_MACRO_F1``."""
    score = evaluate(model, data / "eval")
    print(f"    {json.dumps(score)}")
    if score["macro_f1"] < MIN_MACRO_F1:
        raise RuntimeError(f"{model} scores macro F1 {score['macro_f1']} on {score['images']} unseen synthetic "
                           f"images, below the demo's {MIN_MACRO_F1}; rebuild it with `make demo-model`")
    return score


def install(cfg: DemoConfig) -> str:
    """`make serve`'s first run: check the shipped model on fresh images, then import it; the stored tag."""
    from export.store import import_to_store

    if not cfg.model_file.is_file():
        raise FileNotFoundError(f"no demo model at {cfg.model_file}; build one with `make demo-model`")
    started = time.perf_counter()
    t = _stage(f"1/3 check set: {cfg.eval_people} synthetic people the model never saw -> {cfg.workdir / 'data'}")
    data = check_data(cfg)
    _done(t)
    t = _stage(f"2/3 checking the shipped demo model {cfg.model_file}")
    checked(cfg.model_file, data)
    _done(t)
    t = _stage(f"3/3 importing it into the model store as {STORE_NAME}")
    tag = import_to_store(cfg.model_file, STORE_NAME)
    _done(t)
    print(f"\ndemo model {tag} ready in {time.perf_counter() - started:.0f}s")
    return tag


def _train(cfg: DemoConfig) -> Path:
    """Synthetic training data + the recipe; the run folder."""
    from maskdata.synth import generate
    from training.cli import main as train_main

    data, run = cfg.workdir / "train-data", cfg.workdir / "run"
    t = _stage(f"1/4 synthetic training data: {cfg.people} people -> {data}")
    if (data / "train" / "train.csv").is_file() and not cfg.force:
        print("    already there, reusing it")
    else:
        generate(data, people=cfg.people, eval_people=0, seed=cfg.seed, overwrite=True, progress=True)
    _done(t)
    overrides = {"--model": cfg.model, "--epochs": cfg.epochs, "--sampler": cfg.sampler}
    recipe = [a for k, v in overrides.items() if v is not None for a in (k, str(v))]
    t = _stage(f"2/4 training ({' '.join(recipe) or 'the default CPU recipe'}) -> {run}")
    rc = train_main(["--data-dir", str(data / "train"), "--out", str(run), "--seed", str(cfg.seed), *recipe])
    if rc != 0:
        raise RuntimeError(f"training failed with exit code {rc}")
    _done(t)
    return run


def rebuild(cfg: DemoConfig) -> str:
    """`make demo-model`: train, export, check, then replace the shipped model and import it."""
    from export.cli import main as export_main
    from export.store import import_to_store

    started = time.perf_counter()
    run = _train(cfg)
    onnx_path = cfg.workdir / "model.onnx"
    t = _stage(f"3/4 export to ONNX (parity-checked) -> {onnx_path}")
    if export_main(["--checkpoint", str(run / "best.pt"), "--out", str(onnx_path)]) != 0:
        raise RuntimeError("export failed")
    _done(t)
    t = _stage(f"4/4 checking it on {cfg.eval_people} synthetic people it never saw")
    score = checked(onnx_path, check_data(cfg))
    _done(t)
    tmp = cfg.model_file.with_name(f".{cfg.model_file.name}.tmp")
    shutil.copyfile(onnx_path, tmp)
    os.replace(tmp, cfg.model_file)
    card = {"built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "sha256": sha256_file(cfg.model_file),
            "command": "make demo-model", "training": {"people": cfg.people, "seed": cfg.seed,
                                                      "recipe": "mask-train defaults (recipes/cpu_demo.yaml)",
                                                      "overrides": {"model": cfg.model, "epochs": cfg.epochs,
                                                                    "sampler": cfg.sampler}},
            "check_set": {"seed": cfg.check_seed, "people": cfg.eval_people, **score},
            "machine": {"cpu_flags": simd_flags(), "processor": platform.processor() or platform.machine()},
            "build_seconds": round(time.perf_counter() - started)}
    atomic_write_text(cfg.model_file.with_suffix(".json"), json.dumps(card, indent=2) + "\n")
    tag = import_to_store(cfg.model_file, STORE_NAME)
    print(f"\ndemo model {cfg.model_file} rebuilt and stored as {tag} in {card['build_seconds']}s")
    return tag


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m demo",
        description="Put the demo mask-classifier model in the BentoML store: the shipped demo/model.onnx "
                    "after a check on fresh synthetic images (make serve), or --rebuild it from scratch "
                    "(make demo-model: synthetic data, the default training recipe, export).")
    d = DemoConfig()
    parser.add_argument("--workdir", type=Path, default=d.workdir, help=f"work folder (default {d.workdir})")
    parser.add_argument("--rebuild", action="store_true",
                        help="train and export a new demo model, replace demo/model.onnx, store it (minutes)")
    parser.add_argument("--people", type=int, default=d.people, help=f"--rebuild: training people (default {d.people})")
    parser.add_argument("--eval-people", type=int, default=d.eval_people,
                        help=f"people in the check set (default {d.eval_people}, 7 photos each)")
    parser.add_argument("--epochs", type=int, default=d.epochs, help="--rebuild: training epochs (default: mask-train's)")
    parser.add_argument("--model", default=d.model, help="--rebuild: architecture (default: mask-train's)")
    parser.add_argument("--sampler", default=d.sampler, help="--rebuild: training sampler (default: mask-train's)")
    parser.add_argument("--seed", type=int, default=d.seed, help="--rebuild: data and training seed")
    parser.add_argument("--force", action="store_true",
                        help="import (or rebuild) even if the store has a mask-classifier; remake the data")
    parser.add_argument("--wait-ready", metavar="URL",
                        help="only wait until URL/readyz answers, then print a curl command to try (make serve)")
    parser.add_argument("--server-pid", type=int, help="with --wait-ready: give up if this process exits")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # this project's progress at INFO; the export libraries' rewrite logs stay quiet (mask-export -v shows them)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("demo", "export", "training", "maskdata", "serving"):
        logging.getLogger(name).setLevel(logging.INFO)
    if args.wait_ready:
        return wait_ready(args.wait_ready, args.workdir, args.server_pid)
    cfg = DemoConfig(workdir=args.workdir, people=args.people, eval_people=args.eval_people, epochs=args.epochs,
                     model=args.model, sampler=args.sampler, seed=args.seed, force=args.force,
                     rebuild=args.rebuild)
    try:
        if cfg.rebuild:
            rebuild(cfg)
            return 0
        existing = stored_model()
        if existing and not cfg.force:
            print(describe_stored(existing, cfg.model_file))
            return 0
        install(cfg)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
