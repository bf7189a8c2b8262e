"""The batch submission job: info.csv + images folder → the competition submission CSV.

``run_submission`` is what ``mask-submit`` runs and ``run_archive_job`` is what the service's
``/submission`` task runs; both go through :class:`serving.predictor.Predictor`, so a batch answer
equals the ``/predict`` answer for the same file. The job, in order:

1. read info.csv (BOM, CRLF, quotes, extra columns accepted) and refuse a missing ``ImageID``
   column, empty or duplicate ImageIDs, and ImageIDs that escape the images folder (``..``,
   absolute paths, symlinks pointing outside);
2. find every missing image *before* inference (fail, or ``on_error="skip"``: ``ans=-1`` + report);
3. decode in parallel workers overlapped with batched inference (:mod:`serving.pipeline`),
   appending each finished batch to a journal beside the output (``OUT.journal``);
4. write the output atomically (every original column, original order, ``ans`` filled), the
   optional probabilities file and the error report, then delete the journal.

An interrupted run (Ctrl-C, kill -9) resumes from the journal with ``resume=True``. Batches sit on
a fixed grid of the job's rows, so a resumed run feeds the model exactly the batches an
uninterrupted one would and writes a byte-identical file.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from tqdm import tqdm

from maskdata import labels
from maskdata.io import atomic_write_text, read_csv
from maskdata.preprocess import DEFAULT_MAX_PIXELS
from maskdata.scoring import SKIPPED
from serving.archive import ArchiveLimits, extract_images
from serving.journal import Journal
from serving.pipeline import EXECUTORS, decoded_batches
from serving.settings import MAX_NICE, Settings
from serving.shards import Shard, write_csv_text

log = logging.getLogger(__name__)

ON_ERROR = ("fail", "skip")
JOURNAL_VERSION = 1


def default_workers() -> int:
    """One decode worker per core, up to 8 (beyond that the model, not decoding, is the bottleneck)."""
    return max(1, min(8, os.cpu_count() or 1))


@dataclass(frozen=True)
class SubmitOptions:
    batch_size: int = 64
    workers: int = field(default_factory=lambda: default_workers())
    worker_kind: str = "thread"
    prefetch: int | None = None          # decoded batches in flight; default 2 * workers
    decode_nice: int | None = None       # decode workers' nice steps below the model; None: MASK_DECODE_NICE
    on_error: str = "fail"               # fail | skip
    resume: bool = False
    probs_csv: str | Path | None = None
    shard: Shard | None = None
    progress: bool = True
    fsync_seconds: float = 5.0           # journal is flushed every batch, fsync'd at most this often

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {self.batch_size}")
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if self.worker_kind not in EXECUTORS:
            raise ValueError(f"unknown worker kind {self.worker_kind!r}; expected one of {sorted(EXECUTORS)}")
        if self.on_error not in ON_ERROR:
            raise ValueError(f"unknown on-error policy {self.on_error!r}; expected one of {sorted(ON_ERROR)}")
        if self.decode_nice is not None and not 0 <= self.decode_nice <= MAX_NICE:
            raise ValueError(f"decode nice must be 0..{MAX_NICE}, got {self.decode_nice}")


@dataclass
class SubmitResult:
    out_csv: Path
    image_ids: list[str]
    ans: np.ndarray                      # (n,) int: class index, -1 where skipped
    probs: np.ndarray                    # (n, 18) float32: NaN where skipped
    errors: dict[str, str]               # ImageID -> reason, for skipped rows
    seconds: float                       # decode + inference time of this invocation
    processed: int                       # images run through the model by this invocation
    resumed: int = 0                     # rows taken from an earlier run's journal
    report_path: Path | None = None
    class_counts: dict[int, int] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        counts = " ".join(f"{c}:{n}" for c, n in sorted(self.class_counts.items()))
        parts = [f"{len(self.ans)} images", f"{self.seconds:.2f} s", f"{self.images_per_second:.0f} img/s"]
        if self.resumed:
            parts.append(f"{self.resumed} resumed")
        if self.errors:
            parts.append(f"{len(self.errors)} skipped (see {self.report_path})")
        return f"{', '.join(parts)}; per class {counts}"


# ---------------------------------------------------------------- input checks

def check_image_id(image_id: str) -> str:
    """An ImageID that is a plain relative path inside the images folder, or ValueError."""
    if not image_id.strip():
        raise ValueError("empty ImageID")
    if "\x00" in image_id or "\\" in image_id:
        raise ValueError(f"ImageID {image_id!r} contains a backslash or NUL; expected a relative file name")
    if image_id.startswith("/") or (len(image_id) > 1 and image_id[1] == ":"):
        raise ValueError(f"ImageID {image_id!r} is an absolute path; it must be relative to the images folder")
    if ".." in PurePosixPath(image_id).parts:
        raise ValueError(f"ImageID {image_id!r} contains '..'; it would escape the images folder")
    return image_id


def read_info(info_csv: str | Path | bytes) -> tuple[list[str], list[dict[str, str]]]:
    """info.csv → (header with ``ans``, rows); every ImageID checked, duplicates refused."""
    header, rows = read_csv(info_csv, ("ImageID",))
    name = "<upload>" if isinstance(info_csv, bytes) else str(info_csv)
    if not rows:
        raise ValueError(f"{name}: no rows")
    first_line: dict[str, int] = {}
    duplicates: list[str] = []
    for line, row in enumerate(rows, start=2):
        try:
            check_image_id(row["ImageID"])
        except ValueError as e:
            raise ValueError(f"{name}: row {line}: {e}") from None
        if row["ImageID"] in first_line:
            duplicates.append(f"{row['ImageID']!r} (rows {first_line[row['ImageID']]} and {line})")
        else:
            first_line[row["ImageID"]] = line
    if duplicates:
        raise ValueError(f"{name}: {len(duplicates)} duplicate ImageID(s): {', '.join(duplicates[:5])}"
                         f"{' ...' if len(duplicates) > 5 else ''}")
    if "ans" not in header:
        header = header + ["ans"]
    return header, rows


def locate_images(image_ids: list[str], images_dir: str | Path) -> tuple[list[str], dict[str, str]]:
    """Absolute paths of the images and {ImageID: reason} for the missing ones.

    Raises ValueError when an ImageID resolves (through a symlink) outside ``images_dir``.
    """
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"images folder not found: {images_dir}")
    root = images_dir.resolve()
    paths, missing, escaping = [], {}, []
    for image_id in image_ids:
        path = images_dir / image_id
        real = path.resolve()
        if not real.is_relative_to(root):
            escaping.append(f"{image_id!r} -> {real}")
        elif not real.is_file():
            missing[image_id] = "missing image file" if not os.path.lexists(path) else "not a regular file"
        paths.append(str(real))
    if escaping:
        raise ValueError(f"{len(escaping)} ImageID(s) point outside the images folder {root} (symlinks?): "
                         f"{', '.join(escaping[:5])}")
    return paths, missing


# ---------------------------------------------------------------- journal (resume)

def job_fingerprint(image_ids: list[str], images_dir: Path, predictor, shard: Shard | None) -> str:
    h = hashlib.sha256()
    h.update("\n".join(image_ids).encode())
    h.update(str(Path(images_dir).resolve()).encode())
    h.update(str(getattr(predictor, "source", "")).encode())
    h.update(json.dumps(predictor.metadata.to_props(), sort_keys=True).encode())
    if getattr(predictor, "preprocess", None) is not None:   # a --aspect override changes the answers
        h.update(json.dumps(predictor.preprocess.to_dict(), sort_keys=True).encode())
    h.update(str(shard).encode())
    return h.hexdigest()[:24]


# ---------------------------------------------------------------- the job

def _record_rows(record: dict) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    ans = np.asarray(record["ans"], dtype=np.int64)
    probs = np.full((len(ans), labels.NUM_CLASSES), np.nan, dtype=np.float32)
    for i, row in enumerate(record["probs"]):
        if row is not None:
            probs[i] = row
    return ans, probs, {int(k): v for k, v in record["errors"].items()}


def _format_probs(image_ids: list[str], probs: np.ndarray, uncertain_below: float | None = None) -> str:
    header = ["ImageID"] + [f"p{c}" for c in range(labels.NUM_CLASSES)] + ["uncertain"]
    rows = []
    for image_id, row in zip(image_ids, probs):
        skipped = np.isnan(row).any()
        values = [""] * labels.NUM_CLASSES if skipped else [f"{v:.9g}" for v in row]
        flag = "" if skipped else str(int(uncertain_below is not None and float(row.max()) < uncertain_below))
        rows.append(dict(zip(header, [image_id, *values, flag])))
    return write_csv_text(header, rows)


def predict_batch(predictor, batch, ids: list[str], missing: dict[str, str],
                   on_error: str) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """(ans, probs, {row: reason}) for one grid batch whose present images are ``batch``."""
    present = [i for i, image_id in enumerate(ids) if image_id not in missing]   # what the worker decoded
    errors = {i: missing[image_id] for i, image_id in enumerate(ids) if image_id in missing}
    errors.update({present[j]: reason for j, reason in batch.errors.items()})
    if batch.errors and on_error == "fail":
        bad = [f"{ids[present[j]]}: {reason}" for j, reason in batch.errors.items()]
        raise ValueError(f"{len(bad)} image(s) could not be decoded: {'; '.join(bad[:5])}. "
                         f"Use --on-error skip to mark them -1")
    ans = np.full(len(ids), SKIPPED, dtype=np.int64)
    probs = np.full((len(ids), labels.NUM_CLASSES), np.nan, dtype=np.float32)
    ok = [present[j] for j in np.flatnonzero(batch.ok)]
    if ok:
        p = predictor.infer(batch.images)
        probs[ok], ans[ok] = p, p.argmax(axis=1)
    return ans, probs, errors


def _store(rows: range, b_ans, b_probs, b_errors: dict[int, str], ans, probs, errors: dict[str, str],
           image_ids: list[str]) -> None:
    ans[rows.start:rows.stop], probs[rows.start:rows.stop] = b_ans, b_probs
    errors.update({image_ids[rows.start + i]: r for i, r in b_errors.items()})


def write_outputs(out_csv: Path, header: list[str], rows: list[dict], ans: np.ndarray, probs: np.ndarray,
                  errors: dict[str, str], probs_csv, report_path: Path, uncertain_below: float | None = None) -> None:
    image_ids = [r["ImageID"] for r in rows]
    atomic_write_text(out_csv, write_csv_text(header, [{**row, "ans": str(int(a))} for row, a in zip(rows, ans)]))
    if probs_csv is not None:
        atomic_write_text(probs_csv, _format_probs(image_ids, probs, uncertain_below))
    if errors:
        atomic_write_text(report_path, write_csv_text(["ImageID", "reason"], [
            {"ImageID": k, "reason": errors[k]} for k in image_ids if k in errors]))
    elif report_path.exists():
        report_path.unlink()


def _max_pixels(predictor) -> int:
    settings = getattr(predictor, "settings", None)
    return getattr(settings, "max_pixels", DEFAULT_MAX_PIXELS)


def _decode_nice(opts: SubmitOptions) -> int:
    return opts.decode_nice if opts.decode_nice is not None else Settings.from_env().decode_nice


def check_output_path(out_csv) -> Path:
    """The submission path, checked before any work: its folder exists and it is not a folder."""
    out_csv = Path(out_csv)
    if not out_csv.parent.is_dir():
        raise FileNotFoundError(f"output folder {out_csv.parent} does not exist")
    if out_csv.is_dir():
        raise ValueError(f"output path {out_csv} is a directory; expected a file path such as {out_csv}/submission.csv")
    return out_csv


def check_missing(image_ids: list[str], missing: dict[str, str], on_error: str, report_path: Path,
                  images: str) -> None:
    """Before any work: with ``on_error="fail"`` a missing image stops the job (the list goes to
    ``report_path``); with ``skip`` the missing rows will get ``ans=-1``."""
    if missing and on_error == "fail":
        atomic_write_text(report_path, write_csv_text(["ImageID", "reason"],
                                                      [{"ImageID": k, "reason": v} for k, v in missing.items()]))
        raise FileNotFoundError(f"{len(missing)} of {len(image_ids)} images are missing from {images} "
                                f"(e.g. {', '.join(list(missing)[:5])}); full list in {report_path}. "
                                f"Use --on-error skip to predict the others and mark these -1")
    if missing:
        log.warning("%d images missing; they get ans=%d (listed in %s)", len(missing), SKIPPED, report_path)


def run_submission(predictor, info_csv: str | Path | bytes, images_dir: str | Path, out_csv: str | Path,
                   **options) -> SubmitResult:
    """Predict every row of ``info_csv`` and write the submission; see the module docstring.

    ``options`` are :class:`SubmitOptions` fields. Raises ValueError/FileNotFoundError on bad input.
    """
    opts = SubmitOptions(**options)
    nice = _decode_nice(opts)   # a bad MASK_DECODE_NICE fails here, before any output exists
    out_csv = check_output_path(out_csv)
    header, rows = read_info(info_csv)
    if opts.shard is not None:
        rows = [rows[i] for i in opts.shard.rows(len(rows))]
    image_ids = [r["ImageID"] for r in rows]
    paths, missing = locate_images(image_ids, images_dir)
    report_path = out_csv.with_name(out_csv.name + ".errors.csv")
    check_missing(image_ids, missing, opts.on_error, report_path, str(images_dir))

    header_j = {"journal": "mask-submit", "version": JOURNAL_VERSION, "rows": len(rows),
                "fingerprint": job_fingerprint(image_ids, Path(images_dir), predictor, opts.shard),
                "batch_size": opts.batch_size}
    journal, done = Journal.open(Journal.path_for(out_csv), header_j, opts.resume, opts.fsync_seconds)
    batch_size = journal.header["batch_size"]
    if batch_size != opts.batch_size:
        log.info("resuming with the interrupted run's batch size %d", batch_size)
    n = len(rows)
    ans = np.full(n, SKIPPED, dtype=np.int64)
    probs = np.full((n, labels.NUM_CLASSES), np.nan, dtype=np.float32)
    errors: dict[str, str] = {}
    grid = [range(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    for b, record in done.items():
        _store(grid[b], *_record_rows(record), ans, probs, errors, image_ids)
    resumed = sum(len(grid[b]) for b in done)
    if done:
        log.info("resuming: %d of %d images already done", resumed, n)

    todo = [b for b in range(len(grid)) if b not in done]
    # missing rows never reach a worker; their batch keeps its place on the grid
    to_decode = [[paths[i] for i in grid[b] if image_ids[i] not in missing] for b in todo]
    processed, started = 0, time.perf_counter()
    bar = tqdm(total=n, initial=resumed, unit="img", desc="mask-submit", disable=not opts.progress,
               dynamic_ncols=True, smoothing=0.1)
    try:
        batches = decoded_batches(to_decode, predictor.preprocess, max_pixels=_max_pixels(predictor),
                                  workers=opts.workers, kind=opts.worker_kind, prefetch=opts.prefetch, indices=todo,
                                  nice=nice)
        with contextlib.closing(batches):
            for batch in batches:
                rows_b = grid[batch.index]
                b_ans, b_probs, b_errors = predict_batch(predictor, batch, [image_ids[i] for i in rows_b], missing,
                                                          opts.on_error)
                journal.append(batch.index, b_ans, b_probs, b_errors)
                _store(rows_b, b_ans, b_probs, b_errors, ans, probs, errors, image_ids)
                processed += int(batch.ok.sum())
                bar.update(len(b_ans))
    finally:
        bar.close()
        journal.close()
    seconds = time.perf_counter() - started

    write_outputs(out_csv, header, rows, ans, probs, errors, opts.probs_csv, report_path,
                   getattr(predictor, "uncertain_below", None))
    journal.path.unlink()
    predicted = ans[ans != SKIPPED]
    return SubmitResult(out_csv, image_ids, ans, probs, errors, seconds, processed, resumed,
                        report_path if errors else None,
                        dict(sorted(Counter(int(c) for c in predicted).items())))


# ---------------------------------------------------------------- the /submission task

def run_archive_job(predictor, info_csv_bytes: bytes, archive_path: Path, workdir: Path,
                    limits: ArchiveLimits | None = None) -> bytes:
    """Extract the CSV's images from a zip/tar upload, run the job, return the submission CSV bytes.

    Every failure (bad CSV, unsafe or oversized archive, missing or undecodable images) raises
    ValueError with the reason; the temporary folder under ``workdir`` is always removed.
    """
    _, rows = read_info(info_csv_bytes)
    image_ids = [r["ImageID"] for r in rows]
    Path(workdir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="submission-", dir=workdir) as tmp:
        images = Path(tmp) / "images"
        found = extract_images(archive_path, image_ids, images, limits)
        absent = [i for i in image_ids if i not in found]
        if absent:
            raise ValueError(f"{len(absent)} of {len(image_ids)} images named in info.csv are not in the archive "
                             f"(e.g. {', '.join(absent[:5])})")
        out = Path(tmp) / "submission.csv"
        try:
            run_submission(predictor, info_csv_bytes, images, out, progress=False)
        except FileNotFoundError as e:
            raise ValueError(str(e)) from None
        return out.read_bytes()
