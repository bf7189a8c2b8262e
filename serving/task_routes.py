"""The ``/submission`` task routes (docs/serving.md, "Submission task").

``POST /submission/submit`` (multipart ``info`` + ``archive``) → ``{"task_id", "status"}``;
``GET /submission/status?task_id=``, ``GET /submission/get?task_id=`` (the CSV, the failed job's
4xx/5xx JSON reason, or 409 while it runs), ``PUT /submission/cancel?task_id=``, ``POST /submission/retry?task_id=``: the
URLs and answers of BentoML's task protocol, served by a small Starlette app the service mounts at
``/submission``. Why not ``@bentoml.task``: :mod:`serving.tasks` says.

Each worker's job supervisor is :class:`serving.task_queue.TaskQueue`; these routes parse, call it
and answer. Starlette and the standard library: nothing here imports BentoML.
"""
from __future__ import annotations

from typing import Callable

import anyio
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from serving import tasks
from serving.errors import RequestError, error_response
from serving.task_queue import TaskQueue


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
    if state["status"] == tasks.IN_PROGRESS:   # 409: the task's state, not the request, is what is wrong
        return error_response(409, f"task {task_id} is not completed yet; poll /submission/status")
    return error_response(int(state.get("http_status") or 500), state.get("error") or state["status"])


def _missing_uploads(files: dict) -> Response | None:
    """The 400 answer when ``info`` or ``archive`` is not a file upload; None when both are."""
    missing = [k for k, v in files.items() if not isinstance(v, UploadFile)]
    if missing:
        return error_response(400, f"missing file field(s) {', '.join(map(repr, missing))}: send "
                                   "multipart/form-data with files 'info' (the CSV) and 'archive'")
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
            refusal = _missing_uploads(files)
            if refusal is not None:
                return refusal
            try:
                task_id = await queue.submit(files["info"].file, files["archive"].file)
            except RequestError as e:   # over a limit, or the CSV or the archive refused before queueing
                return e.response()
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
        return JSONResponse(await anyio.to_thread.run_sync(queue.store.status, task_id))

    async def get(queue: TaskQueue, task_id: str) -> Response:
        return await anyio.to_thread.run_sync(result_response, queue.store, task_id)

    async def cancel(queue: TaskQueue, task_id: str) -> Response:
        return JSONResponse(await queue.cancel(task_id))

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
        "attempts": {"type": "integer", "title": "Attempts",
                     "description": "job processes started for the task so far (at most MASK_TASK_ATTEMPTS)"},
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
    query = [{"name": "task_id", "in": "query", "required": True,
              "schema": {"type": "string", "title": "Task ID", "pattern": f"^{tasks.TASK_ID_PATTERN}$"}}]
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
