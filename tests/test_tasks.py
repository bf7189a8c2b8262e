"""serving.tasks and serving.task_runner on their own: a task's folder, its status rules, the owner
lock that tells a running task from an interrupted one, retention, and the job process's outcome."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from maskdata.io import try_lock
from serving import task_runner, tasks
from test_service import submission_inputs

pytestmark = pytest.mark.slow   # see pyproject's `slow` marker: make test-fast leaves it out

REPO = Path(__file__).resolve().parents[1]


def new_task(store: tasks.TaskStore, info: bytes = b"ImageID,ans\n", archive: bytes = b"", meta=None) -> str:
    return store.create(io.BytesIO(info), io.BytesIO(archive), meta or {"model": "m.onnx", "settings": {}})


def test_a_task_is_created_whole_and_reports_its_status(tmp_path):
    store = tasks.TaskStore(tmp_path / "tasks")
    task_id = new_task(store, b"ImageID,ans\na.jpg,0\n", b"zip bytes")
    folder = store.folder(task_id)
    assert (folder / tasks.INFO_FILE).read_bytes() == b"ImageID,ans\na.jpg,0\n"
    assert (folder / tasks.ARCHIVE_FILE).read_bytes() == b"zip bytes"
    assert [p.name for p in store.root.iterdir()] == [task_id], "no staging folder may stay behind"
    status = store.status(task_id)
    assert status["status"] == "in_progress" and status["executed_at"] is None, status
    assert set(status) == {"task_id", "status", "created_at", "executed_at", "completed_at", "attempts"}, status
    assert status["attempts"] == 0, status


@pytest.mark.parametrize("task_id", ["", "x" * 32, "../" * 11, "A" * 32, "0" * 31, None])
def test_malformed_or_unknown_ids_are_key_errors(tmp_path, task_id):
    store = tasks.TaskStore(tmp_path)
    with pytest.raises(KeyError):
        store.folder(task_id)


def test_a_final_status_is_never_overwritten(tmp_path):
    store = tasks.TaskStore(tmp_path)
    task_id = new_task(store)
    store.set_status(task_id, tasks.CANCELED, error="canceled", http_status=409)
    store.set_status(task_id, tasks.COMPLETED)
    status = store.status(task_id)
    assert status["status"] == "canceled" and status["error"] == "canceled" and status["completed_at"], status


def test_the_owner_lock_tells_a_held_task_from_an_interrupted_one(tmp_path):
    """The lock is the kernel's: it goes when its holder exits, however it exits."""
    store = tasks.TaskStore(tmp_path)
    task_id = new_task(store)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, sys.argv[1]); from serving.tasks import TaskStore;"
        "h = TaskStore(sys.argv[2]).claim(sys.argv[3]); print(h is not None, flush=True); time.sleep(60)"),
        str(REPO), str(tmp_path), task_id], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "True", "the other process should have claimed the new task"
        assert store.claim(task_id) is None, "a task another live process holds must not be claimable"
    finally:
        holder.kill()
        holder.wait()
    handle = store.claim(task_id)
    assert handle is not None, "the holder was killed: its task must be claimable again"
    assert store.claim(task_id) is None, "and held once claimed, within this process too"
    handle.close()
    store.set_status(task_id, tasks.COMPLETED)
    assert store.claim(task_id) is None, "a finished task is never claimed"


def test_sweep_removes_finished_tasks_past_the_retention_only(tmp_path):
    store = tasks.TaskStore(tmp_path, retention_s=60)
    old, recent, running = new_task(store), new_task(store), new_task(store)
    for task_id in (old, recent):
        store.set_status(task_id, tasks.COMPLETED)
    state_file = store.folder(old) / tasks.STATUS_FILE
    state = json.loads(state_file.read_text())
    state["completed_at"] = "2000-01-01T00:00:00+00:00"
    state_file.write_text(json.dumps(state))
    leftover = tmp_path / ".abandoned.upload"
    leftover.mkdir()
    os.utime(leftover, (time.time() - 7200, time.time() - 7200))
    assert store.sweep() == 2
    assert store.task_ids() == sorted([recent, running]) and not leftover.exists()


def _job_task(store, synth_root, onnx_model, n=5, info=None) -> tuple[str, list[str]]:
    ids, good_info, archive = submission_inputs(synth_root, n=n)
    settings = {"max_upload_bytes": 300_000}
    return new_task(store, info or good_info, archive, {"model": str(onnx_model), "settings": settings}), ids


def test_the_job_process_writes_the_submission_and_drops_the_inputs(tmp_path, synth_root, onnx_model):
    from serving.predictor import Predictor

    store = tasks.TaskStore(tmp_path)
    task_id, ids = _job_task(store, synth_root, onnx_model)
    assert task_runner.run(store.folder(task_id)) == task_runner.DONE
    assert store.status(task_id)["status"] == "completed", store.status(task_id)
    rows = list(csv.DictReader(io.StringIO((store.folder(task_id) / tasks.RESULT_FILE).read_text())))
    want = [p["class"] for p in Predictor(onnx_model).predict([synth_root / "eval" / "images" / i for i in ids])]
    assert [int(r["ans"]) for r in rows] == want and [r["ImageID"] for r in rows] == ids
    assert store.status(task_id)["progress"] == {"done": len(ids), "total": len(ids)}, store.status(task_id)
    assert not (store.folder(task_id) / tasks.ARCHIVE_FILE).exists(), "a completed task's inputs are dropped"
    assert not (store.folder(task_id) / "work").exists(), "the extracted images are removed"
    with pytest.raises(LookupError, match="not kept"):
        store.copy_inputs(task_id)
    assert task_runner.run(store.folder(task_id)) == task_runner.BUSY, "a finished task is not run again"


def test_a_bad_csv_fails_the_task_with_a_400_reason_and_keeps_the_inputs(tmp_path, synth_root, onnx_model):
    store = tasks.TaskStore(tmp_path)
    task_id, _ = _job_task(store, synth_root, onnx_model, n=1, info=b"foo,bar\n1,2\n")
    assert task_runner.run(store.folder(task_id)) == task_runner.DONE
    state = store.raw_status(task_id)
    assert state["status"] == "failed" and state["http_status"] == 400 and "ImageID" in state["error"], state
    info, archive, meta = store.copy_inputs(task_id)
    assert info.read_bytes() == b"foo,bar\n1,2\n" and archive.stat().st_size > 0 and meta["model"]


def test_the_job_process_never_runs_a_task_another_one_runs(tmp_path, synth_root, onnx_model):
    store = tasks.TaskStore(tmp_path)
    task_id, _ = _job_task(store, synth_root, onnx_model, n=1)
    held = try_lock(store.folder(task_id) / tasks.RUN_LOCK)
    try:
        out = subprocess.run([sys.executable, "-m", "serving.task_runner", str(store.folder(task_id))],
                             cwd=REPO, capture_output=True, text=True, timeout=120)
    finally:
        held.close()
    assert out.returncode == task_runner.BUSY, out.stderr[-2000:]
    assert store.status(task_id)["status"] == "in_progress", "a busy runner must leave the task alone"


def test_the_job_process_refuses_a_bad_command_line():
    out = subprocess.run([sys.executable, "-m", "serving.task_runner"], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2 and "usage: python -m serving.task_runner TASK_FOLDER" in out.stderr, out.stderr


def test_a_tasks_folder_of_another_user_is_refused(tmp_path, monkeypatch):
    """The default folder sits in a shared temp dir: one made by someone else could read the uploads."""
    tasks.TaskStore(tmp_path / "mine")
    real = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: real + 1)
    with pytest.raises(PermissionError, match="belongs to another user; set MASK_TASKS_DIR"):
        tasks.TaskStore(tmp_path / "mine")


def synthetic_job(root: Path, eval_people: int, seed: int) -> tuple[list[str], bytes, bytes]:
    """(ImageIDs, info.csv bytes, zip bytes) of a synthetic eval set of ``eval_people`` × 7 images."""
    import zipfile

    from maskdata.synth import generate

    generate(root, people=2, eval_people=eval_people, seed=seed)
    ids = sorted(p.name for p in (root / "eval" / "images").iterdir())
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for i in ids:
            z.write(root / "eval" / "images" / i, i)
    return ids, ("ImageID,ans\n" + "".join(f"{i},0\n" for i in ids)).encode(), buf.getvalue()


@pytest.fixture(scope="module")
def three_batches(tmp_path_factory):
    """(info.csv bytes, zip bytes) of 140 images: three batches of the job's 64."""
    return synthetic_job(tmp_path_factory.mktemp("three_batches"), 20, seed=2)[1:]


def test_a_job_stopped_part_way_is_resumed_not_restarted(tmp_path, three_batches, onnx_model, monkeypatch, caplog):
    """A job process killed after its first batch leaves its journal in work/; the next job process
    continues from there and writes what an uninterrupted run writes."""
    info, archive = three_batches
    meta = {"model": str(onnx_model), "settings": {}}
    store = tasks.TaskStore(tmp_path)
    clean, stopped = new_task(store, info, archive, meta), new_task(store, info, archive, meta)
    assert task_runner.run(store.folder(clean)) == task_runner.DONE

    def stop_after_first_batch(store_, task_id):
        def report(done, total):
            if done < total:
                raise KeyboardInterrupt   # like a kill: no handler of the job's runs
        return report

    with monkeypatch.context() as mp:
        mp.setattr(task_runner, "progress_writer", stop_after_first_batch)
        with pytest.raises(KeyboardInterrupt):
            task_runner.run(store.folder(stopped))
    assert store.status(stopped)["status"] == "in_progress"
    assert (store.folder(stopped) / tasks.WORK_DIR).is_dir(), "the stopped job's journal must stay for the next run"
    with caplog.at_level("INFO", logger="serving.local_engine"):
        assert task_runner.run(store.folder(stopped)) == task_runner.DONE
    assert "resuming: 64 of 140 images already done" in caplog.text, caplog.text[-2000:]
    assert store.status(stopped)["status"] == "completed", store.status(stopped)
    result = lambda t: (store.folder(t) / tasks.RESULT_FILE).read_bytes()   # noqa: E731
    assert result(stopped) == result(clean), "a resumed job must write what an uninterrupted one writes"
    assert not (store.folder(stopped) / tasks.WORK_DIR).exists()


def test_the_task_modules_and_the_job_process_import_neither_bentoml_nor_torch():
    """The job process starts once per task: it loads the serving stack, not BentoML or PyTorch."""
    code = ("import sys; import serving.task_runner, serving.tasks, serving.task_queue, serving.task_routes, "
            "serving.local_engine, "
            "serving.predictor; print(sorted(m for m in ('bentoml', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", (out.stdout, out.stderr[-2000:])


@pytest.fixture(scope="module")
def seven_batches(tmp_path_factory):
    """(info.csv bytes, zip bytes) of 420 images: seven batches of the job's 64."""
    return synthetic_job(tmp_path_factory.mktemp("seven_batches"), 60, seed=3)[1:]


def _job_process(task_id: str):
    """This process's child running ``task_id``'s job (``python -m serving.task_runner <folder>``), or None."""
    import psutil

    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "serving.task_runner" in child.cmdline() and child.cmdline()[-1].endswith(task_id):
                return child
    return None


async def _stop_mid_way(store, task_id: str, sig: int, finished) -> None:
    """Send ``sig`` to the task's job process after its first batch, then await ``finished``."""
    import asyncio

    deadline = time.monotonic() + 120
    while (proc := _job_process(task_id)) is None or not (store.folder(task_id) / tasks.PROGRESS_FILE).exists():
        assert time.monotonic() < deadline, "the job process reported no progress"
        await asyncio.sleep(0.005)
    proc.send_signal(sig)
    await finished
    assert store.raw_status(task_id)["status"] != "completed", f"the job ended before signal {sig}"


def _submit_and_stop(queue, store, inputs, sig: int) -> str:
    import asyncio

    async def scenario() -> str:
        task_id = await queue.submit(io.BytesIO(inputs[0]), io.BytesIO(inputs[1]))
        await _stop_mid_way(store, task_id, sig, queue.wait(task_id))
        return task_id
    return asyncio.run(scenario())


def test_a_stopped_job_process_leaves_its_task_to_resume_and_a_killed_one_fails_it(tmp_path, seven_batches,
                                                                                   onnx_model, caplog):
    """SIGTERM (a shutdown, its worker gone) is not the job's fault: the task stays unfinished with its
    journal and the next look adopts and resumes it. SIGKILL (the OOM killer) fails the task."""
    import asyncio
    import signal

    from serving.settings import Settings
    from serving.task_queue import TaskQueue

    store = tasks.TaskStore(tmp_path)
    queue = TaskQueue(store, str(onnx_model), Settings.from_env({}))
    stopped = _submit_and_stop(queue, store, seven_batches, signal.SIGTERM)
    assert store.status(stopped)["status"] == "in_progress", store.status(stopped)
    assert (store.folder(stopped) / tasks.WORK_DIR).is_dir(), "a stopped job keeps its journal"

    killed = _submit_and_stop(queue, store, seven_batches, signal.SIGKILL)
    state = store.raw_status(killed)
    assert state["status"] == "failed" and state["http_status"] == 500 and "signal 9" in state["error"], state

    async def adopt():   # what a worker does when it starts: nobody calls a task route here
        queue.start()
        deadline = time.monotonic() + 120
        while store.raw_status(stopped)["status"] == "in_progress":
            assert time.monotonic() < deadline, "the stopped task was never adopted and finished"
            await asyncio.sleep(0.05)
        await queue.wait(stopped)
        queue.stop()

    with caplog.at_level("INFO", logger="serving.task_queue"):
        asyncio.run(adopt())
    assert "adopted 1 interrupted /submission task(s)" in caplog.text, "exactly the stopped task is adopted"
    assert store.status(stopped)["status"] == "completed", store.status(stopped)
    assert store.status(stopped)["attempts"] == 2, store.status(stopped)
    rows = (store.folder(stopped) / tasks.RESULT_FILE).read_text().splitlines()
    assert len(rows) == 421 and rows[0] == "ImageID,ans", rows[:2]


def test_a_task_interrupted_mask_task_attempts_times_fails_with_the_reason(tmp_path, seven_batches, onnx_model):
    """A task whose job never gets to finish (each process stopped part-way) is not resumed forever."""
    import asyncio
    import signal

    from serving.settings import Settings
    from serving.task_queue import TaskQueue

    store = tasks.TaskStore(tmp_path)
    queue = TaskQueue(store, str(onnx_model), Settings.from_fields({"task_attempts": 2}))
    task_id = _submit_and_stop(queue, store, seven_batches, signal.SIGTERM)

    async def second_and_last() -> None:
        assert await queue.adopt_interrupted() == 1, "the stopped task must be adopted for its second attempt"
        await _stop_mid_way(store, task_id, signal.SIGTERM, queue.wait(task_id))
        assert store.status(task_id)["attempts"] == 2, store.status(task_id)
        assert await queue.adopt_interrupted() == 1, "the task is adopted once more, to be failed"
        await queue.wait(task_id)

    asyncio.run(second_and_last())
    state = store.raw_status(task_id)
    assert state["status"] == "failed" and state["http_status"] == 500, state
    assert "started 2 time(s)" in state["error"] and "stopped by signal 15" in state["error"], state["error"]
    assert "MASK_TASK_ATTEMPTS=2" in state["error"], state["error"]
    assert _job_process(task_id) is None, "no third job process may start"
    assert (store.folder(task_id) / tasks.INFO_FILE).is_file(), "a failed task keeps its inputs for a retry"


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_worker_runs_mask_task_jobs_jobs_at_once_and_the_rest_wait(tmp_path, three_batches, onnx_model, jobs):
    import asyncio

    from serving.settings import Settings
    from serving.task_queue import TaskQueue

    store = tasks.TaskStore(tmp_path)
    queue = TaskQueue(store, str(onnx_model), Settings.from_fields({"task_jobs": jobs}))
    ids = []

    async def scenario() -> None:
        for _ in range(3):
            ids.append(await queue.submit(io.BytesIO(three_batches[0]), io.BytesIO(three_batches[1])))
        for t in ids:
            await queue.wait(t)

    asyncio.run(scenario())
    states = [store.status(t) for t in ids]
    assert [s["status"] for s in states] == ["completed"] * 3, states
    spans = [(datetime.fromisoformat(s["executed_at"]), datetime.fromisoformat(s["completed_at"])) for s in states]
    running_at_start = [sum(a <= start < b for a, b in spans) for start, _ in spans]
    assert max(running_at_start) == jobs, f"MASK_TASK_JOBS={jobs}: jobs running as each started: {running_at_start}"
    assert spans[2][0] >= min(end for _, end in spans[:jobs]), "the third task must wait for a free slot"
    results = {(store.folder(t) / tasks.RESULT_FILE).read_bytes() for t in ids}
    assert len(results) == 1, "the same inputs must give the same submission however many jobs run at once"
