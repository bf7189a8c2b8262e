"""Shared fixtures: one small synthetic data set, one tiny trained checkpoint and its ONNX export,
made once per test session and reused by every stage's tests."""
from __future__ import annotations

import importlib
import os
import shutil
import sys
import tempfile

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")
# torch's OpenMP threads spin while waiting; on 2 shared cores that starves everything else
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# BentoML reads BENTOML_HOME once, when it is first imported: point it at a temp folder before any test
# imports bentoml, so the tests' model store is never the user's ~/bentoml (and no BentoML internal is
# needed to swap stores). Subprocess tests pass their own BENTOML_HOME.
assert "bentoml" not in sys.modules, "bentoml was imported before tests/conftest.py could set BENTOML_HOME"
BENTOML_HOME = tempfile.mkdtemp(prefix="mask-tests-bentoml-")
os.environ["BENTOML_HOME"] = BENTOML_HOME
os.environ["BENTOML_DO_NOT_TRACK"] = "true"  # no usage pings from tests
# the /submission tasks of every service a test starts live here, not in the machine's shared default
TASKS_DIR = tempfile.mkdtemp(prefix="mask-tests-tasks-")
os.environ["MASK_TASKS_DIR"] = TASKS_DIR


def pytest_sessionfinish(session, exitstatus):
    import shutil

    shutil.rmtree(BENTOML_HOME, ignore_errors=True)
    shutil.rmtree(TASKS_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """DIR with train/ and eval/ in the competition layout (24 people, 8 eval people)."""
    from maskdata.synth import generate

    root = tmp_path_factory.mktemp("synth")
    generate(root, people=24, eval_people=8, seed=0)
    return root


@pytest.fixture()
def train_copy(synth_root, tmp_path):
    """A private copy of the shared synthetic train/ folder that a test may break."""
    dst = tmp_path / "train"
    shutil.copytree(synth_root / "train", dst)
    return dst


@pytest.fixture(scope="session")
def trained_run(synth_root, tmp_path_factory):
    """RUN_DIR of a tiny 1-epoch training run on ``synth_root`` (best.pt, last.pt, metrics ...).

    Owned by the training tests; export, serving and submission tests build on it.
    """
    from training.cli import main

    out = tmp_path_factory.mktemp("run")
    rc = main(["--data-dir", str(synth_root / "train"), "--out", str(out), "--model", "tiny_cnn",
               "--epochs", "1", "--batch-size", "16", "--resize", "64", "48", "--workers", "0", "--seed", "0"])
    assert rc == 0, f"tiny training run failed with exit code {rc}"
    return out


@pytest.fixture(scope="session")
def onnx_model(trained_run, tmp_path_factory):
    """Path of the tiny run's best.pt exported to ONNX (parity-checked by the exporter)."""
    from export.cli import main

    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    rc = main(["--checkpoint", str(trained_run / "best.pt"), "--out", str(path)])
    assert rc == 0, f"export of the tiny run failed with exit code {rc}"
    return path


# Limits of the in-process service (tests/test_service.py, tests/test_explain.py).
SERVICE_LIMITS = {"MASK_MAX_UPLOAD_BYTES": "300000", "MASK_MAX_PIXELS": "4000000", "MASK_MAX_FILES": "4",
                  "MASK_MAX_BATCH_SIZE": "2", "MASK_MAX_BODY_BYTES": "4096",
                  "MASK_MAX_INFER_BYTES": "100000", "MASK_MAX_ARCHIVE_BYTES": "1000000"}


@pytest.fixture(scope="session")
def service_module(onnx_model):
    """serving.service with the test model and small limits in the environment for the session: the
    service reads MASK_* when it starts and the guard when the app is built, not at import. One ASGI
    app per process (the ``client`` fixture): a second one registers BentoML's metrics twice
    (prometheus DuplicateTimeseries)."""
    env = {"MASK_MODEL": str(onnx_model), **SERVICE_LIMITS}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        yield importlib.import_module("serving.service")


@pytest.fixture(scope="session")
def client(service_module):
    from starlette.testclient import TestClient

    with TestClient(service_module.MaskClassifier.to_asgi()) as c:
        yield c


# ---------------------------------------------------------------- an S3-compatible server on loopback

class S3Server:
    """moto's S3 server (``moto_server``, a separate process) on 127.0.0.1 and a boto3 client for it.

    The request log (one ``"GET /bucket/key HTTP/1.1" 200`` line per request) is kept in a file, so a
    test can see how far a job has read without any hook in the code under test.
    """

    def __init__(self, endpoint: str, log_path):
        import boto3

        self.endpoint, self.log_path = endpoint, log_path
        self.client = boto3.client("s3", endpoint_url=endpoint)

    def upload_dir(self, folder, bucket: str, prefix: str) -> str:
        """Every file under ``folder`` to ``s3://bucket/prefix/<relative path>``; returns that URI."""
        from pathlib import Path

        existing = {b["Name"] for b in self.client.list_buckets().get("Buckets", [])}
        if bucket not in existing:
            self.client.create_bucket(Bucket=bucket)
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file():
                self.client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")
        return f"s3://{bucket}/{prefix}"

    def gets(self, fragment: str) -> int:
        """How many GET requests so far had ``fragment`` in their path (the log colours some lines)."""
        import re

        get = re.compile(r"GET (/\S*) HTTP/")
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return sum(1 for line in f for m in get.finditer(line) if fragment in m.group(1))


S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-compatible HTTP server on loopback (not a mock of the client library).

    The AWS variables (endpoint, dummy credentials, region) are set in this process for the session,
    so subprocesses and Ray nodes started afterwards inherit them, as on a configured machine.
    """
    import socket
    import subprocess
    import time
    import urllib.request

    pytest.importorskip("moto.server", reason="the object-store tests need moto[server] (dev extra)")
    with socket.socket() as s:   # a free port; moto_server takes a number, not 0
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_path = tmp_path_factory.mktemp("s3") / "moto.log"
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from moto.server import main; main(sys.argv[1:])",
                             "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"moto_server did not start on {endpoint}: {log_path.read_text()[-2000:]}")
            time.sleep(0.2)
    with pytest.MonkeyPatch.context() as mp:
        for k, v in {**S3_ENV, "AWS_ENDPOINT_URL": endpoint}.items():
            mp.setenv(k, v)
        for k in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION"):
            mp.delenv(k, raising=False)
        try:
            yield S3Server(endpoint, log_path)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
