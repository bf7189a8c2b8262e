"""The real thing: `bentoml serve` from the repository root (bentofile.yaml) in a subprocess on a free
loopback port, called with bentoml.SyncHTTPClient and with raw multipart HTTP; and the same service
started from a fresh virtual environment holding only serving/requirements.txt's packages (no torch),
which is the environment the Docker image installs."""
from __future__ import annotations

import concurrent.futures
import csv
import io
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

import httpx
import pytest

from serving.predictor import Predictor
from serving.settings import Settings
from servers import bentoml_serve, serve_env as _env
from test_service import LIMITS, bad_requests, run_task, submission_inputs

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store_home(onnx_model, tmp_path_factory):
    """A BentoML home whose store holds the test model as mask-classifier:<version>."""
    home = tmp_path_factory.mktemp("bentoml_home")
    out = subprocess.run([sys.executable, "-m", "export.cli", "--import-onnx", str(onnx_model),
                          "--bento-tag", "mask-classifier"], cwd=REPO, env=_env(BENTOML_HOME=str(home)),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"store import failed: {out.stderr[-2000:]}"
    return home


@pytest.fixture(scope="module")
def server(store_home, tmp_path_factory):
    """The default path: no MASK_MODEL, so the service loads mask-classifier:latest from the store."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with bentoml_serve(sys.executable, _env(BENTOML_HOME=str(store_home)), log) as url:
        yield url


@pytest.fixture(scope="module")
def reference(onnx_model):
    return Predictor(onnx_model, settings=Settings())


@pytest.fixture(scope="module")
def eval_paths(synth_root):
    return sorted((synth_root / "eval" / "images").iterdir())[:4]


def test_sync_http_client(server, reference, eval_paths):
    import bentoml

    with bentoml.SyncHTTPClient(server, timeout=60) as client:
        assert client.is_ready(), "client must see the server ready"
        one = client.predict(image=eval_paths[0])
        many = client.predict_batch(images=eval_paths)
        info = client.model()
    assert one == reference.predict([eval_paths[0]])[0], f"/predict: {one}"
    assert many == reference.predict(eval_paths), "/predict_batch must answer in order, like the predictor"
    assert info["source"].startswith("mask-classifier:") and info["provider"] == "CPUExecutionProvider", info


def test_raw_multipart_bad_inputs_then_good(server, eval_paths, reference):
    with httpx.Client(base_url=server, timeout=60) as c:
        for name, route, kwargs, status, words in bad_requests():
            r = c.post(route, **kwargs)
            assert r.status_code == status, f"{name}: expected {status}, got {r.status_code} {r.text[:300]}"
            assert words in r.json()["error"], f"{name}: {r.json()}"
        # a large body is refused from its Content-Length alone, before upload
        r = c.post("/predict", files={"image": ("big.jpg", b"\0" * 2_000_000, "image/jpeg")})
        assert r.status_code == 413, r.text
        r = c.post("/predict", files={"image": ("ok.jpg", eval_paths[0].read_bytes(), "image/jpeg")})
        assert r.status_code == 200, f"good image after the bad ones: {r.text}"
        assert r.json() == reference.predict([eval_paths[0]])[0]
        assert c.get("/livez").status_code == 200, "server must still be alive"


def test_make_serve_readiness_helper_prints_a_curl_line(server, capsys, tmp_path):
    from demo.ready import wait_ready

    assert wait_ready(server, tmp_path, timeout=30) == 0
    out = capsys.readouterr().out
    assert f"curl -F image=@photo.jpg {server}/predict" in out, out


def test_get_model_and_docs(server):
    with httpx.Client(base_url=server, timeout=30) as c:
        info = c.get("/model").json()
        spec = c.get("/docs.json").json()
        metrics = c.get("/metrics").text
    assert info["ready"] is True and info["limits"]["max_files"] == 4, info
    assert "/predict" in spec["paths"] and "/submission/submit" in spec["paths"], sorted(spec["paths"])
    assert "bentoml_service_request" in metrics, "BentoML's /metrics must be served"


def test_concurrent_requests_are_batched_correctly(server, eval_paths, reference):
    """Many clients at once go through the dynamic batcher; each still gets its own image's answer."""
    expected = reference.predict(eval_paths)

    def call(i):
        p = eval_paths[i % len(eval_paths)]
        r = httpx.post(f"{server}/predict", files={"image": (p.name, p.read_bytes(), "image/jpeg")}, timeout=60)
        return i, r.status_code, r.json()

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(call, range(64)))
    for i, status, body in results:
        assert status == 200 and body == expected[i % len(eval_paths)], f"request {i}: {status} {body}"
    metrics = dict(line.rsplit(" ", 1) for line in httpx.get(f"{server}/metrics").text.splitlines()
                   if line.startswith("mask_predict_batch_size_"))
    images, calls = float(metrics["mask_predict_batch_size_sum"]), float(metrics["mask_predict_batch_size_count"])
    assert images >= 64 and calls < images, f"no batches formed: {images} images in {calls} model calls"


def test_predict_batch_over_the_batch_size(server, eval_paths, reference):
    """More files in one /predict_batch than MASK_MAX_BATCH_SIZE (the batcher splits the request
    across model calls and puts it back together), through the real server."""
    batch_size, max_files = int(LIMITS["MASK_MAX_BATCH_SIZE"]), int(LIMITS["MASK_MAX_FILES"])
    paths = (eval_paths * max_files)[:max_files]
    assert len(paths) > batch_size, (len(paths), batch_size)
    r = httpx.post(f"{server}/predict_batch", timeout=60,
                   files=[("images", (p.name, p.read_bytes(), "image/jpeg")) for p in paths])
    assert r.status_code == 200 and r.json() == reference.predict(paths), r.text[:300]


def test_oversize_json_and_cancel_bodies_are_refused(server):
    """Routes BentoML adds itself (the task's PUT /cancel) and JSON routes are capped too."""
    with httpx.Client(base_url=server, timeout=30) as c:
        infer = c.post("/infer", content=b"{" + b" " * int(LIMITS["MASK_MAX_INFER_BYTES"]) + b"}",
                       headers={"content-type": "application/json"})
        cancel = c.put("/submission/cancel", params={"task_id": "x"}, content=b"\0" * 5000)
    assert infer.status_code == 413 and "/infer" in infer.json()["error"], infer.text[:300]
    assert cancel.status_code == 413 and "limit of 4096 bytes" in cancel.json()["error"], cancel.text[:300]


def test_api_key_on_a_real_server(store_home, eval_paths, tmp_path):
    key = "test-key-123"
    env = _env(BENTOML_HOME=str(store_home), MASK_API_KEY=key)
    with bentoml_serve(sys.executable, env, tmp_path / "serve.log") as url:   # /readyz is open
        with httpx.Client(base_url=url, timeout=60) as c:
            files = {"image": ("a.jpg", eval_paths[0].read_bytes(), "image/jpeg")}
            anonymous = c.post("/predict", files=files)
            metrics = c.get("/metrics")
            keyed = c.post("/predict", files=files, headers={"Authorization": f"Bearer {key}"})
        import bentoml

        with bentoml.SyncHTTPClient(url, token=key, timeout=60) as client:   # BentoML's client sends the key
            info = client.model()
    assert anonymous.status_code == 401 and "Authorization: Bearer" in anonymous.json()["error"], anonymous.text
    assert metrics.status_code == 200 and keyed.status_code == 200, (metrics.status_code, keyed.text[:300])
    assert info["limits"]["api_key_required"] is True, info


def test_submission_task(server, synth_root, reference):
    ids, info, archive = submission_inputs(synth_root, n=5, folder="images/")  # images inside a folder
    with httpx.Client(base_url=server, timeout=60) as c:
        status, result = run_task(c, info, archive, polls=300, interval=0.2)
    assert status == "completed" and result.status_code == 200, (status, result.text[:300])
    got = {r["ImageID"]: int(r["ans"]) for r in csv.DictReader(io.StringIO(result.text))}
    expected = reference.predict([synth_root / "eval" / "images" / i for i in ids])
    assert [got[i] for i in ids] == [e["class"] for e in expected], got


# --- the Docker image's environment, without Docker ---------------------------------------------
def requirement_closure(requirements: Path) -> dict[str, metadata.Distribution]:
    """The installed distributions pip would install for ``requirements`` (markers and extras
    evaluated), resolved against this environment's versions."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    lines = [ln.split("#", 1)[0].strip() for ln in requirements.read_text().splitlines()]
    todo = [(Requirement(ln), "") for ln in lines if ln]
    found: dict[str, metadata.Distribution] = {}
    while todo:
        req, extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(req.name)
        first = name not in found
        if first:
            found[name] = metadata.distribution(req.name)
        for wanted in (req.extras if first or req.extras else ()):
            todo.extend((Requirement(r), wanted) for r in found[name].requires or [])
        if first:
            todo.extend((Requirement(r), "") for r in found[name].requires or [])
    return found


@pytest.fixture(scope="module")
def serving_venv(tmp_path_factory):
    """A fresh venv (no system site-packages) holding only serving/requirements.txt's closure,
    linked from this environment's installed files: same versions, seconds instead of the minutes
    a network `pip install` takes (docs/serving.md has that command and its measured time)."""
    dists = requirement_closure(REPO / "serving" / "requirements.txt")
    banned = sorted(n for n in dists if n.startswith(("torch", "triton", "nvidia-cu", "nvidia-nccl")))
    assert banned == [], f"serving requirements pull in {banned}"
    venv = tmp_path_factory.mktemp("serving_venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    rel = Path(sysconfig.get_path("purelib")).relative_to(sys.prefix)
    site = venv / rel
    for dist in dists.values():
        for f in dist.files or []:
            if f.parts[0] == "..":  # console scripts; the test runs `python -m bentoml`
                continue
            dst = site / f
            dst.parent.mkdir(parents=True, exist_ok=True)
            if not dst.exists():
                dst.symlink_to(dist.locate_file(f))
    return venv / "bin" / "python", sorted(dists)


def test_serving_runs_in_a_torch_free_environment(serving_venv, onnx_model, eval_paths, reference,
                                                  tmp_path):
    python, dists = serving_venv
    probe = subprocess.run([str(python), "-c", "import torch"], capture_output=True, text=True, timeout=60)
    assert probe.returncode != 0 and "No module named 'torch'" in probe.stderr, "venv must not have torch"
    env = _env(MASK_MODEL=str(onnx_model), BENTOML_HOME=str(tmp_path / "home"))
    imports = subprocess.run([str(python), "-c", "import serving.service, serving.local_engine, serving.submit_cli"],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert imports.returncode == 0, f"serving modules need more than the requirements: {imports.stderr[-1500:]}"
    with bentoml_serve(str(python), env, tmp_path / "serve.log") as url:
        r = httpx.post(f"{url}/predict", files={"image": ("a.jpg", eval_paths[0].read_bytes(), "image/jpeg")},
                       timeout=60)
        info = httpx.get(f"{url}/model", timeout=30).json()
    assert r.status_code == 200 and r.json() == reference.predict([eval_paths[0]])[0], r.text
    assert info["provider"] == "CPUExecutionProvider", info
    assert "bentoml" in dists and "onnxruntime-gpu" in dists and len(dists) > 20, dists
