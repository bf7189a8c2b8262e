"""Where one ``POST /predict`` spends its time, stage by stage, in-process (issue 16 item 2).

The service's ASGI app (the one ``bentoml serve`` runs, guard included) is driven by Starlette's
TestClient one request at a time; each stage's function is wrapped with a timer (wall time, summed
in whichever thread it runs), so the split covers the thread-pool stages too, which a cProfile of
the event loop would miss. "rest" is routing, ASGI plumbing, the test client and BentoML's
per-request bookkeeping.

    python -m bench.profile_predict --model model.onnx --image photo.jpg --requests 300
"""
from __future__ import annotations

import argparse
import collections
import functools
import importlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

TIMES: dict[str, float] = collections.defaultdict(float)


def _timed(stage: str, fn, is_async: bool = False):
    if is_async:
        @functools.wraps(fn)
        async def wrapper(*a, **kw):
            t0 = time.perf_counter()
            try:
                return await fn(*a, **kw)
            finally:
                TIMES[stage] += time.perf_counter() - t0
    else:
        @functools.wraps(fn)
        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                TIMES[stage] += time.perf_counter() - t0
    return wrapper


def instrument(service) -> None:
    """Wrap the stages; each target is a public name of its module at this version (a moved one
    raises AttributeError here rather than silently timing nothing)."""
    import starlette.formparsers as fp
    from _bentoml_sdk import validators
    from _bentoml_sdk.io_models import IOMixin

    from serving.predictor import Predictor

    guard_module = sys.modules[service.RequestGuard.__module__]
    inspector = guard_module.PartInspector
    inspector.feed = _timed("guard: second multipart parse", inspector.feed)
    fp.MultiPartParser.parse = _timed("bentoml: multipart parse (starlette)", fp.MultiPartParser.parse, True)
    validators.FileSchema.decode = _timed("bentoml: temp file per upload", validators.FileSchema.decode)
    Predictor.load = _timed("decode (PIL + resize)", Predictor.load)
    Predictor.infer = _timed("model (ONNX Runtime)", Predictor.infer)
    Predictor.decode = _timed("answer: probabilities -> dict", Predictor.decode)
    IOMixin.to_http_response = classmethod(_timed("answer: pydantic + JSON response",
                                                  IOMixin.to_http_response.__func__, True))


def profile(model: str, image: bytes, requests: int) -> dict:
    os.environ["MASK_MODEL"] = model
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    service = importlib.import_module("serving.service")
    instrument(service)
    from _bentoml_impl.tasks.result import Sqlite3Store
    from starlette.testclient import TestClient

    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "task_result.db")
        os.environ["BENTOML_RESULT_STORE"] = db
        Sqlite3Store.init_db(db)
        with TestClient(service.MaskClassifier.to_asgi()) as client:
            files = {"image": ("a.jpg", image, "image/jpeg")}
            for _ in range(20):  # warm-up
                assert client.post("/predict", files=files).status_code == 200
            TIMES.clear()
            t0 = time.perf_counter()
            for _ in range(requests):
                r = client.post("/predict", files=files)
                assert r.status_code == 200, r.text
            total = time.perf_counter() - t0
    stages = {k: v / requests * 1000 for k, v in TIMES.items()}
    per_request = total / requests * 1000
    stages["rest (routing, ASGI, test client, BentoML bookkeeping, batcher)"] = per_request - sum(stages.values())
    return {"requests": requests, "ms_per_request": per_request, "stages_ms": stages}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile_predict", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="ONNX model to serve")
    p.add_argument("--image", required=True, type=Path, help="JPEG to post")
    p.add_argument("--requests", type=int, default=300)
    args = p.parse_args(argv)
    if not args.image.is_file() or not Path(args.model).is_file():
        print("error: --model and --image must be existing files", file=sys.stderr)
        return 2
    out = profile(args.model, args.image.read_bytes(), args.requests)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
