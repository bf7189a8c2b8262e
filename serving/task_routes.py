"""The ``/submission`` task routes and this worker's job queue (docs/serving.md, "Submission task").

``POST /submission/submit`` (multipart ``info`` + ``archive``) → ``{"task_id", "status"}``;
``GET /submission/status?task_id=``, ``GET /submission/get?task_id=`` (the CSV, or the failed job's
4xx/5xx JSON reason), ``PUT /submission/cancel?task_id=``, ``POST /submission/retry?task_id=``: the
URLs and answers of BentoML's task protocol, served by a small Starlette app the service mounts at
``/submission``. Why not ``@bentoml.task``: :mod:`serving.tasks` says.

Each worker runs at most ``MASK_TASK_JOBS`` job processes (:mod:`serving.task_runner`) at a time;
the others wait in order, ``in_progress`` with ``executed_at`` null. A task whose worker exited
(``kill -9``, a restart) is adopted by the next worker that looks — every worker looks when it
starts and every :data:`ADOPT_EVERY_S` after that (:meth:`TaskQueue.start_adopting`) — and resumes
from its journal. Starlette and the standard library: nothing here imports BentoML.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import IO, Callable

import anyio
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from maskdata.io import LOCKS
from serving import task_runner, tasks
from serving.errors import error_response

log = logging.getLogger(__name__)

ADOPT_EVERY_S = 5.0       # how often a worker looks for interrupted tasks to adopt
CANCEL_POLL_S = 1.0       # how often a running job's status is checked for a cancel from any worker
PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)
# a job process ended by one of these was stopped (a shutdown, its worker gone), so its task is
# resumed; any other end (SIGKILL from the OOM killer, a crash) fails the task
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})


def _exit_reason(code: int) -> str:
    return f"signal {-code}" if code < 0 else f"exit code {code}"


class TaskQueue:
    """This worker's tasks: ``store`` holds them, ``model``/``settings`` are what the jobs load."""

    def __init__(self, store: tasks.TaskStore, model: str, settings) -> None:
        self.store, self.model, self.settings = store, model, settings
        self._owned: dict[str, IO] = {}                 # task id -> the owner lock this worker holds
        self._procs: dict[str, asyncio.subprocess.Process] = {}
        self._finished: dict[str, asyncio.Event] = {}
        self._runs: set[asyncio.Task] = set()           # strong references to the running coroutines
        self._slots: asyncio.Semaphore | None = None
        self._adopter: asyncio.Task | None = None

    def meta(self) -> dict:
        """``task.json``: the model and the settings (never the API key) the job process loads."""
        return {"model": self.model, "settings": self.settings.model_dump(mode="json", exclude={"api_key"})}

    # --- submitting --------------------------------------------------------------------------
    async def submit(self, info: IO[bytes], archive: IO[bytes]) -> str:
        task_id = await anyio.to_thread.run_sync(self.store.create, info, archive, self.meta())
        self._start(task_id)
        await anyio.to_thread.run_sync(self.store.sweep)
        return task_id

    async def submit_paths(self, info: Path, archive: Path, meta: dict | None = None) -> str:
        with open(info, "rb") as i, open(archive, "rb") as a:
            task_id = await anyio.to_thread.run_sync(self.store.create, i, a, meta or self.meta())
        self._start(task_id)
        return task_id

    async def retry(self, task_id: str) -> str:
        """A new task with the inputs (and model) of ``task_id``; LookupError if they are gone."""
        info, archive, meta = self.store.copy_inputs(task_id)
        return await self.submit_paths(info, archive, {k: v for k, v in meta.items() if k != "created_at"})

    def cancel(self, task_id: str) -> None:
        """Mark it canceled; the worker running it (this one or another) stops its job process."""
        self.store.set_status(task_id, tasks.CANCELED, error=f"task {task_id} was canceled", http_status=409)
        proc = self._procs.get(task_id)
        if proc is not None and proc.returncode is None:
            proc.terminate()

    async def wait(self, task_id: str) -> None:
        """Until the task is final (a task this worker owns)."""
        event = self._finished.get(task_id)
        if event is not None:
            await event.wait()

    # --- running -----------------------------------------------------------------------------
    def _start(self, task_id: str) -> bool:
        if task_id in self._owned:
            return False
        handle = self.store.claim(task_id)
        if handle is None:
            return False
        self._owned[task_id] = handle
        self._finished[task_id] = asyncio.Event()
        run = asyncio.ensure_future(self._run(task_id))
        self._runs.add(run)
        run.add_done_callback(self._runs.discard)
        return True

    def adopt_interrupted(self) -> int:
        """Claim every task whose worker exited before it finished; returns how many."""
        if not LOCKS:
            return 0
        adopted = 0
        for task_id in self.store.task_ids():
            try:
                if task_id not in self._owned and self.store.raw_status(task_id)["status"] not in tasks.FINAL:
                    adopted += self._start(task_id)
            except (KeyError, OSError, ValueError):   # removed or being written meanwhile
                continue
        if adopted:
            log.info("adopted %d interrupted /submission task(s)", adopted)
        return adopted

    def start_adopting(self) -> None:
        """Adopt interrupted tasks now and every :data:`ADOPT_EVERY_S` from now on, in this event loop
        (the worker's start-up hook): a task left by a dead worker runs even if nobody asks after it."""
        async def loop() -> None:
            while True:
                try:
                    self.adopt_interrupted()
                except Exception:   # a bad folder must not end the loop; the next look tries again
                    log.exception("looking for interrupted /submission tasks failed")
                await asyncio.sleep(ADOPT_EVERY_S)

        if self._adopter is None or self._adopter.done():
            self._adopter = asyncio.ensure_future(loop())

    def stop_adopting(self) -> None:
        if self._adopter is not None:
            self._adopter.cancel()
            self._adopter = None

    async def _run(self, task_id: str) -> None:
        if self._slots is None:   # made in the loop that runs the jobs
            self._slots = asyncio.Semaphore(self.settings.task_jobs)
        try:
            async with self._slots:
                if self.store.raw_status(task_id)["status"] in tasks.FINAL:
                    return
                self.store.set_status(task_id, tasks.IN_PROGRESS, executed_at=tasks.now())
                await self._run_process(task_id)
        except Exception:
            log.exception("/submission task %s: the worker could not run its job", task_id)
            self.store.set_status(task_id, tasks.FAILED, error="internal error: the job could not be started",
                                  http_status=500)
        finally:
            self._procs.pop(task_id, None)
            with contextlib.suppress(KeyError, OSError, ValueError):
                if self.store.raw_status(task_id)["status"] in tasks.FINAL:   # canceled, or its process died
                    shutil.rmtree(self.store.folder(task_id) / tasks.WORK_DIR, ignore_errors=True)
            self._owned.pop(task_id).close()
            self._finished[task_id].set()
            self._finished.pop(task_id, None)

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
            if self.store.raw_status(task_id)["status"] == tasks.CANCELED and proc.returncode is None:
                proc.terminate()
        code = waiting.result()
        if self.store.raw_status(task_id)["status"] in tasks.FINAL:   # it ended, or was canceled, first
            return
        if -code in STOP_SIGNALS:   # stopped, not crashed: a shutdown, or its worker's death
            log.warning("/submission task %s: its job process was stopped (%s); the task stays unfinished and "
                        "the next worker to look resumes it", task_id, _exit_reason(code))
        elif code not in (task_runner.DONE, task_runner.BUSY):
            self.store.set_status(task_id, tasks.FAILED, http_status=500,
                                  error=f"internal error: the job process ended with {_exit_reason(code)}")


# --- routes ----------------------------------------------------------------------------------
def _task_id(request: Request) -> str | Response:
    task_id = request.query_params.get("task_id")
    return task_id if task_id else error_response(400, "task_id is required")


def result_response(store: tasks.TaskStore, task_id: str) -> Response:
    """``/get``'s answer: the CSV of a completed task, the reason of a failed one, else 400."""
    state = store.raw_status(task_id)
    if state["status"] == tasks.COMPLETED:
        return FileResponse(store.folder(task_id) / tasks.RESULT_FILE, media_type="text/csv",
                            filename="submission.csv")
    if state["status"] == tasks.IN_PROGRESS:
        return error_response(400, f"task {task_id} is not completed yet")
    return error_response(int(state.get("http_status") or 500), state.get("error") or state["status"])


def _check_uploads(files: dict, limits: tuple[int, int]) -> Response | None:
    """The 400/413 answer for missing or oversized ``info``/``archive`` uploads; None when both are fine."""
    missing = [k for k, v in files.items() if not isinstance(v, UploadFile)]
    if missing:
        return error_response(400, f"missing file field(s) {', '.join(map(repr, missing))}: send "
                                   "multipart/form-data with files 'info' (the CSV) and 'archive'")
    for name, limit in zip(("info", "archive"), limits):
        if files[name].size is not None and files[name].size > limit:
            return error_response(413, f"{name}: file of {files[name].size} bytes is over the limit of {limit} bytes")
    return None


def app(get_queue: Callable[[], TaskQueue | None]) -> Starlette:
    """The routes under ``/submission``. ``get_queue`` gives this worker's queue (None while the
    service is loading: 503); its settings hold the largest ``info`` and ``archive`` in bytes."""

    def queue_or_503() -> TaskQueue | Response:
        queue = get_queue()
        if queue is None:
            return error_response(503, "the service is still loading")
        return queue

    async def submit(request: Request) -> Response:
        queue = queue_or_503()
        if isinstance(queue, Response):
            return queue
        async with request.form(max_files=2, max_fields=0) as form:
            files = {k: form.get(k) for k in ("info", "archive")}
            refusal = _check_uploads(files, (queue.settings.max_upload_bytes, queue.settings.max_archive_bytes))
            if refusal is not None:
                return refusal
            task_id = await queue.submit(files["info"].file, files["archive"].file)
        return JSONResponse({"task_id": task_id, "status": tasks.IN_PROGRESS})

    def on_task(action):
        async def route(request: Request) -> Response:
            queue = queue_or_503()
            if isinstance(queue, Response):
                return queue
            task_id = _task_id(request)
            if isinstance(task_id, Response):
                return task_id
            try:
                return await action(queue, task_id)
            except KeyError:
                return error_response(404, "task_id not found")
            except LookupError as e:
                return error_response(409, str(e.args[0]))
        return route

    async def status(queue: TaskQueue, task_id: str) -> Response:
        return JSONResponse(queue.store.status(task_id))

    async def get(queue: TaskQueue, task_id: str) -> Response:
        return result_response(queue.store, task_id)

    async def cancel(queue: TaskQueue, task_id: str) -> Response:
        queue.cancel(task_id)
        return JSONResponse(queue.store.status(task_id))

    async def retry(queue: TaskQueue, task_id: str) -> Response:
        return JSONResponse({"task_id": await queue.retry(task_id), "status": tasks.IN_PROGRESS})

    return Starlette(routes=[
        Route("/submit", submit, methods=["POST"]),
        Route("/status", on_task(status), methods=["GET"]),
        Route("/get", on_task(get), methods=["GET"]),
        Route("/cancel", on_task(cancel), methods=["PUT"]),
        Route("/retry", on_task(retry), methods=["POST"]),
    ])


# --- what GET /docs.json says of these routes (serving.contract adds it to BentoML's document) -------
STATUS_SCHEMA = {
    "type": "object", "title": "TaskStatusResponse", "required": ["task_id", "status"],
    "description": "A task's state. submit and retry answer task_id and status; status adds the times "
                   "and, for a failed or canceled task, the reason.",
    "properties": {
        "task_id": {"type": "string", "title": "Task Id"},
        "status": {"type": "string", "title": "Status", "enum": list(tasks.STATUSES)},
        "created_at": {"type": "string", "title": "Created At"},
        "executed_at": {"anyOf": [{"type": "string"}, {"type": "null"}], "title": "Executed At",
                        "description": "when the job started; null while it waits its turn"},
        "completed_at": {"anyOf": [{"type": "string"}, {"type": "null"}], "title": "Completed At"},
        "error": {"type": "string", "title": "Error"},
        "progress": {"type": "object", "title": "Progress", "required": ["done", "total"],
                     "description": "images done of the total, about once a second while the job runs",
                     "properties": {"done": {"type": "integer"}, "total": {"type": "integer"}}},
    },
}


def openapi_paths(prefix: str = "/submission") -> dict:
    """The OpenAPI path items of the task routes, answering the ``TaskStatusResponse`` schema."""
    status = {"200": {"description": "Successful Response", "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/TaskStatusResponse"}}}}}
    query = [{"name": "task_id", "in": "query", "required": True, "schema": {"type": "string", "title": "Task ID"}}]
    upload = {"content": {"multipart/form-data": {"schema": {
        "type": "object", "title": "SubmissionUpload", "required": ["info", "archive"],
        "properties": {"info": {"type": "string", "format": "binary", "description": "info.csv (ImageID,ans)"},
                       "archive": {"type": "string", "format": "binary",
                                   "description": "zip or tar (optionally gzip/bz2/xz) of the images"}}}}},
        "required": True}

    def op(name: str, summary: str, responses: dict, **more) -> dict:
        return {"operationId": f"submission_{name}", "summary": summary, "tags": ["Submission task"],
                "responses": responses, **more}

    return {
        f"{prefix}/submit": {"post": op("submit", "Queue a submission job: info.csv + an archive of the images",
                                        status, requestBody=upload)},
        f"{prefix}/status": {"get": op("status", "A task's state", status, parameters=query)},
        f"{prefix}/get": {"get": op("get", "The submission CSV of a completed task", {"200": {
            "description": "the submission (ImageID,ans)", "content": {"text/csv": {"schema": {"type": "string"}}}}},
            parameters=query)},
        f"{prefix}/cancel": {"put": op("cancel", "Cancel a task (its job process is stopped)", status,
                                       parameters=query)},
        f"{prefix}/retry": {"post": op("retry", "Run a failed or canceled task again as a new task", status,
                                       parameters=query)},
    }
