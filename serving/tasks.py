"""The ``/submission`` tasks' state: one folder per task on disk, shared by every worker of a service.

Why the service keeps its own tasks rather than BentoML's ``@bentoml.task`` (seen with 1.4.40):
BentoML's task store reads the whole upload into memory, writes it base64-encoded inside a JSON
blob into SQLite, holds the request for the whole job and decodes the stored input again on every
``/get``. A 343 MB archive took a worker from 139 MB to a 1.6 GB peak and left it at 1.2 GB
(docs/benchmarks.md, "Memory under sustained load"). Here the upload is copied to disk as it streams in, the
job runs in a child process (:mod:`serving.task_runner`) that gives everything it allocated back
when it exits, and the state is a few small files.

A task's folder ``<tasks dir>/<task_id>/``:

- ``task.json``: what the job needs, written once at submission (the model, the settings without
  the API key, ``created_at``);
- ``status.json``: ``status`` (``in_progress`` while queued or running, then ``completed``,
  ``failed`` or ``canceled``), ``executed_at``, ``completed_at``, ``attempts`` (job processes
  started), ``interrupted`` (how the last one ended, while the task waits to be resumed), and for a
  failure ``error`` and ``http_status``; every write is atomic (temp file, fsync, rename);
- ``info.csv`` and ``archive``: the inputs, removed once the task completes (a failed or canceled
  task keeps them, so ``/submission/retry`` can run it again);
- ``progress.json``: ``{"done", "total"}`` images, rewritten about once a second while the job runs;
- ``work/``: the job's extracted images and journal, kept while it is unfinished, so a job process
  killed part-way is resumed, not restarted, by the next one;
- ``result.csv``: the submission;
- ``owner.lock``: held (``flock``) by the worker that queued or runs the task. The kernel drops it
  when that worker exits, however it exits, so a task whose lock is free and whose status is not
  final was interrupted: the next worker that looks at it adopts it and resumes it;
- ``run.lock``: held by the child running the job, so two children never run one task;
- ``status.lock``: held while ``status.json`` is read and rewritten.

Standard library and :mod:`maskdata.io` only: nothing here imports BentoML or the web stack.
"""
from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import IO

from maskdata.io import atomic_write_text, fsync_path, locked, try_lock

IN_PROGRESS, COMPLETED, FAILED, CANCELED = "in_progress", "completed", "failed", "canceled"
FINAL = frozenset({COMPLETED, FAILED, CANCELED})
# The values GET /submission/status can send ("pending" is never sent: a queued task is in_progress
# with executed_at null, so a client polling "while in_progress" keeps polling).
STATUSES = (IN_PROGRESS, COMPLETED, FAILED, CANCELED)
TASK_FILE, STATUS_FILE, RESULT_FILE, PROGRESS_FILE = "task.json", "status.json", "result.csv", "progress.json"
INFO_FILE, ARCHIVE_FILE, WORK_DIR = "info.csv", "archive", "work"
OWNER_LOCK, RUN_LOCK, STATUS_LOCK = "owner.lock", "run.lock", "status.lock"
TASK_ID_PATTERN = "[0-9a-f]{32}"   # uuid4().hex
_TASK_ID = re.compile(TASK_ID_PATTERN)
COPY_CHUNK = 1 << 20


def default_root() -> Path:
    """``<temp dir>/mask-classifier-tasks-<uid>``: the same folder for every worker of a service."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"mask-classifier-tasks-{uid}"


def now() -> str:
    return datetime.datetime.now(tz=datetime.timezone.utc).isoformat()


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


class TaskStore:
    """The tasks under ``root``; ``retention_s`` is how long a finished task's folder is kept."""

    def __init__(self, root: str | os.PathLike | None = None, retention_s: int = 86_400):
        self.root = Path(root) if root else default_root()
        self.retention_s = retention_s
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        if hasattr(os, "getuid") and self.root.stat().st_uid != os.getuid():
            # a folder another user made (say in a shared /tmp) could be read or filled by them
            raise PermissionError(f"tasks folder {self.root} belongs to another user; set MASK_TASKS_DIR")

    def folder(self, task_id: str) -> Path:
        """The task's folder; KeyError for an id that is malformed or unknown."""
        if not isinstance(task_id, str) or not _TASK_ID.fullmatch(task_id):
            raise KeyError(task_id)
        folder = self.root / task_id
        if not (folder / STATUS_FILE).is_file():
            raise KeyError(task_id)
        return folder

    def create(self, info: IO[bytes], archive: IO[bytes], meta: dict) -> str:
        """A new in-progress task from the two uploads (file objects, copied in 1 MiB chunks)."""
        import uuid

        task_id = uuid.uuid4().hex
        folder = self.root / task_id
        staging = Path(tempfile.mkdtemp(prefix=f".{task_id}.", dir=self.root))
        try:
            for name, source in ((INFO_FILE, info), (ARCHIVE_FILE, archive)):
                with open(staging / name, "wb") as out:
                    shutil.copyfileobj(source, out, COPY_CHUNK)
                    out.flush()
                    os.fsync(out.fileno())   # the task is answered as accepted: its inputs must survive
            atomic_write_text(staging / TASK_FILE, json.dumps({**meta, "created_at": now()}))
            atomic_write_text(staging / STATUS_FILE, json.dumps({"status": IN_PROGRESS, "executed_at": None}))
            os.replace(staging, folder)   # the task exists, whole, from here on
            fsync_path(self.root, directory=True)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return task_id

    def copy_inputs(self, task_id: str) -> tuple[Path, Path, dict]:
        """(info, archive, task.json) of a task whose inputs are still kept; LookupError if not."""
        folder = self.folder(task_id)
        info, archive = folder / INFO_FILE, folder / ARCHIVE_FILE
        if not (info.is_file() and archive.is_file()):
            raise LookupError(f"task {task_id} completed and its inputs are not kept; submit it again")
        return info, archive, _read_json(folder / TASK_FILE)

    def meta(self, task_id: str) -> dict:
        return _read_json(self.folder(task_id) / TASK_FILE)

    def status(self, task_id: str) -> dict:
        """``GET /submission/status``'s body."""
        folder = self.folder(task_id)
        task, state = _read_json(folder / TASK_FILE), _read_json(folder / STATUS_FILE)
        body = {"task_id": task_id, "status": state["status"], "created_at": task["created_at"],
                "executed_at": state.get("executed_at"), "completed_at": state.get("completed_at"),
                "attempts": int(state.get("attempts", 0))}
        if state.get("error"):
            body["error"] = state["error"]
        try:
            body["progress"] = _read_json(folder / PROGRESS_FILE)
        except (OSError, ValueError):   # not started, or its first batch not done yet
            pass
        return body

    def set_progress(self, task_id: str, done: int, total: int) -> None:
        atomic_write_text(self.folder(task_id) / PROGRESS_FILE, json.dumps({"done": done, "total": total}))

    def raw_status(self, task_id: str) -> dict:
        return _read_json(self.folder(task_id) / STATUS_FILE)

    def set_status(self, task_id: str, status: str, **fields) -> None:
        """Write a new status (keeping the fields not given); a final status is never overwritten,
        so of a cancel and a job that ends at the same moment, the first stays (the read and the write
        happen under a lock the worker and the job process share)."""
        folder = self.folder(task_id)
        with locked(folder / STATUS_LOCK):   # held for one small read and write
            state = _read_json(folder / STATUS_FILE)
            if state["status"] in FINAL:
                return
            state.update(fields, status=status)
            if status in FINAL:
                state["completed_at"] = now()
            atomic_write_text(folder / STATUS_FILE, json.dumps(state))

    def drop_inputs(self, task_id: str) -> None:
        folder = self.folder(task_id)
        for name in (ARCHIVE_FILE, INFO_FILE):
            (folder / name).unlink(missing_ok=True)

    def claim(self, task_id: str):
        """The task's owner lock if it is not final and nobody holds it (a new task, or one whose
        worker exited): an open file to keep while the task is queued or runs. Else None."""
        folder = self.folder(task_id)
        handle = try_lock(folder / OWNER_LOCK)
        if handle is None:
            return None
        if _read_json(folder / STATUS_FILE)["status"] in FINAL:
            handle.close()
            return None
        return handle

    def task_ids(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if _TASK_ID.fullmatch(p.name) and p.is_dir())

    def sweep(self) -> int:
        """Remove finished tasks older than the retention and leftovers of interrupted submissions;
        returns how many folders went."""
        removed = 0
        for entry in self.root.iterdir():
            try:
                gone = self._expired(entry, time.time())
            except (OSError, ValueError):   # removed or being written meanwhile
                continue
            if gone:
                shutil.rmtree(entry, ignore_errors=True)
                removed += 1
        return removed

    def _expired(self, entry: Path, clock: float) -> bool:
        if entry.name.startswith("."):   # an upload's staging folder, left by a worker that died mid-copy
            return entry.stat().st_mtime < clock - 3600
        if not _TASK_ID.fullmatch(entry.name) or not (entry / STATUS_FILE).is_file():
            return False
        state = _read_json(entry / STATUS_FILE)
        done = state.get("completed_at")
        return bool(state.get("status") in FINAL and done
                    and datetime.datetime.fromisoformat(done).timestamp() < clock - self.retention_s)
