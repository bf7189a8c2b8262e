"""The submission job's skeleton, shared by every engine: plan → run the grid → finish.

``mask-submit`` (:func:`serving.local_engine.run_submission`, the local decode pipeline), the
``/submission`` task (the same, on an extracted archive) and ``mask-submit --engine ray``
(:func:`serving.ray_engine.run_ray_submission`, Ray Data actors) are one job::

    plan = plan_job(info_csv, images, out_csv, on_error)      # checks, before any work
    outcome = <engine>(plan)                                    # the only part engines do differently
    result = finish_job(plan, outcome, probs_csv)               # outputs, atomically; SubmitResult

:func:`plan_job`: the output path is checked, info.csv read (BOM, CRLF, quotes, extra columns
accepted; a missing ``ImageID`` column, empty or duplicate ImageIDs and ImageIDs that escape the
images folder refused), every image located and the missing ones handled *before* inference
(fail, or ``on_error="skip"``: ``ans=-1`` + report). An engine predicts the rows in batches of the
fixed grid ``rows[k*batch_size:(k+1)*batch_size]`` with :func:`predict_batch` and returns a
:class:`GridOutcome`. :func:`finish_job` writes the output (every original column, original
order, ``ans`` filled), the optional probabilities file and the error report, then lets the
engine clean up (the local journal is deleted, the Ray Parquet output committed).
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable

import numpy as np

from maskdata import labels
from maskdata.io import atomic_write_text, read_csv
from maskdata.scoring import SKIPPED
from serving import objectstore
from serving.settings import JOB_DEFAULTS
from serving.shards import Shard, write_csv_text

log = logging.getLogger(__name__)

ON_ERROR = ("fail", "skip")


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


def check_on_error(on_error: str) -> str:
    if on_error not in ON_ERROR:
        raise ValueError(f"unknown on-error policy {on_error!r}; expected one of {sorted(ON_ERROR)}")
    return on_error


# ---------------------------------------------------------------- plan

@dataclass(frozen=True)
class JobPlan:
    """What every engine is handed: the checked input, in info.csv order (after a shard's cut)."""

    out_csv: Path
    header: list[str]
    rows: list[dict[str, str]]
    paths: list[str]                     # where each row's image is (local path or URI path)
    missing: dict[str, str]              # ImageID -> reason, found before any work
    on_error: str
    images: str                          # the images folder / URI as given (for messages)

    @property
    def image_ids(self) -> list[str]:
        return [r["ImageID"] for r in self.rows]

    @property
    def report_path(self) -> Path:
        return self.out_csv.with_name(self.out_csv.name + ".errors.csv")

    def grid(self, batch_size: int) -> list[range]:
        """The fixed batches of the job: the same for every engine, for a resumed run and a fresh one."""
        n = len(self.rows)
        return [range(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


Locate = Callable[[list[str], str], tuple[list[str], dict[str, str]]]


def locate_any(image_ids: list[str], images: str | Path) -> tuple[list[str], dict[str, str]]:
    """:func:`locate_images` for a folder or ``file://``; for an object-store prefix (``s3://…``),
    :func:`serving.objectstore.locate_objects`: keys checked, one listing, nothing read."""
    if objectstore.is_remote(images):
        return objectstore.locate_objects(image_ids, objectstore.Store.open(str(images)))
    return locate_images(image_ids, objectstore.local_path(images))


def plan_job(info_csv: str | Path | bytes, images: str | Path, out_csv, on_error: str = JOB_DEFAULTS.on_error,
             shard: Shard | None = None, locate: Locate | None = None, images_root: str | None = None) -> JobPlan:
    """Every check that needs no model, in order: output path → info.csv → locate → missing images.

    ``locate`` finds the images under ``images_root`` (default: :func:`locate_any` on ``images``, a
    folder or an object-store prefix); a missing image with ``on_error="fail"`` raises here, report written.
    """
    check_on_error(on_error)
    out_csv = check_output_path(out_csv)
    header, rows = read_info(info_csv)
    if shard is not None:
        rows = [rows[i] for i in shard.rows(len(rows))]
    image_ids = [r["ImageID"] for r in rows]
    paths, missing = (locate or locate_any)(image_ids, images_root if images_root is not None else images)
    plan = JobPlan(out_csv, header, rows, paths, missing, on_error, str(images))
    check_missing(image_ids, missing, on_error, plan.report_path, plan.images)
    return plan


# ---------------------------------------------------------------- one batch of the grid

def predict_batch(predictor, batch, ids: list[str], missing: dict[str, str],
                  on_error: str) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """(ans, probs, {row: reason}) for one grid batch whose present images are ``batch``
    (a :class:`serving.decode_pool.DecodedBatch`)."""
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


# ---------------------------------------------------------------- finish

@dataclass
class GridOutcome:
    """What an engine hands back: one answer per plan row, in plan order."""

    ans: np.ndarray                      # (n,) int64, SKIPPED where skipped
    probs: np.ndarray                    # (n, 18) float32, NaN where skipped
    errors: dict[str, str]               # ImageID -> reason
    seconds: float
    processed: int
    resumed: int = 0
    uncertain_below: float | None = None   # the model's threshold, for the probabilities file
    written: Callable[[], None] | None = None   # run once the outputs are in place

    @classmethod
    def empty(cls, n: int) -> "GridOutcome":
        return cls(np.full(n, SKIPPED, dtype=np.int64), np.full((n, labels.NUM_CLASSES), np.nan, dtype=np.float32),
                   {}, 0.0, 0)


def _format_probs(image_ids: list[str], probs: np.ndarray, uncertain_below: float | None = None) -> str:
    """ImageID, prob_0..prob_17, uncertain, then logp_0..logp_17: the natural log of the float32
    probabilities (-inf where one underflowed to 0), which a distillation teacher at temperature T needs."""
    n = labels.NUM_CLASSES
    header = ["ImageID", *labels.PROB_COLUMNS, "uncertain", *labels.LOGP_COLUMNS]
    rows = []
    with np.errstate(divide="ignore"):
        logp = np.log(probs.astype(np.float64))
    for image_id, row, lrow in zip(image_ids, probs, logp):
        skipped = np.isnan(row).any()
        values = [""] * n if skipped else [f"{v:.9g}" for v in row]
        logs = [""] * n if skipped else [f"{v:.9g}" for v in lrow]
        flag = "" if skipped else str(int(uncertain_below is not None and float(row.max()) < uncertain_below))
        rows.append(dict(zip(header, [image_id, *values, flag, *logs])))
    return write_csv_text(header, rows)


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


def finish_job(plan: JobPlan, outcome: GridOutcome, probs_csv=None) -> SubmitResult:
    """Write the outputs (atomically), let the engine clean up, count what was done."""
    write_outputs(plan.out_csv, plan.header, plan.rows, outcome.ans, outcome.probs, outcome.errors, probs_csv,
                  plan.report_path, outcome.uncertain_below)
    if outcome.written is not None:
        outcome.written()
    predicted = outcome.ans[outcome.ans != SKIPPED]
    return SubmitResult(plan.out_csv, plan.image_ids, outcome.ans, outcome.probs, outcome.errors, outcome.seconds,
                        outcome.processed, outcome.resumed, plan.report_path if outcome.errors else None,
                        dict(sorted(Counter(int(c) for c in predicted).items())))
