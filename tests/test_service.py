"""The BentoML service in-process: the ASGI app BentoML serves (lifespan, the request guard, the
project's own batcher in serving/batching.py) driven by Starlette's TestClient, plus the plain
service class."""
from __future__ import annotations

import csv
import io
import os
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from serving.predictor import Predictor
from serving.settings import Settings

from conftest import SERVICE_LIMITS as LIMITS  # noqa: F401  re-exported; the limits the shared in-process service runs with

REPO = Path(__file__).resolve().parents[1]



def image_bytes(fmt="JPEG", size=(384, 512), color=(30, 140, 60), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color if mode == "RGB" else 128).save(buf, fmt)
    return buf.getvalue()


def bad_requests() -> list[tuple[str, str, dict, int, str]]:
    """(name, route, httpx/TestClient kwargs, expected status, words in the error) for LIMITS."""
    good = image_bytes()
    bomb = io.BytesIO()
    Image.new("1", (3000, 2000)).save(bomb, "PNG")  # 6 Mpx in a few kB: over MASK_MAX_PIXELS=4e6
    one = lambda data, name="a.jpg", field="image", ctype="image/jpeg": {"files": {field: (name, data, ctype)}}
    return [
        ("not an image", "/predict", one(b"%PDF-1.4 hello", "a.pdf", ctype="application/pdf"), 400,
         "not a recognised image"),
        ("truncated jpeg", "/predict", one(good[: len(good) // 2]), 400, "truncated"),
        ("empty upload", "/predict", one(b""), 400, "empty upload"),
        ("wrong field name", "/predict", one(good, field="photo"), 400, "unexpected form field 'photo'"),
        ("text instead of a file", "/predict", {"files": {"image": (None, "http://example.com/x.jpg")}}, 400,
         "must be a file upload"),
        ("unsupported format", "/predict", one(b"<svg xmlns='http://www.w3.org/2000/svg'/>", "a.svg",
                                                ctype="image/svg+xml"), 400, "not a recognised image"),
        ("unknown content type", "/predict", {"content": good, "headers": {"content-type": "image/jpeg"}}, 415,
         "multipart/form-data"),
        ("file over the byte limit", "/predict", one(good + b"\0" * 300_001), 413, "over the limit"),
        ("over the pixel limit", "/predict", one(bomb.getvalue(), "b.png", ctype="image/png"), 413,
         "over the limit of 4000000"),
        ("too many files", "/predict_batch", {"files": [("images", ("a.jpg", good, "image/jpeg"))] * 5}, 413,
         "5 files in one request; the limit is 4"),
        ("one bad file in a batch", "/predict_batch",
         {"files": [("images", ("a.jpg", good, "image/jpeg")), ("images", ("b.jpg", b"junk", "image/jpeg"))]},
         400, "images[1]"),
    ]


@pytest.fixture(scope="module")
def reference(onnx_model):
    return Predictor(onnx_model, settings=Settings())


def test_predict_gives_the_predictors_answer(client, reference, synth_root):
    path = sorted((synth_root / "eval" / "images").iterdir())[0]
    r = client.post("/predict", files={"image": (path.name, path.read_bytes(), "image/jpeg")})
    assert r.status_code == 200, r.text
    assert r.json() == reference.predict([path])[0], "service and predictor must agree on one image"
    assert set(r.json()) == {"class", "label", "mask", "gender", "age", "confidence", "uncertain", "probabilities"}, r.json()


def test_predict_batch_keeps_order(client, reference, synth_root):
    paths = sorted((synth_root / "eval" / "images").iterdir())[:3]
    files = [("images", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]
    r = client.post("/predict_batch", files=files)
    assert r.status_code == 200, r.text
    assert r.json() == reference.predict(paths), "batch answers must match one-by-one answers, in order"


def test_bad_inputs_get_4xx_json_and_the_service_keeps_working(client):
    for name, route, kwargs, status, words in bad_requests():
        r = client.post(route, **kwargs)
        assert r.status_code == status, f"{name}: expected {status}, got {r.status_code} {r.text[:300]}"
        body = r.json()
        assert words in body["error"] and body["status"] == status, f"{name}: {body}"
    r = client.post("/predict", files={"image": ("ok.png", image_bytes("PNG", mode="L"), "image/png")})
    assert r.status_code == 200 and 0 <= r.json()["class"] < 18, f"good image after bad ones: {r.text}"


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def test_model_route_get_and_post(client, onnx_model):
    got, posted = client.get("/model"), client.post("/model", json={})
    assert got.status_code == posted.status_code == 200, (got.text, posted.text)
    info = got.json()
    assert info == posted.json(), "GET and POST /model must agree"
    assert info["provider"] == "CPUExecutionProvider", info
    # file names and paths relative to where the model was built, never this or the build machine's paths
    assert info["source"] == onnx_model.name == info["model_file"], info
    absolute = [v for v in _strings(info) if os.path.isabs(v)]
    assert absolute == [], f"GET /model reports absolute paths: {absolute}"
    assert info["limits"]["max_files"] == 4 and info["limits"]["max_upload_bytes"] == 300000, info["limits"]
    assert info["input"]["shape"] == ["N", 64, 48, 3] and len(info["labels"]) == 18, info["input"]


def test_get_model_documents_only_limits_the_service_reports(client):
    """The limits GET /model's documented example shows are ones the service answers."""
    from serving.schemas import ModelInfo

    example = ModelInfo.model_config["json_schema_extra"]["example"]["limits"]
    reported = client.get("/model").json()["limits"]
    assert example and set(example) <= set(reported), f"documented but not reported: {set(example) - set(reported)}"


def test_openapi_documents_responses_with_examples(client):
    spec = client.get("/docs.json").json()
    for route in ("/predict", "/predict_batch", "/model", "/submission/submit"):
        assert route in spec["paths"], f"{route} missing from /docs.json: {sorted(spec['paths'])}"
    ok = spec["paths"]["/predict"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok["example"]["mask"] == "wear" and "class" in ok["properties"], ok


def test_batching_switch_gives_the_same_answers(service_module, reference, synth_root):
    import asyncio
    from pathlib import Path

    svc = service_module.MaskClassifier()
    svc.settings = Settings(batching=False)
    path = sorted((synth_root / "eval" / "images").iterdir())[1]
    out = asyncio.run(svc.predict(Path(path)))
    assert out.model_dump(by_alias=True) == reference.predict([path])[0], "MASK_BATCHING=0 must not change answers"
    assert svc.model_info().limits["batching"] is False


def test_infer_isolates_malformed_images(client, reference, synth_root):
    import base64

    path = sorted((synth_root / "eval" / "images").iterdir())[0]
    good = base64.b64encode(reference.load(path).tobytes()).decode()
    r = client.post("/infer", json={"images": ["AAAA", "not base64!", good]})
    assert r.status_code == 200, r.text
    rows = r.json()
    assert rows[:2] == [None, None], f"malformed images must get null, not fail the batch: {rows[:2]}"
    assert rows[2] == pytest.approx(reference.infer(reference.load(path)[None])[0].tolist(), abs=1e-6), rows[2]


def submission_inputs(synth_root, n=6, folder=""):
    """(ImageIDs, info.csv bytes, zip bytes) of the first ``n`` eval images, stored under ``folder``."""
    info = synth_root / "eval" / "info.csv"
    with open(info, newline="") as f:
        rows = list(csv.DictReader(f))[:n]
    text = "ImageID,ans\n" + "".join(f"{r['ImageID']},0\n" for r in rows)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        for r in rows:
            z.write(synth_root / "eval" / "images" / r["ImageID"], folder + r["ImageID"])
    return [r["ImageID"] for r in rows], text.encode(), archive.getvalue()


def run_task(client, info: bytes, archive: bytes, polls: int = 200, interval: float = 0.1):
    """Submit a /submission task and poll it until it leaves in_progress: (final status, /get response).
    ``client`` is a Starlette TestClient or an httpx.Client with a base_url."""
    import time

    r = client.post("/submission/submit", files={"info": ("info.csv", info, "text/csv"),
                                                 "archive": ("images.zip", archive, "application/zip")})
    assert r.status_code == 200, r.text
    task = r.json()["task_id"]
    for _ in range(polls):
        status = client.get("/submission/status", params={"task_id": task}).json()["status"]
        if status != "in_progress":
            break
        time.sleep(interval)
    return status, client.get("/submission/get", params={"task_id": task})


def test_submission_task_returns_the_filled_csv(client, reference, synth_root):
    ids, info, archive = submission_inputs(synth_root)
    status, result = run_task(client, info, archive)
    assert status == "completed" and result.status_code == 200, (status, result.text[:500])
    got = {row["ImageID"]: int(row["ans"]) for row in csv.DictReader(io.StringIO(result.text))}
    expected = [p["class"] for p in reference.predict([synth_root / "eval" / "images" / i for i in ids])]
    assert [got[i] for i in ids] == expected, "task answers must match the predictor's"


def test_submission_task_rejects_a_bad_csv_in_the_request(client, synth_root):
    """The CSV is checked before a task is queued: the submit itself answers 400 with the reason."""
    _, _, archive = submission_inputs(synth_root, n=1)
    r = client.post("/submission/submit", files={"info": ("info.csv", b"foo,bar\n1,2\n", "text/csv"),
                                                 "archive": ("images.zip", archive, "application/zip")})
    assert r.status_code == 400 and "ImageID" in r.json()["error"], r.text


def test_plain_service_class_works_without_a_server(service_module, reference, synth_root):
    import asyncio
    from pathlib import Path

    svc = service_module.MaskClassifier()
    path = sorted((synth_root / "eval" / "images").iterdir())[0]
    out = asyncio.run(svc.predict(Path(path)))
    assert out.model_dump(by_alias=True) == reference.predict([path])[0]
    bad = asyncio.run(svc.predict(Path(__file__)))
    assert bad.status_code == 400 and b"not a recognised image" in bad.body, bad.body


def body_routes(client) -> list[tuple[str, str]]:
    """(method, path) of every route the served ASGI app has that takes a body (POST/PUT/PATCH),
    mounted apps' routes included (the /submission task routes are one)."""
    def walk(routes, prefix=""):
        for r in routes:
            inner = getattr(getattr(r, "app", None), "routes", None)
            if inner is not None and not getattr(r, "methods", None):
                yield from walk(inner, prefix + r.path)
            for m in getattr(r, "methods", None) or ():
                if m in ("POST", "PUT", "PATCH"):
                    yield m, prefix + r.path

    return sorted(set(walk(client.app.routes)))


def test_every_body_route_refuses_an_oversize_body(client, service_module):
    """BentoML has no request-size limit of its own: every POST/PUT route, listed or not, gets one."""
    from serving.guard import body_limits

    from serving.settings import get_settings

    settings = get_settings()   # what the app was built with: the session's MASK_* environment
    routes = body_routes(client)
    expected = {("POST", p) for p in ("/infer", "/model", "/predict", "/predict_batch", "/submission",
                                      "/submission/submit", "/submission/retry")} | {("PUT", "/submission/cancel")}
    assert expected <= set(routes), f"body routes of the app: {routes}"
    for method, path in routes:
        limit = body_limits(settings).get(path, settings.max_body_bytes)
        r = client.request(method, path, content=b"\0" * (limit + 1),
                           headers={"content-type": "application/octet-stream"})
        assert r.status_code == 413, f"{method} {path}: {limit + 1} bytes got {r.status_code} {r.text[:200]}"
        assert r.json()["error"].endswith(f"over the limit of {limit} bytes for {path}"), r.json()


def test_infer_json_over_its_limit_is_413_and_under_it_is_served(client, reference, synth_root):
    import base64

    path = sorted((synth_root / "eval" / "images").iterdir())[0]
    good = base64.b64encode(reference.load(path).tobytes()).decode()
    many = client.post("/infer", json={"images": [good] * 12})   # ~150 kB of JSON over MASK_MAX_INFER_BYTES=1e5
    assert many.status_code == 413 and "over the limit of 100000" in many.json()["error"], many.text[:300]
    few = client.post("/infer", json={"images": [good] * 2})
    assert few.status_code == 200 and len(few.json()) == 2, few.text[:300]


def test_chunked_body_without_length_is_411(client):
    def chunks():
        yield b'{"images": []}'

    r = client.post("/infer", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 411 and "Content-Length" in r.json()["error"], r.text


def test_batcher_forms_batches():
    """Concurrent submissions share model calls: fewer calls than images (a batcher that ran every
    request alone would make one call per image)."""
    import asyncio
    import time

    import numpy as np

    from serving.batching import Batcher

    calls = []

    def run_batch(batch):
        calls.append(len(batch))
        time.sleep(0.02)   # a model call takes time, so requests queue behind it
        return np.repeat(batch.reshape(len(batch), -1)[:, :1].astype(np.float32), 18, axis=1)

    async def main():
        batcher = Batcher(run_batch, Settings.from_env({"MASK_MAX_BATCH_SIZE": "8", "MASK_BATCH_WAIT_MS": "50"}))
        jobs = [[np.full((2, 2, 3), i, np.uint8)] for i in range(32)]
        return await asyncio.gather(*(batcher.submit(j) for j in jobs))

    rows = asyncio.run(main())
    assert [int(r[0][0]) for r in rows] == list(range(32)), "each request must get its own image's row"
    assert sum(calls) == 32 and len(calls) < 32 and max(calls) > 1, f"model calls (images each): {calls}"
    assert max(calls) <= 8, f"a batch over max_batch_size: {calls}"


EXPLICIT = '''
import json, sys
from starlette.testclient import TestClient
from serving.service import declare
from serving.settings import Settings

model, photo = sys.argv[1], open(sys.argv[2], "rb").read()
service = declare(Settings.from_fields({"model": model, "max_files": 3, "api_key": "k", "workers": 2}))
answers = {"workers": service.config["workers"]}
with TestClient(service.to_asgi()) as c:
    key = {"Authorization": "Bearer k"}
    files = lambda n: [("images", (f"{i}.jpg", photo, "image/jpeg")) for i in range(n)]
    answers["no key"] = c.get("/model").status_code
    answers["env key"] = c.get("/model", headers={"Authorization": "Bearer from-env"}).status_code
    answers["max_files"] = c.get("/model", headers=key).json()["limits"]["max_files"]
    answers["3 files"] = c.post("/predict_batch", files=files(3), headers=key).status_code
    answers["4 files"] = c.post("/predict_batch", files=files(4), headers=key).status_code
print(json.dumps(answers))
'''


def test_a_service_declared_from_explicit_settings_ignores_the_environment(onnx_model, synth_root, tmp_path):
    """declare(Settings) gives a service whose worker count, guard (API key), limits and model are
    those settings', whatever MASK_* says (a subprocess: one ASGI app per process)."""
    import json
    import subprocess
    import sys

    photo = sorted((synth_root / "eval" / "images").iterdir())[0]
    env = {**os.environ, "MASK_MODEL": str(tmp_path / "absent.onnx"), "MASK_MAX_FILES": "1",
           "MASK_API_KEY": "from-env", "MASK_WORKERS": "5", "BENTOML_HOME": str(tmp_path / "bentoml"),
           "BENTOML_DO_NOT_TRACK": "true"}
    out = subprocess.run([sys.executable, "-c", EXPLICIT, str(onnx_model), str(photo)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"workers": 2, "no key": 401, "env key": 401, "max_files": 3, "3 files": 200, "4 files": 413}, got
