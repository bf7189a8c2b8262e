"""Teacher probability files: read, check, and line up with the training images.

A teacher is a table of per-image class distributions. Three kinds of file are read:

- ``oof_predictions.csv`` / ``val_predictions.csv`` from ``mask-train`` (column ``path``; ``prob_0..17``
  and, since they carry them, the log-probabilities ``logp_0..17``);
- ``mask-submit --probs`` output (column ``ImageID``; ``prob_0..17`` and ``logp_0..17``, or from older
  versions ``p0..p17`` and ``logp0..logp17``);
- the teacher file ``python -m serving.teacher`` writes for an exported ONNX model or ensemble
  (``path``, ``logp_0..17``, with ``FILE.json`` beside it recording the model's preprocessing).

Log-probabilities are what temperature scaling needs; a file with probabilities only is usable at
T = 1 (its rounding hides the small probabilities a higher temperature would lift) and is refused
at any other temperature. Rows are matched to training images by ``person-folder/file-name``, so
a file written on another machine (other absolute paths) still lines up.

Training never imports ``serving`` or ``export``: an ONNX teacher is run by :func:`prepare_onnx_teacher`
as a separate ``python -m serving.teacher`` process whose output is cached in the run folder.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maskdata import labels
from maskdata.io import sha256_file
from maskdata.layout import Sample, fingerprint
from maskdata.preprocess import Preprocess

log = logging.getLogger(__name__)

CACHE_NAME = "teacher_logits.csv"      # an ONNX teacher's output, in the run folder
# how far a row may be from a distribution: rounding of 18 values written with 6 decimals stays far below
DIST_TOLERANCE = 1e-3
_LOGP_PREFIXES = ("logp_", "logp")
_PROB_PREFIXES = ("prob_", "p")


@dataclass
class TeacherTable:
    """Per-image teacher distributions; ``logp`` (N, 18) float64 log-probabilities."""
    source: Path
    keys: list[str]                    # "person/file" (training layout) or the ImageID
    logp: np.ndarray
    exact: bool                        # False: read from probabilities only (T = 1)
    preprocess: dict | None            # the teacher's preprocessing, when the file records it

    def rows_for(self, keys: list[str]) -> np.ndarray:
        """The log-probability rows of ``keys`` in order; a one-line error naming what is missing."""
        index = {k: i for i, k in enumerate(self.keys)}
        missing = [k for k in keys if k not in index]
        if missing:
            raise ValueError(f"teacher {self.source} has no row for {len(missing)} of {len(keys)} training "
                             f"images (e.g. {missing[0]}); make it over the same training data")
        return self.logp[[index[k] for k in keys]]


def image_key(path: str) -> str:
    """``person-folder/file-name`` of a training image path (absolute or relative)."""
    p = Path(path)
    return f"{p.parent.name}/{p.name}"


def _columns(header: list[str], prefixes: tuple[str, ...]) -> tuple[str, list[str]] | None:
    for prefix in prefixes:
        cols = [h for h in header if h.startswith(prefix) and h[len(prefix):].isdigit()]
        if cols:
            ordered = [f"{prefix}{c}" for c in range(len(cols))]
            if sorted(cols) != sorted(ordered):
                raise ValueError(f"class columns {prefix}* are not numbered 0..{len(cols) - 1}")
            return prefix, ordered
    return None


def _float_rows(rows: list[dict], cols: list[str], source: Path) -> np.ndarray:
    try:
        return np.array([[float(r[c]) if r[c] != "" else math.nan for c in cols] for r in rows], dtype=np.float64)
    except ValueError as e:
        raise ValueError(f"teacher {source}: a class column holds a non-number ({e})") from None


def check_distributions(logp: np.ndarray, source: Path, keys: list[str]) -> None:
    """Every row a probability distribution over the classes, or a one-line error naming the first bad row."""
    with np.errstate(over="ignore", invalid="ignore"):
        total = np.exp(logp).sum(1)
    bad = ~np.isfinite(total) | (np.abs(total - 1) > DIST_TOLERANCE) | np.isnan(logp).any(1) | (logp > 1e-6).any(1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"teacher {source}: {int(bad.sum())} row(s) are not probability distributions "
                         f"(e.g. {keys[i]}: sums to {total[i]:.6g}); expected {labels.NUM_CLASSES} "
                         "non-negative probabilities summing to 1")


def read_teacher(path: str | Path) -> TeacherTable:
    """Read any of the three teacher file kinds; one-line errors for a wrong class count or bad rows."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"teacher file not found: {path}")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header, rows = list(reader.fieldnames or []), list(reader)
    key_col = "path" if "path" in header else "ImageID" if "ImageID" in header else None
    if key_col is None:
        raise ValueError(f"teacher {path}: no 'path' or 'ImageID' column; expected mask-train's "
                         "oof/val predictions, mask-submit --probs output or python -m serving.teacher output")
    logp_cols, prob_cols = _columns(header, _LOGP_PREFIXES), _columns(header, _PROB_PREFIXES)
    cols = logp_cols or prob_cols
    if cols is None:
        raise ValueError(f"teacher {path}: no class columns (logp_0.., prob_0.., or p0..)")
    if len(cols[1]) != labels.NUM_CLASSES:
        raise ValueError(f"teacher {path} has {len(cols[1])} classes; the student has {labels.NUM_CLASSES}")
    skipped = [r for r in rows if all(r[c] == "" for c in cols[1])]   # mask-submit --on-error skip rows
    if skipped:
        log.warning("teacher %s: %d row(s) without probabilities (skipped images) left out", path, len(skipped))
        rows = [r for r in rows if not all(r[c] == "" for c in cols[1])]
    keys = [image_key(r[key_col]) if key_col == "path" else r[key_col] for r in rows]
    values = _float_rows(rows, cols[1], path)
    if logp_cols is None:
        if (values < 0).any():
            i = int(np.flatnonzero((values < 0).any(1))[0])
            raise ValueError(f"teacher {path}: row {keys[i]} has a negative probability; rows must be distributions")
        with np.errstate(divide="ignore"):
            values = np.log(values)
    check_distributions(values, path, keys)
    return TeacherTable(path, keys, values, exact=logp_cols is not None, preprocess=recorded_preprocess(path))


def recorded_preprocess(path: Path) -> dict | None:
    """The teacher's preprocessing: ``FILE.json`` (serving.teacher) or the run's ``config.json`` beside it."""
    side = path.with_suffix(".json")
    if side.is_file() and side.name != "config.json":
        meta = json.loads(side.read_text(encoding="utf-8"))
        if "preprocess" in meta:
            return dict(meta["preprocess"])
    run_cfg = path.parent / "config.json"
    if run_cfg.is_file():
        data = json.loads(run_cfg.read_text(encoding="utf-8")).get("data", {})
        if "height" in data:
            return {"height": data["height"], "width": data["width"], "crop": data.get("crop", ""),
                    "aspect": data.get("aspect", "stretch"), "resize_filter": data.get("resize_filter")}
    return None


def view_differences(teacher: dict, student: Preprocess) -> list[str]:
    """What makes the teacher see other pixels of the scene than the student: the crop, the aspect
    policy and (unless both stretch) the input's aspect ratio. Input size and resize filter only change
    the resolution of the same view, so a small student may learn from a larger teacher."""
    diffs = []
    t_crop, t_aspect = teacher.get("crop", "") or "", teacher.get("aspect", "stretch")
    if t_crop != student.crop:
        diffs.append(f"crop {t_crop or 'none'} (teacher) vs {student.crop or 'none'} (student)")
    if t_aspect != student.aspect:
        diffs.append(f"aspect policy {t_aspect} (teacher) vs {student.aspect} (student)")
    t_ratio, s_ratio = teacher["height"] / teacher["width"], student.height / student.width
    if not (t_aspect == student.aspect == "stretch") and abs(t_ratio - s_ratio) > 0.02 * s_ratio:
        diffs.append(f"input {teacher['height']}x{teacher['width']} (teacher) vs {student.height}x{student.width} "
                     f"(student): a different aspect ratio under the {student.aspect} policy frames another view")
    if t_aspect == student.aspect == "pad" and "pad_fill" in teacher and \
            tuple(teacher["pad_fill"]) != tuple(student.pad_fill):
        diffs.append(f"pad fill {tuple(teacher['pad_fill'])} (teacher) vs {tuple(student.pad_fill)} (student)")
    return diffs


def check_preprocess(table: TeacherTable, student: Preprocess) -> None:
    """Refuse, naming the difference, a teacher whose preprocessing shows it another view than the student."""
    if table.preprocess is None:
        log.warning("teacher %s records no preprocessing (no FILE.json or config.json beside it); cannot check "
                    "that it saw what the student sees", table.source)
        return
    diffs = view_differences(table.preprocess, student)
    if diffs:
        raise ValueError(f"teacher {table.source} saw other pixels than the student: {'; '.join(diffs)}")


def teacher_file(cfg) -> Path | None:
    """The table the run reads: the ``--teacher`` CSV, or an ONNX teacher's cache in the run folder."""
    src = cfg.loss.teacher
    if not src:
        return None
    return Path(cfg.train.out) / CACHE_NAME if src.lower().endswith(".onnx") else Path(src)


def _cache_is_current(cache: Path, model: Path, samples: list[Sample]) -> bool:
    meta_path = cache.with_suffix(".json")
    if not (cache.is_file() and meta_path.is_file()):
        return False
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    return meta.get("model_sha256") == sha256_file(model) and meta.get("data_fingerprint") == fingerprint(samples)


def prepare_onnx_teacher(cfg, samples: list[Sample], progress: bool = True) -> Path | None:
    """Run an ``.onnx`` ``--teacher`` once over the training images (``python -m serving.teacher``, a separate
    process, so training imports no serving code) into RUN_DIR/teacher_logits.csv; reuse a current cache."""
    src = cfg.loss.teacher
    if not src or not src.lower().endswith(".onnx"):
        return None
    model, cache = Path(src), teacher_file(cfg)
    if not model.is_file():
        raise FileNotFoundError(f"teacher model not found: {model}")
    if _cache_is_current(cache, model, samples):
        log.info("teacher: using the cached %s (same model and training data)", cache)
        return cache
    log.info("teacher: running %s over the %d training images into %s", model, len(samples), cache)
    cmd = [sys.executable, "-m", "serving.teacher", "--model", str(model), "--data-dir", cfg.data.data_dir,
           "--out", str(cache)] + ([] if progress else ["--no-progress"])
    done = subprocess.run(cmd, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()]
        reason = lines[-1] if lines else f"exit code {done.returncode}"
        raise ValueError(f"teacher {model}: {reason.removeprefix('error: ')}")
    return cache
