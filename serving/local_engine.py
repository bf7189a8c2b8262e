"""The local engine of the batch submission job: info.csv + images folder → the submission CSV.

``run_submission`` is what ``mask-submit`` runs and ``run_archive_job`` is what the service's
``/submission`` task runs; both go through :class:`serving.predictor.Predictor`, so a batch answer
equals the ``/predict`` answer for the same file. The plan (checks before any work) and the finish
(outputs written atomically) are :mod:`serving.submission_job`'s, shared with the Ray engine; this module runs
the grid: decode in parallel workers overlapped with batched inference (:mod:`serving.decode_pool`),
appending each finished batch to a journal beside the output (``OUT.journal``), deleted at the end.

An interrupted run (Ctrl-C, kill -9) resumes from the journal with ``resume=True``. Batches sit on
a fixed grid of the job's rows, so a resumed run feeds the model exactly the batches an
uninterrupted one would and writes a byte-identical file.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable

from tqdm import tqdm

from serving import objectstore
from serving.archive import ArchiveLimits, check_archive, extract_images
from serving.submission_job import GridOutcome, JobPlan, SubmitResult, check_on_error, finish_job, plan_job, predict_batch, read_info
from serving.journal import model_identity, open_job_journal, record_rows
from serving.decode_pool import EXECUTORS, decoded_batches
from serving.settings import JOB_DEFAULTS, Settings, check_nice
from serving.shards import Shard

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SubmitOptions:
    batch_size: int = JOB_DEFAULTS.batch_size
    workers: int = field(default_factory=lambda: JOB_DEFAULTS.workers())
    worker_kind: str = JOB_DEFAULTS.worker_kind
    prefetch: int | None = None          # decoded batches in flight; default 2 * workers
    decode_nice: int | None = None       # decode workers' nice steps below the model; None: the predictor's settings'
    on_error: str = JOB_DEFAULTS.on_error   # fail | skip
    resume: bool = False
    probs_csv: str | Path | None = None
    shard: Shard | None = None
    progress: bool = True
    on_progress: Callable[[int, int], None] | None = None   # (images done, total) after every batch
    fsync_seconds: float = 5.0           # journal is flushed every batch, fsync'd at most this often

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {self.batch_size}")
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if self.worker_kind not in EXECUTORS:
            raise ValueError(f"unknown worker kind {self.worker_kind!r}; expected one of {sorted(EXECUTORS)}")
        check_on_error(self.on_error)
        if self.decode_nice is not None:
            check_nice(self.decode_nice, "decode nice")


# ---------------------------------------------------------------- the job

def _store(rows: range, b_ans, b_probs, b_errors: dict[int, str], ans, probs, errors: dict[str, str],
           image_ids: list[str]) -> None:
    ans[rows.start:rows.stop], probs[rows.start:rows.stop] = b_ans, b_probs
    errors.update({image_ids[rows.start + i]: r for i, r in b_errors.items()})


def _settings(predictor) -> Settings:
    """The settings the predictor was loaded with (the process's, handed down); else the defaults."""
    return getattr(predictor, "settings", None) or Settings.defaults()


def _decode_nice(opts: SubmitOptions, predictor) -> int:
    return opts.decode_nice if opts.decode_nice is not None else _settings(predictor).decode_nice


def run_submission(predictor, info_csv: str | Path | bytes, images_dir: str | Path, out_csv: str | Path,
                   **options) -> SubmitResult:
    """Predict every row of ``info_csv`` and write the submission; see the module docstring.

    ``options`` are :class:`SubmitOptions` fields. Raises ValueError/FileNotFoundError on bad input.
    """
    opts = SubmitOptions(**options)
    nice = _decode_nice(opts, predictor)
    plan = plan_job(info_csv, images_dir, out_csv, opts.on_error, opts.shard)
    return finish_job(plan, _run_grid(plan, predictor, opts, nice), opts.probs_csv)


def _run_grid(plan: JobPlan, predictor, opts: SubmitOptions, nice: int) -> GridOutcome:
    """The grid in this process: decode workers feed batches to the model, each batch journalled."""
    journal, done, batch_size = open_job_journal(plan, model_identity(predictor), opts.shard, opts.batch_size,
                                                 opts.resume, opts.fsync_seconds)
    image_ids, n = plan.image_ids, len(plan.rows)
    out = GridOutcome.empty(n)
    grid = plan.grid(batch_size)
    for b, record in done.items():
        _store(grid[b], *record_rows(record), out.ans, out.probs, out.errors, image_ids)
    out.resumed = sum(len(grid[b]) for b in done)
    if done:
        log.info("resuming: %d of %d images already done", out.resumed, n)
    todo = [b for b in range(len(grid)) if b not in done]
    # missing rows never reach a worker; their batch keeps its place on the grid
    to_decode = [[plan.paths[i] for i in grid[b] if image_ids[i] not in plan.missing] for b in todo]
    started = time.perf_counter()
    finished = out.resumed
    bar = tqdm(total=n, initial=out.resumed, unit="img", desc="mask-submit", disable=not opts.progress,
               dynamic_ncols=True, smoothing=0.1)
    try:
        batches = decoded_batches(to_decode, objectstore.reader_for(plan.images, predictor.preprocess),
                                  max_pixels=_settings(predictor).max_pixels,
                                  workers=opts.workers, kind=opts.worker_kind, prefetch=opts.prefetch, indices=todo,
                                  nice=nice)
        with contextlib.closing(batches):
            for batch in batches:
                rows_b = grid[batch.index]
                b_ans, b_probs, b_errors = predict_batch(predictor, batch, [image_ids[i] for i in rows_b],
                                                         plan.missing, plan.on_error)
                journal.append(batch.index, b_ans, b_probs, b_errors)
                _store(rows_b, b_ans, b_probs, b_errors, out.ans, out.probs, out.errors, image_ids)
                out.processed += int(batch.ok.sum())
                bar.update(len(b_ans))
                finished += len(rows_b)   # the bar's own count stays 0 when it is disabled
                if opts.on_progress is not None:
                    opts.on_progress(finished, n)
    finally:
        bar.close()
        journal.close()
    out.seconds = time.perf_counter() - started
    out.uncertain_below = getattr(predictor, "uncertain_below", None)
    out.written = journal.path.unlink
    return out


# ---------------------------------------------------------------- the /submission task

def run_archive_job(predictor, info_csv_bytes: bytes, archive_path: Path, workdir: Path,
                    limits: ArchiveLimits | None = None, *, resume: bool = False,
                    on_progress: Callable[[int, int], None] | None = None) -> bytes:
    """Extract the CSV's images from a zip/tar upload, run the job, return the submission CSV bytes.

    Every failure (bad CSV, unsafe or oversized archive, missing or undecodable images) raises
    ValueError with the reason. Without ``resume`` the job works in a temporary folder under
    ``workdir``, always removed. With it, the job works in ``workdir`` itself and leaves it for the
    caller to remove: a run stopped part-way (its process killed) continues from its journal when
    called again on the same folder. ``on_progress(done, total)`` follows the images.
    """
    _, rows = read_info(info_csv_bytes)
    image_ids = [r["ImageID"] for r in rows]
    limits = limits or Settings.defaults().archive_limits
    Path(workdir).mkdir(parents=True, exist_ok=True)
    job = functools.partial(_archive_job_in, predictor=predictor, info_csv_bytes=info_csv_bytes, image_ids=image_ids,
                            archive_path=archive_path, limits=limits, resume=resume, on_progress=on_progress)
    if resume:
        return job(Path(workdir))
    with tempfile.TemporaryDirectory(prefix="submission-", dir=workdir) as tmp:
        return job(Path(tmp))


def _archive_job_in(folder: Path, *, predictor, info_csv_bytes: bytes, image_ids: list[str], archive_path: Path,
                    limits: ArchiveLimits, resume: bool, on_progress) -> bytes:
    images = folder / "images"
    _refuse_absent(image_ids, extract_images(archive_path, image_ids, images, limits))
    out = folder / "submission.csv"
    try:
        run_submission(predictor, info_csv_bytes, images, out, progress=False, resume=resume, on_progress=on_progress)
    except FileNotFoundError as e:
        raise ValueError(str(e)) from None
    return out.read_bytes()


def _refuse_absent(image_ids: list[str], found) -> None:
    absent = [i for i in image_ids if i not in found]
    if absent:
        raise ValueError(f"{len(absent)} of {len(image_ids)} images named in info.csv are not in the archive "
                         f"(e.g. {', '.join(absent[:5])})")


def check_inputs(info: IO[bytes], archive: IO[bytes], limits: ArchiveLimits) -> None:
    """The checks of :func:`run_archive_job` that need no extraction, for a request to run before it
    queues the job (so a bad upload is refused at once, whatever jobs are running): the CSV, the
    archive's kind, and for a zip its members, limits and that it holds every image the CSV names.
    Raises what the job would raise; both files are left at their start."""
    try:
        _, rows = read_info(info.read())
        image_ids = [r["ImageID"] for r in rows]
        found = check_archive(archive, image_ids, limits)
        if found is not None:
            _refuse_absent(image_ids, found)
    finally:
        info.seek(0)
        archive.seek(0)
