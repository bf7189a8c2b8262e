"""Build the demo model `make serve` needs when the store has none: synthetic data → a short
training recipe → ONNX export (parity-checked) → BentoML model store as ``mask-classifier``.

    python -m serving.demo                 # skips everything if mask-classifier is already stored
    python -m serving.demo --force --epochs 8 --people 200

Takes a few minutes on 2 CPU cores and shows progress for every stage. The work folder (default
``.demo/``) keeps the data set, the run and ``model.onnx``; the curl command printed at the end
posts one of its eval images. This module imports torch (through training) and is not part of the
served code.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

STORE_NAME = "mask-classifier"


@dataclass(frozen=True)
class DemoConfig:
    workdir: Path = Path(".demo")
    people: int = 300
    eval_people: int = 50
    # None = mask-train's default CPU recipe (docs/training.md), whose F1 on this data is measured
    epochs: int | None = None
    model: str | None = None
    sampler: str | None = None
    seed: int = 0
    force: bool = False


def stored_model() -> str | None:
    """Tag of the newest ``mask-classifier`` in the BentoML store, or None."""
    import bentoml

    try:
        return str(bentoml.models.get(f"{STORE_NAME}:latest").tag)
    except bentoml.exceptions.NotFound:
        return None


def _stage(name: str) -> float:
    print(f"\n==> {name}", flush=True)
    return time.perf_counter()


def build(cfg: DemoConfig) -> str:
    """Run every stage; returns the stored tag."""
    from export.cli import main as export_main
    from maskdata.synth import generate
    from training.cli import main as train_main

    data, run, onnx_path = cfg.workdir / "data", cfg.workdir / "run", cfg.workdir / "model.onnx"
    cfg.workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    t = _stage(f"1/4 synthetic data: {cfg.people} people + {cfg.eval_people} eval people -> {data}")
    if (data / "train" / "train.csv").is_file() and not cfg.force:
        print("    already there, reusing it")
    else:
        generate(data, people=cfg.people, eval_people=cfg.eval_people, seed=cfg.seed, overwrite=True, progress=True)
    print(f"    {time.perf_counter() - t:.0f}s")

    overrides = {"--model": cfg.model, "--epochs": cfg.epochs, "--sampler": cfg.sampler}
    recipe = [a for k, v in overrides.items() if v is not None for a in (k, str(v))]
    t = _stage(f"2/4 training ({' '.join(recipe) or 'the default CPU recipe'}) -> {run}")
    rc = train_main(["--data-dir", str(data / "train"), "--out", str(run), "--seed", str(cfg.seed), *recipe])
    if rc != 0:
        raise RuntimeError(f"training failed with exit code {rc}")
    print(f"    {time.perf_counter() - t:.0f}s")

    t = _stage(f"3/4 export to ONNX (parity-checked) and import into the model store as {STORE_NAME}")
    rc = export_main(["--checkpoint", str(run / "best.pt"), "--out", str(onnx_path), "--bento-tag", STORE_NAME])
    if rc != 0:
        raise RuntimeError(f"export failed with exit code {rc}")
    tag = stored_model()
    if tag is None:
        raise RuntimeError("export finished but the model store has no mask-classifier")
    print(f"    {time.perf_counter() - t:.0f}s")

    t = _stage("4/4 checking the stored model on the synthetic eval split")
    score = evaluate(tag, data / "eval")
    print(f"    {json.dumps(score)}  ({time.perf_counter() - t:.0f}s)")
    print(f"\ndemo model {tag} built in {time.perf_counter() - started:.0f}s")
    return tag


def evaluate(tag: str, eval_dir: Path) -> dict:
    """Macro F1 / accuracy of the stored model on the eval split's ground truth (answers.csv)."""
    from maskdata import metrics
    from serving.predictor import Predictor

    with open(eval_dir / "answers.csv", newline="") as f:
        answers = [(r["ImageID"], int(r["ans"])) for r in csv.DictReader(f)]
    predictor = Predictor(tag)
    predicted = [p["class"] for p in predictor.predict([eval_dir / "images" / name for name, _ in answers])]
    report = metrics.report([c for _, c in answers], predicted)
    return {"images": len(answers), "macro_f1": round(report["f1"], 4), "accuracy": round(report["acc"], 4)}


def sample_image(workdir: Path) -> Path | None:
    images = sorted((workdir / "data" / "eval" / "images").glob("*"))
    return images[0] if images else None


def wait_ready(url: str, workdir: Path, server_pid: int | None = None, timeout: float = 600.0) -> int:
    """Poll ``url/readyz`` (the model has loaded and warmed up), then print what to paste."""
    import os
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server_pid is not None:
            try:
                os.kill(server_pid, 0)
            except ProcessLookupError:
                print("error: the server exited before it was ready (see its log above)", file=sys.stderr)
                return 1
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as r:
                if r.status == 200:
                    break
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1)
    else:
        print(f"error: {url}/readyz not ready after {timeout:.0f}s", file=sys.stderr)
        return 1
    sample = sample_image(workdir)
    image = str(sample.resolve()) if sample else "photo.jpg"
    print(f"\nmask-classifier is ready at {url}  (API docs: {url}/docs; Ctrl-C stops it)\n"
          f"try:\n  curl -F image=@{image} {url}/predict\n  open {url}/ui/ in a browser\n", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m serving.demo",
        description="Build and store the demo mask-classifier model (synthetic data, short training, export).")
    d = DemoConfig()
    parser.add_argument("--workdir", type=Path, default=d.workdir, help=f"work folder (default {d.workdir})")
    parser.add_argument("--people", type=int, default=d.people, help=f"training people (default {d.people})")
    parser.add_argument("--eval-people", type=int, default=d.eval_people,
                        help=f"eval people (default {d.eval_people})")
    parser.add_argument("--epochs", type=int, default=d.epochs, help="training epochs (default: mask-train's)")
    parser.add_argument("--model", default=d.model, help="architecture (default: mask-train's)")
    parser.add_argument("--sampler", default=d.sampler, help="training sampler (default: mask-train's)")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--force", action="store_true", help="rebuild even if the store has a mask-classifier")
    parser.add_argument("--wait-ready", metavar="URL",
                        help="only wait until URL/readyz answers, then print a curl command to try (make serve)")
    parser.add_argument("--server-pid", type=int, help="with --wait-ready: give up if this process exits")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.wait_ready:
        return wait_ready(args.wait_ready, args.workdir, args.server_pid)
    cfg = DemoConfig(workdir=args.workdir, people=args.people, eval_people=args.eval_people, epochs=args.epochs,
                     model=args.model, sampler=args.sampler, seed=args.seed, force=args.force)
    try:
        existing = stored_model()
        if existing and not cfg.force:
            print(f"model store already has {existing}; nothing to build (use --force to rebuild)")
            return 0
        build(cfg)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
