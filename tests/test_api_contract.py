"""The HTTP contract as outside tools see it, against a real `bentoml serve`: the documented way to
submit the /submission task from Python runs as written (BentoML's own client cannot, and the test
notices when it can)."""
from __future__ import annotations

import csv
import io
import re
import sys
from pathlib import Path

import pytest

from test_serve_subprocess import _env, bentoml_serve, store_home  # noqa: F401  (fixture)
from test_service import submission_inputs

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def api_server(store_home, tmp_path_factory):  # noqa: F811
    log = tmp_path_factory.mktemp("api_serve") / "serve.log"
    with bentoml_serve(sys.executable, _env(BENTOML_HOME=str(store_home)), log) as url:
        yield url


@pytest.fixture(scope="module")
def task_files(synth_root, tmp_path_factory):
    """(ImageIDs, info.csv path, zip path) of a few eval images."""
    ids, info, archive = submission_inputs(synth_root, n=4)
    folder = tmp_path_factory.mktemp("task")
    (folder / "info.csv").write_bytes(info)
    (folder / "images.zip").write_bytes(archive)
    return ids, folder / "info.csv", folder / "images.zip"


def documented_block(marker: str) -> str:
    """The ```python block of docs/serving.md that contains ``marker``."""
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "docs" / "serving.md").read_text(), re.S)
    found = [b for b in blocks if marker in b]
    assert len(found) == 1, f"docs/serving.md should show exactly one python block with {marker!r}"
    return found[0]


def test_documented_python_submission_runs_as_written(api_server, task_files, synth_root, onnx_model):
    from serving.predictor import Predictor

    ids, info, archive = task_files
    namespace: dict = {}
    exec(compile(documented_block("def submit("), "docs/serving.md", "exec"), namespace)
    text = namespace["submit"](api_server, str(info), str(archive), timeout=120).decode()
    got = {r["ImageID"]: int(r["ans"]) for r in csv.DictReader(io.StringIO(text))}
    model = Predictor(onnx_model)   # the model store_home holds
    want = [p["class"] for p in model.predict([synth_root / "eval" / "images" / i for i in ids])]
    assert [got[i] for i in ids] == want, "the documented submission must give the predictor's answers"


def test_bentoml_client_submission_bug_is_still_there(api_server, task_files):
    """docs/serving.md tells users not to submit the task through bentoml.SyncHTTPClient: it raises
    after sending. When a BentoML release fixes that, this fails so the docs lose the warning."""
    import bentoml

    _, info, archive = task_files
    with bentoml.SyncHTTPClient(api_server, timeout=60) as client:
        with pytest.raises(AttributeError, match="_opened_files"):
            client.submission.submit(info=info, archive=archive)
