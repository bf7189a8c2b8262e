"""The /submission task routes against a real `bentoml serve` (one worker): a job runs in a process of
its own and the worker's memory is the same after it as before; a canceled job's process stops and
the task can be retried; a worker killed with SIGKILL mid-job loses nothing (its replacement adopts
the task and finishes it, resuming from the killed job's journal); a malformed submission is refused
in the request, while jobs run, and queues nothing."""
from __future__ import annotations

import csv
import io
import os
import signal
import sys
import time

import httpx
import psutil
import pytest

from serving.tasks import TaskStore
from servers import serve_env as _env, bentoml_serve_process
from test_tasks import synthetic_job

pytestmark = pytest.mark.slow   # see pyproject's `slow` marker: make test-fast leaves it out

EVAL_PEOPLE = 220          # 7 images each: 1,540 images, a job of a few seconds
MEMORY_BOUND = 1.10        # the worker's RSS after a job, as a multiple of before it


@pytest.fixture(scope="module")
def big_job(tmp_path_factory):
    """(ImageIDs, info.csv bytes, zip bytes) of a synthetic eval set large enough to interrupt."""
    return synthetic_job(tmp_path_factory.mktemp("big_synth"), EVAL_PEOPLE, seed=1)


@pytest.fixture(scope="module")
def server(onnx_model, big_job, tmp_path_factory):
    folder = tmp_path_factory.mktemp("task_server")
    env = _env(MASK_MODEL=str(onnx_model), MASK_WORKERS="1", MASK_TASKS_DIR=str(folder / "tasks"),
               MASK_MAX_ARCHIVE_BYTES=str(len(big_job[2]) + 1), MASK_TASK_JOBS="2")
    with bentoml_serve_process(sys.executable, env, folder / "serve.log") as (url, proc):
        with httpx.Client(base_url=url, timeout=120) as client:
            yield client, proc, folder / "serve.log"


def worker_of(proc) -> psutil.Process:
    workers = [p for p in psutil.Process(proc.pid).children(recursive=True)
               if "serving.task_runner" not in " ".join(p.cmdline())]
    assert len(workers) == 1, f"expected one worker process, got {[w.cmdline() for w in workers]}"
    return workers[0]


def job_processes(proc) -> list[psutil.Process]:
    return [p for p in psutil.Process(proc.pid).children(recursive=True)
            if "serving.task_runner" in " ".join(p.cmdline())]


def submit(client, info: bytes, archive: bytes) -> str:
    r = client.post("/submission/submit", files={"info": ("info.csv", info, "text/csv"),
                                                 "archive": ("images.zip", archive, "application/zip")})
    assert r.status_code == 200, r.text
    return r.json()["task_id"]


def wait_final(client, task_id: str, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status = client.get("/submission/status", params={"task_id": task_id}).json()
        except httpx.TransportError:   # a worker being replaced
            status = {"status": "in_progress"}
        if status["status"] != "in_progress":
            return status
        time.sleep(0.3)
    raise AssertionError(f"task {task_id} still in progress after {timeout} s")


def wait_running(client, proc, task_id: str, timeout: float = 60) -> psutil.Process:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = job_processes(proc)
        if running and client.get("/submission/status", params={"task_id": task_id}).json()["executed_at"]:
            return running[0]
        time.sleep(0.1)
    raise AssertionError(f"no job process for task {task_id} after {timeout} s")


def answers(text: str) -> dict[str, int]:
    return {r["ImageID"]: int(r["ans"]) for r in csv.DictReader(io.StringIO(text))}


@pytest.fixture(scope="module")
def reference(server, big_job):
    """The worker's RSS before and after two uninterrupted jobs, and their answers."""
    client, proc, _ = server
    ids, info, archive = big_job
    time.sleep(1)
    before, after, results = worker_of(proc).memory_info().rss, [], []
    for _ in range(2):
        task_id = submit(client, info, archive)
        status = wait_final(client, task_id)
        assert status["status"] == "completed", status
        results.append(client.get("/submission/get", params={"task_id": task_id}).text)
        time.sleep(1)
        after.append(worker_of(proc).memory_info().rss)
    assert results[0] == results[1], "two runs of one job must give one submission"
    got = answers(results[0])
    assert list(got) == ids, "the submission must keep info.csv's rows and order"
    return before, after, got


@pytest.mark.slow
def test_the_worker_returns_to_its_memory_after_each_job(reference, big_job):
    before, after, _ = reference
    archive_mb = len(big_job[2]) / 2**20
    for i, rss in enumerate(after, 1):
        assert rss <= before * MEMORY_BOUND, (
            f"after job {i} (a {archive_mb:.0f} MB archive) the worker holds {rss / 2**20:.0f} MB, "
            f"over {MEMORY_BOUND:.2f}x its {before / 2**20:.0f} MB before the first job")


def test_a_canceled_job_stops_its_process_and_can_be_retried(server, big_job, reference):
    client, proc, _ = server
    _, info, archive = big_job
    task_id = submit(client, info, archive)
    job = wait_running(client, proc, task_id)
    r = client.put("/submission/cancel", params={"task_id": task_id})
    assert r.status_code == 200 and r.json()["status"] == "canceled", r.text
    job.wait(timeout=30)   # raises psutil.TimeoutExpired if the job process outlives its cancel
    result = client.get("/submission/get", params={"task_id": task_id})
    assert result.status_code == 409 and "canceled" in result.json()["error"], result.text
    assert wait_final(client, task_id)["status"] == "canceled", "a late job end must not overwrite the cancel"
    r = client.post("/submission/retry", params={"task_id": task_id})
    assert r.status_code == 200, r.text
    retried = r.json()["task_id"]
    assert retried != task_id and wait_final(client, retried)["status"] == "completed"
    assert answers(client.get("/submission/get", params={"task_id": retried}).text) == reference[2]


def wait_progress(client, task_id: str, timeout: float = 60) -> dict:
    """The task's first progress report (written after its first batch)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get("/submission/status", params={"task_id": task_id}).json()
        if status.get("progress"):
            return status["progress"]
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} reported no progress after {timeout} s")


def test_a_worker_killed_mid_job_loses_nothing(server, big_job, reference):
    client, proc, log = server
    ids, info, archive = big_job
    task_id = submit(client, info, archive)
    job = wait_running(client, proc, task_id)
    progress = wait_progress(client, task_id)
    assert 0 < progress["done"] < progress["total"] == len(ids), progress
    worker = worker_of(proc)
    os.kill(worker.pid, signal.SIGKILL)
    job.wait(timeout=30)   # the job process goes with its worker (it asked for SIGTERM on its parent's death)
    # no task route is called until it is done: the new worker adopts the task when it starts
    store, deadline = TaskStore(log.parent / "tasks"), time.monotonic() + 240
    while store.raw_status(task_id)["status"] == "in_progress":
        assert time.monotonic() < deadline, "the new worker did not adopt and finish the task by itself"
        time.sleep(0.3)
    status = wait_final(client, task_id)
    assert status["status"] == "completed", status
    assert answers(client.get("/submission/get", params={"task_id": task_id}).text) == reference[2], \
        "the adopted task must give the same submission as an uninterrupted run"
    assert worker_of(proc).pid != worker.pid, "BentoML should have started a new worker"
    assert f"of {len(ids)} images already done" in log.read_text(), \
        "the adopted job should have resumed from the killed one's journal, not restarted"


def malformed_submissions(ids: list[str], info: bytes, archive: bytes) -> dict[str, tuple[bytes, bytes, str]]:
    """{case: (info, archive, what the 400 reason says)}: uploads the job would refuse first."""
    import zipfile

    from PIL import Image

    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    short = io.BytesIO()
    with zipfile.ZipFile(short, "w") as zf:
        zf.writestr(ids[0], b"not even an image")
    return {"a PNG as info": (png.getvalue(), archive, "UTF-8"),
            "a CSV as the archive": (info, info, "neither a zip nor a tar"),
            "a zip without the images": (info, short.getvalue(), f"{len(ids) - 1} of {len(ids)} images"),
            "a CSV without ImageID": (b"name,ans\nx,0\n", archive, "ImageID")}


def test_a_malformed_submission_is_refused_in_the_request_while_jobs_run(server, big_job, reference):
    client, proc, log = server
    ids, info, archive = big_job
    running = [submit(client, info, archive) for _ in range(2)]
    for task_id in running:
        wait_running(client, proc, task_id)
    store = TaskStore(log.parent / "tasks")
    before = set(store.task_ids())
    took = {}
    for case, (bad_info, bad_archive, reason) in malformed_submissions(ids, info, archive).items():
        for route in ("/submission/submit", "/submission"):
            t0 = time.perf_counter()
            r = client.post(route, files={"info": ("info.csv", bad_info, "text/csv"),
                                          "archive": ("images.zip", bad_archive, "application/zip")})
            took[case, route] = time.perf_counter() - t0
            assert r.status_code == 400 and reason in r.json()["error"], (case, route, r.status_code, r.text)
    states = [client.get("/submission/status", params={"task_id": t}).json() for t in running]
    assert [s["status"] for s in states] == ["in_progress"] * 2, (
        f"the refusals must not wait for the running jobs: {states}")
    assert set(store.task_ids()) == before, "a refused submission must queue no task"
    print("refusal seconds while two jobs run:", {f"{c} {r}": round(t, 3) for (c, r), t in took.items()})
    for task_id in running:
        assert wait_final(client, task_id)["status"] == "completed"
