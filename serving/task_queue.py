"""Each worker's ``/submission`` job supervisor (docs/serving.md, "Submission task").

:class:`TaskQueue` checks a submission's CSV and archive in the request (the checks the job would
run first, so a bad upload is refused in milliseconds however many jobs run), writes the task to
its :class:`serving.tasks.TaskStore` and runs at most ``MASK_TASK_JOBS`` job processes
(:mod:`serving.task_runner`) at a time; the other tasks wait in order, ``in_progress`` with
``executed_at`` null. A task whose worker exited (``kill -9``, a restart) is adopted by the next
worker that looks — every worker looks when it starts and every :data:`ADOPT_EVERY_S` after that
(:meth:`TaskQueue.start`) — and resumes from its journal; a task whose job has been started
``MASK_TASK_ATTEMPTS`` times without finishing fails with the reason instead. Finished tasks past
``MASK_TASK_RETENTION_S`` are swept every :data:`SWEEP_EVERY_S`.

Every read and write of the store runs in a thread, never on the event loop. A refusal is raised as
the typed error of :mod:`serving.errors`, which both the service and the task routes answer; nothing
here imports BentoML.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import IO

import anyio

from maskdata.io import LOCKS
from serving import task_runner, tasks
from serving.errors import PayloadTooLarge, as_request_error
from serving.local_engine import check_inputs

log = logging.getLogger(__name__)

ADOPT_EVERY_S = 5.0       # how often a worker looks for interrupted tasks to adopt
SWEEP_EVERY_S = 60.0      # how often a worker removes finished tasks past their retention
CANCEL_POLL_S = 1.0       # how often a running job's status is checked for a cancel from any worker
PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)
# a job process ended by one of these was stopped (a shutdown, its worker gone), so its task is
# resumed; any other end (SIGKILL from the OOM killer, a crash) fails the task
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
WORKER_GONE = "its worker exited before the job finished"


def _exit_reason(code: int) -> str:
    return f"signal {-code}" if code < 0 else f"exit code {code}"


def _in_thread(fn, *args):
    return anyio.to_thread.run_sync(fn, *args)


class TaskQueue:
    """This worker's tasks: ``store`` holds them, ``model``/``settings`` are what the jobs load."""

    def __init__(self, store: tasks.TaskStore, model: str, settings) -> None:
        self.store, self.model, self.settings = store, model, settings
        self._owned: dict[str, IO] = {}                 # task id -> the owner lock this worker holds
        self._procs: dict[str, asyncio.subprocess.Process] = {}
        self._finished: dict[str, asyncio.Event] = {}
        self._runs: set[asyncio.Task] = set()           # strong references to the running coroutines
        self._slots: asyncio.Semaphore | None = None
        self._looking: asyncio.Task | None = None

    def meta(self) -> dict:
        """``task.json``: the model and the settings (never the API key) the job process loads."""
        return {"model": self.model, "settings": self.settings.to_fields()}

    # --- submitting --------------------------------------------------------------------------
    async def submit(self, info: IO[bytes], archive: IO[bytes]) -> str:
        """A new task from two seekable uploads, queued. Refused with a typed
        :class:`serving.errors.RequestError` (413 over ``MASK_MAX_UPLOAD_BYTES`` /
        ``MASK_MAX_ARCHIVE_BYTES``, else the status of the reason) when the CSV or the archive would
        fail the job before it read an image."""
        for name, upload, limit in (("info", info, self.settings.max_upload_bytes),
                                    ("archive", archive, self.settings.max_archive_bytes)):
            size = upload.seek(0, os.SEEK_END)
            upload.seek(0)
            if size > limit:
                raise PayloadTooLarge(f"{name}: file of {size} bytes is over the limit of {limit} bytes")
        try:
            await _in_thread(check_inputs, info, archive, self.settings.archive_limits)
        except ValueError as e:   # an unreadable CSV, a CSV without its columns, an archive that is none
            raise as_request_error(e) from None
        task_id = await _in_thread(self.store.create, info, archive, self.meta())
        await self._start(task_id)
        return task_id

    async def submit_paths(self, info: Path, archive: Path) -> str:
        """:meth:`submit` for inputs already on disk."""
        with open(info, "rb") as i, open(archive, "rb") as a:
            return await self.submit(i, a)

    async def retry(self, task_id: str) -> str:
        """A new task with the inputs (and model) of ``task_id``; LookupError if they are gone."""
        def copy() -> str:
            info, archive, meta = self.store.copy_inputs(task_id)
            with open(info, "rb") as i, open(archive, "rb") as a:
                return self.store.create(i, a, {k: v for k, v in meta.items() if k != "created_at"})

        new_id = await _in_thread(copy)
        await self._start(new_id)
        return new_id

    async def cancel(self, task_id: str) -> dict:
        """Mark it canceled; the worker running it (this one or another) stops its job process.
        Returns its status."""
        await _in_thread(lambda: self.store.set_status(task_id, tasks.CANCELED, error=f"task {task_id} was canceled",
                                                       http_status=409))
        proc = self._procs.get(task_id)
        if proc is not None and proc.returncode is None:
            proc.terminate()
        return await _in_thread(self.store.status, task_id)

    async def wait(self, task_id: str) -> None:
        """Until the task is final (a task this worker owns)."""
        event = self._finished.get(task_id)
        if event is not None:
            await event.wait()

    # --- looking after interrupted and expired tasks ---------------------------------------------
    async def adopt_interrupted(self) -> int:
        """Claim every task whose worker exited before it finished; returns how many."""
        if not LOCKS:
            return 0
        adopted = 0
        for task_id in await _in_thread(self._unfinished):
            adopted += await self._start(task_id)
        if adopted:
            log.info("adopted %d interrupted /submission task(s)", adopted)
        return adopted

    def _unfinished(self) -> list[str]:
        found = []
        for task_id in self.store.task_ids():
            with contextlib.suppress(KeyError, OSError, ValueError):   # removed or being written meanwhile
                if task_id not in self._owned and self.store.raw_status(task_id)["status"] not in tasks.FINAL:
                    found.append(task_id)
        return found

    def start(self) -> None:
        """Adopt interrupted tasks and sweep expired ones now, then every :data:`ADOPT_EVERY_S` and
        :data:`SWEEP_EVERY_S`, in this event loop (the worker's start-up hook): a task left by a dead
        worker runs even if nobody asks after it."""
        async def loop() -> None:
            swept = float("-inf")
            while True:
                try:
                    await self.adopt_interrupted()
                    if time.monotonic() - swept >= SWEEP_EVERY_S:
                        swept = time.monotonic()
                        await _in_thread(self.store.sweep)
                except Exception:   # a bad folder must not end the loop; the next look tries again
                    log.exception("looking after /submission tasks failed")
                await asyncio.sleep(ADOPT_EVERY_S)

        if self._looking is None or self._looking.done():
            self._looking = asyncio.ensure_future(loop())

    def stop(self) -> None:
        if self._looking is not None:
            self._looking.cancel()
            self._looking = None

    # --- running -----------------------------------------------------------------------------
    async def _start(self, task_id: str) -> bool:
        if task_id in self._owned:
            return False
        handle = await _in_thread(self.store.claim, task_id)
        if handle is None:
            return False
        if task_id in self._owned:   # another _start got it during the await (where there are no locks)
            handle.close()
            return False
        self._owned[task_id] = handle
        self._finished[task_id] = asyncio.Event()
        run = asyncio.ensure_future(self._run(task_id))
        self._runs.add(run)
        run.add_done_callback(self._runs.discard)
        return True

    async def _run(self, task_id: str) -> None:
        if self._slots is None:   # made in the loop that runs the jobs
            self._slots = asyncio.Semaphore(self.settings.task_jobs)
        try:
            async with self._slots:
                if await _in_thread(self._begin_attempt, task_id):
                    await self._run_process(task_id)
        except Exception:
            log.exception("/submission task %s: the worker could not run its job", task_id)
            await _in_thread(lambda: self.store.set_status(
                task_id, tasks.FAILED, error="internal error: the job could not be started", http_status=500))
        finally:
            self._procs.pop(task_id, None)
            await _in_thread(self._tidy, task_id)
            self._owned.pop(task_id).close()
            self._finished[task_id].set()
            self._finished.pop(task_id, None)

    def _begin_attempt(self, task_id: str) -> bool:
        """Count one more job process for the task, or fail it if it has had its ``MASK_TASK_ATTEMPTS``;
        False when there is nothing to run."""
        state = self.store.raw_status(task_id)
        if state["status"] in tasks.FINAL:
            return False
        started = int(state.get("attempts", 0))
        if started >= self.settings.task_attempts:
            self.store.set_status(
                task_id, tasks.FAILED, http_status=500,
                error=f"internal error: the job was started {started} time(s) and interrupted each time (last: "
                      f"{state.get('interrupted') or WORKER_GONE}); not tried again (MASK_TASK_ATTEMPTS="
                      f"{self.settings.task_attempts}): POST /submission/retry runs it as a new task")
            log.error("/submission task %s failed after %d interrupted attempts", task_id, started)
            return False
        self.store.set_status(task_id, tasks.IN_PROGRESS, executed_at=tasks.now(), attempts=started + 1,
                              interrupted=None)
        return True

    def _tidy(self, task_id: str) -> None:
        with contextlib.suppress(KeyError, OSError, ValueError):
            if self.store.raw_status(task_id)["status"] in tasks.FINAL:   # canceled, or its process died
                shutil.rmtree(self.store.folder(task_id) / tasks.WORK_DIR, ignore_errors=True)

    async def _run_process(self, task_id: str) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (PACKAGE_ROOT, os.environ.get("PYTHONPATH", "")) if p)}
        # a session of its own: a Ctrl-C meant for the server must not fail the job (the job goes with its
        # worker, and the task stays unfinished for the next worker to resume)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "serving.task_runner", str(self.store.root / task_id), env=env,
            start_new_session=True)
        self._procs[task_id] = proc
        waiting = asyncio.ensure_future(proc.wait())
        while not (await asyncio.wait({waiting}, timeout=CANCEL_POLL_S))[0]:
            status = (await _in_thread(self.store.raw_status, task_id))["status"]
            if status == tasks.CANCELED and proc.returncode is None:
                proc.terminate()
        await _in_thread(self._record_end, task_id, waiting.result())

    def _record_end(self, task_id: str, code: int) -> None:
        if self.store.raw_status(task_id)["status"] in tasks.FINAL:   # it ended, or was canceled, first
            return
        if -code in STOP_SIGNALS:   # stopped, not crashed: a shutdown, or its worker's death
            log.warning("/submission task %s: its job process was stopped (%s); the task stays unfinished and "
                        "the next worker to look resumes it", task_id, _exit_reason(code))
            self.store.set_status(task_id, tasks.IN_PROGRESS,
                                  interrupted=f"its job process was stopped by {_exit_reason(code)}")
        elif code not in (task_runner.DONE, task_runner.BUSY):
            self.store.set_status(task_id, tasks.FAILED, http_status=500,
                                  error=f"internal error: the job process ended with {_exit_reason(code)}")
