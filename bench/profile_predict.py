"""Where one ``POST /predict`` spends its time, stage by stage, in-process.

The service's ASGI app (the one a ``bentoml serve`` worker runs, guard included) is served by
uvicorn in this process and loaded by one closed-loop ``bench.loadgen`` client in a subprocess;
each stage's function is wrapped with a timer (wall time, summed in whichever thread it runs), so
the split covers the thread-pool stages too, which a cProfile of the event loop would miss
(``--cprofile N`` adds that profile's top N entries). "rest" is what no timer covers.

    python -m bench.profile_predict --model model.onnx --image photo.jpg --duration 10 [--cprofile 30]
"""
from __future__ import annotations

import argparse
import collections
import functools
import importlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

TIMES: dict[str, float] = collections.defaultdict(float)
CALLS: collections.Counter = collections.Counter()


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
                CALLS[stage] += 1
    return wrapper


def instrument(service) -> None:
    """Wrap the stages; each target is a public name of its module at this version (a moved one
    raises AttributeError here rather than silently timing nothing)."""
    import starlette.formparsers as fp
    from _bentoml_sdk.io_models import IOMixin

    from serving.predictor import Predictor

    guard_module = sys.modules[service.RequestGuard.__module__]
    inspector = guard_module.PartInspector
    inspector.feed = _timed("guard: second multipart parse", inspector.feed)
    fp.MultiPartParser.parse = _timed("bentoml: multipart parse incl. body receive (starlette)", fp.MultiPartParser.parse, True)
    Predictor.load = _timed("decode (PIL + resize)", Predictor.load)
    Predictor.infer = _timed("model (ONNX Runtime)", Predictor.infer)
    Predictor.decode = _timed("answer: probabilities -> dict", Predictor.decode)
    IOMixin.to_http_response = classmethod(_timed("answer: pydantic + JSON response",
                                                  IOMixin.to_http_response.__func__, True))


def profile(model: str, image: Path, duration_s: float, cprofile: int = 0, http: str = "auto",
            loop: str = "auto") -> dict:
    """Serve the app with uvicorn in this process (its event loop in the main thread, as in a
    ``bentoml serve`` worker), load it with one ``bench.loadgen`` client in a subprocess, and
    split the time per request."""
    import cProfile
    import pstats
    import socket
    import subprocess
    import threading

    import uvicorn

    os.environ["MASK_MODEL"] = model
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    from _bentoml_sdk import validators

    # before the service is imported: its pydantic schemas bind the validator when they are built
    validators.FileSchema.decode = _timed("bentoml: temp file per upload", validators.FileSchema.decode)
    service = importlib.import_module("serving.service")
    instrument(service)

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MASK_TASKS_DIR"] = tmp
        server = uvicorn.Server(uvicorn.Config(service.MaskClassifier.to_asgi(), host="127.0.0.1", port=port,
                                               log_level="warning", lifespan="on",
                                               http=http, loop=loop))
        load = [sys.executable, "-m", "bench.loadgen", f"http://127.0.0.1:{port}/predict", str(image),
                "--clients", "1", "--duration", str(duration_s), "--warmup", "1"]
        result: dict = {}
        prof = cProfile.Profile() if cprofile else None

        def client():
            while not server.started:
                time.sleep(0.1)
            TIMES.clear()
            CALLS.clear()
            out = subprocess.run(load, capture_output=True, text=True, timeout=duration_s + 120)
            result.update(json.loads(out.stdout), stages=dict(TIMES))
            server.should_exit = True

        threading.Thread(target=client, daemon=True).start()
        if prof:
            prof.enable()
        server.run()
        if prof:
            prof.disable()
    per_request = 1000 / result["req_per_s"]  # one closed-loop client: wall time per answered request
    answered = CALLS["answer: probabilities -> dict"]  # once per /predict, warm-up included like the timers
    stages = {k: v / answered * 1000 for k, v in result["stages"].items()}
    stages["rest: HTTP server, BentoML app, batcher, thread hand-offs, client"] = per_request - sum(stages.values())
    out = {"http": http, "loop": loop, "requests": result["requests"], "req_per_s": result["req_per_s"],
           "p50_ms": result["p50_ms"],
           "ms_per_request": per_request, "stages_ms": stages}
    if prof:
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(cprofile)
        out["event_loop_profile"] = buf.getvalue()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile_predict", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="ONNX model to serve")
    p.add_argument("--image", required=True, type=Path, help="JPEG to post")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds (default: 10)")
    p.add_argument("--http", default="auto", help="uvicorn HTTP parser: auto (httptools when installed), h11")
    p.add_argument("--loop", default="auto", help="uvicorn event loop: auto (uvloop when installed), asyncio")
    p.add_argument("--cprofile", type=int, default=0, help="also print the event loop's top N cProfile entries")
    args = p.parse_args(argv)
    if not args.image.is_file() or not Path(args.model).is_file():
        print("error: --model and --image must be existing files", file=sys.stderr)
        return 2
    out = profile(args.model, args.image, args.duration, args.cprofile, args.http, args.loop)
    loop_profile = out.pop("event_loop_profile", "")
    print(json.dumps(out, indent=1))
    print(loop_profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
