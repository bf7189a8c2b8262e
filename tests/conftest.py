"""Shared fixtures: one small synthetic data set, one tiny trained checkpoint and its ONNX export,
made once per test session and reused by every stage's tests."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """DIR with train/ and eval/ in the competition layout (24 people, 8 eval people)."""
    from maskdata.synth import generate

    root = tmp_path_factory.mktemp("synth")
    generate(root, people=24, eval_people=8, seed=0)
    return root
