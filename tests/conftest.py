"""Shared fixtures: one small synthetic data set, one tiny trained checkpoint and its ONNX export,
made once per test session and reused by every stage's tests."""
from __future__ import annotations

import os
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


def pytest_sessionfinish(session, exitstatus):
    import shutil

    shutil.rmtree(BENTOML_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """DIR with train/ and eval/ in the competition layout (24 people, 8 eval people)."""
    from maskdata.synth import generate

    root = tmp_path_factory.mktemp("synth")
    generate(root, people=24, eval_people=8, seed=0)
    return root


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
