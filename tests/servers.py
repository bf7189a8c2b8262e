"""What the tests that start servers share: a free loopback port, ``bentoml serve`` in a subprocess until
``/readyz`` answers, and the environment it runs with. One place, imported by every such test (and
by tests/containers.py for the images)."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx

from conftest import SERVICE_LIMITS

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def bentoml_serve(python: str, env: dict, log: Path, timeout: float = 150.0):
    """`python -m bentoml serve` from the repo root (so bentofile.yaml picks the service); yields
    the base URL once /readyz answers 200, i.e. after the model's warm-up inference."""
    with bentoml_serve_process(python, env, log, timeout) as (url, _):
        yield url


@contextlib.contextmanager
def bentoml_serve_process(python: str, env: dict, log: Path, timeout: float = 150.0):
    """:func:`bentoml_serve` that yields ``(url, the bentoml serve Popen)``; its workers are its children."""
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen([python, "-m", "bentoml", "serve", "--host", "127.0.0.1", "--port", str(port)],
                                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"bentoml serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"/readyz not ready after {timeout}s:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            time.sleep(0.5)
        yield url, proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def serve_env(**extra) -> dict:
    """This environment without MASK_*/BENTOML_* settings, plus the suite's service limits and ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MASK_", "BENTOML_"))}
    tasks = {"MASK_TASKS_DIR": os.environ["MASK_TASKS_DIR"]} if os.environ.get("MASK_TASKS_DIR") else {}
    return {**env, **SERVICE_LIMITS, **tasks, "BENTOML_DO_NOT_TRACK": "true", **extra}
