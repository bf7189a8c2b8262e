"""``python -m serving.teacher``: an exported model's log-probabilities for every image of a training layout.

    python -m serving.teacher --model ensemble.onnx --data-dir DATA/train --out teacher_logits.csv

This is the step that lets ``mask-train --teacher MODEL.onnx`` distil from an exported model or
ensemble without training importing serving code: ``mask-train`` runs this module as a separate
process once and reads its output like an out-of-fold file. Images are decoded with the model's
*recorded* preprocessing (any ``MASK_ASPECT`` override is ignored: a teacher must see what it was
trained on), batched through ONNX Runtime, and written as

- ``OUT`` (CSV): ``path`` (absolute image path), ``logp_0..logp_17`` = ``log_softmax`` of the graph's
  ``logits`` output (for an ensemble the log of the averaged probabilities), 9 significant digits;
- ``OUT`` with the suffix ``.json``: the model path and SHA-256, its preprocessing (``Preprocess.to_dict()``),
  the training data's fingerprint and the image count; ``mask-train`` checks the preprocessing against
  the student's and reuses the file while model and data are unchanged.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from maskdata import labels
from maskdata.io import atomic_write_text, sha256_file
from maskdata.layout import fingerprint, read_train_dir
from serving.settings import JOB_DEFAULTS
from serving.shards import write_csv_text

log = logging.getLogger("serving.teacher")

DEFAULT_BATCH = 64


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _predictor(model: str):
    from serving.predictor import Predictor
    from serving.settings import Settings

    # the defaults: the recorded preprocessing (never a deployment's MASK_ASPECT), the providers available
    return Predictor(model, backend="onnx", settings=Settings.defaults())


def _model_logp(predictor, batch: np.ndarray) -> np.ndarray:
    outputs = [o.name for o in predictor.backend.session.get_outputs()]
    if "logits" in outputs:
        (logits,) = predictor.backend.session.run(["logits"], {predictor.metadata.input_name: batch})
        return log_softmax(np.asarray(logits))
    with np.errstate(divide="ignore"):   # a graph without logits: the log of its probabilities
        return np.log(predictor.infer(batch).astype(np.float64))


def teacher_logp(model: str, paths: list[str], batch_size: int = DEFAULT_BATCH, workers: int | None = None,
                 progress: bool = True) -> tuple[np.ndarray, dict]:
    """(N, 18) log-probabilities of ``paths`` and the model's recorded preprocessing (a dict)."""
    predictor = _predictor(model)
    pre = predictor.metadata.preprocess
    out = np.zeros((len(paths), labels.NUM_CLASSES), dtype=np.float64)
    bar = tqdm(total=len(paths), desc="teacher", unit="img", disable=not progress, leave=False)
    with ThreadPoolExecutor(JOB_DEFAULTS.workers() if workers is None else max(1, workers)) as pool:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            batch = np.stack(list(pool.map(pre, chunk)))
            out[start:start + len(chunk)] = _model_logp(predictor, batch)
            bar.update(len(chunk))
    bar.close()
    return out, pre.to_dict()


def write_teacher(model: str, data_dir: str, out: str | Path, batch_size: int = DEFAULT_BATCH,
                  workers: int | None = None, progress: bool = True) -> Path:
    out = Path(out)
    if not out.parent.is_dir():
        raise FileNotFoundError(f"--out {out}: folder {out.parent} does not exist")
    samples, _ = read_train_dir(data_dir)
    if not samples:
        raise ValueError(f"no training images in {data_dir}")
    paths = [s.path for s in samples]
    logp, preprocess = teacher_logp(model, paths, batch_size, workers, progress)
    header = ["path", *labels.LOGP_COLUMNS]
    rows = [dict(zip(header, [p, *(f"{v:.9g}" for v in row)])) for p, row in zip(paths, logp)]
    model_path = Path(model)
    meta = {"model": str(model_path.resolve()) if model_path.is_file() else model,
            "model_sha256": sha256_file(model_path) if model_path.is_file() else "",
            "preprocess": preprocess, "data_dir": str(Path(data_dir).resolve()),
            "data_fingerprint": fingerprint(samples), "images": len(paths), "values": "log_probs"}
    atomic_write_text(out.with_suffix(".json"), json.dumps(meta, indent=1) + "\n")
    atomic_write_text(out, write_csv_text(header, rows))
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m serving.teacher",
                                description="Write an exported model's (or ensemble's) log-probabilities for every "
                                            "image of a training layout, for mask-train --teacher (docs/training.md, "
                                            "Distillation).")
    p.add_argument("--model", required=True, help="exported .onnx model or ensemble (or a BentoML store tag)")
    p.add_argument("--data-dir", required=True, help="DIR/train with train.csv and images/")
    p.add_argument("--out", required=True, help="CSV to write (OUT.json beside it records the preprocessing)")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, help="images per model call (default %(default)s)")
    p.add_argument("--workers", type=int, default=None,
                   help=f"decode threads (default: one per CPU core, at most {JOB_DEFAULTS.max_workers})")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.batch_size < 1 or (args.workers is not None and args.workers < 1):
            raise ValueError("--batch-size and --workers must be at least 1")
        out = write_teacher(args.model, args.data_dir, args.out, args.batch_size, args.workers,
                            not args.no_progress)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out} and {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
