"""Run one ``/submission`` task in a process of its own: ``python -m serving.task_runner TASK_FOLDER``.

The worker that owns the task (:mod:`serving.task_routes`) starts this and waits for it. Running the
job here rather than in the worker means that everything the job allocates (the model's second
session, the decode threads' buffers, the allocator's arenas) goes back to the operating system
when this process exits: the worker's memory is the same after a 12,600-image job as before it. A
crash here (a decoder fault, the OOM killer) fails the task, not the worker.

It loads the model the service serves with the service's settings (``task.json``), extracts the
archive, runs :func:`serving.local_engine.run_archive_job` in the task's ``work/`` folder (journalled:
a run killed part-way is resumed by the next, not restarted), reports ``progress.json`` about once a
second, and writes ``result.csv`` and the final status itself, so the outcome is recorded even if
the worker is gone by then. On Linux it asks to be sent SIGTERM if the worker dies, so no job
outlives the service that queued it; the next worker adopts the interrupted task
(:meth:`serving.tasks.TaskStore.claim`) and resumes it.
"""
from __future__ import annotations

import logging
import shutil
import signal
import sys
import time
from pathlib import Path

log = logging.getLogger("serving.task_runner")

# exit codes the worker reads: the job ran to a final status / another child holds the task
DONE, BUSY = 0, 3


def die_with_parent() -> None:
    """Linux ``prctl(PR_SET_PDEATHSIG, SIGTERM)``: this process gets SIGTERM when its parent exits."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    except (OSError, AttributeError):   # no prctl in this libc: the job just outlives a dead worker
        pass


def run(folder: Path) -> int:
    """The job of the task in ``folder``: its final status written, or BUSY if it is not ours to run."""
    from maskdata.io import try_lock
    from serving import tasks

    store = tasks.TaskStore(folder.parent)
    run_lock = try_lock(folder / tasks.RUN_LOCK)
    if run_lock is None:
        return BUSY
    with run_lock:
        if store.raw_status(folder.name)["status"] in tasks.FINAL:
            return BUSY
        _run_job(store, folder.name)
    return DONE


def _run_job(store, task_id: str) -> None:
    from maskdata.io import atomic_write_bytes
    from serving import tasks
    from serving.errors import status_of
    from serving.predictor import Predictor
    from serving.settings import Settings
    from serving.local_engine import run_archive_job

    folder, meta = store.folder(task_id), store.meta(task_id)
    work = folder / tasks.WORK_DIR
    try:
        settings = Settings.from_fields(meta["settings"])
        predictor = Predictor(meta["model"], settings=settings)
        csv_bytes = run_archive_job(predictor, (folder / tasks.INFO_FILE).read_bytes(), folder / tasks.ARCHIVE_FILE,
                                    work, settings.archive_limits, resume=True,
                                    on_progress=progress_writer(store, task_id))
    except Exception as e:
        status = status_of(e)
        reason = str(e) if status < 500 else f"internal error: {type(e).__name__}: {e}"
        store.set_status(task_id, tasks.FAILED, error=reason, http_status=status)
        if status >= 500:
            log.exception("task %s failed", task_id)
        shutil.rmtree(work, ignore_errors=True)
        return
    atomic_write_bytes(folder / tasks.RESULT_FILE, csv_bytes)
    store.set_status(task_id, tasks.COMPLETED)
    if store.raw_status(task_id)["status"] == tasks.COMPLETED:
        store.drop_inputs(task_id)
    shutil.rmtree(work, ignore_errors=True)


def progress_writer(store, task_id: str, every_s: float = 1.0):
    """``on_progress`` for the job: ``progress.json`` at most every ``every_s`` seconds, and at the end."""
    last = [float("-inf")]

    def report(done: int, total: int) -> None:
        if done < total and time.monotonic() - last[0] < every_s:
            return
        last[0] = time.monotonic()
        store.set_progress(task_id, done, total)
    return report


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python -m serving.task_runner TASK_FOLDER", file=sys.stderr)
        return 2
    die_with_parent()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run(Path(argv[0]).resolve())


if __name__ == "__main__":
    sys.exit(main())
