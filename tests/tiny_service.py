"""A BentoML service of a few lines and what the installed BentoML answers it: the behaviour pinned by
the tests beside each module of serving/ that works around it (test_refusals, test_uploads,
test_disconnect, test_guard). When one of those facts stops holding, the test says which module can
shrink.

:func:`facts` runs :func:`probe` once per test session in a fresh interpreter: a process holds one
started BentoML app (a second registers BentoML's metrics twice), and the suite's own is the
``client`` fixture's.
"""
from __future__ import annotations

import asyncio
import functools
import io
import json
import os
import subprocess
import sys
from http import HTTPStatus
from pathlib import Path

import bentoml
from bentoml.exceptions import BentoMLException
from PIL import Image
from starlette.responses import JSONResponse

finished: list[str] = []   # names of the handlers that ran to their end


class Busy(BentoMLException):
    error_code = HTTPStatus.SERVICE_UNAVAILABLE


class Refused(BentoMLException):
    error_code = HTTPStatus.BAD_REQUEST


@bentoml.service
class Tiny:
    @bentoml.api
    def photo(self, image: Image.Image) -> dict:
        return {"size": list(image.size)}

    @bentoml.api
    def answered_400(self, ctx: bentoml.Context = None) -> dict:
        return JSONResponse({"error": "no", "status": 400}, status_code=400)

    @bentoml.api
    def busy(self) -> dict:
        raise Busy("the queue is full")

    @bentoml.api
    def refused(self) -> dict:
        raise Refused("not like that")

    @bentoml.api
    async def slow(self) -> dict:
        await asyncio.sleep(0.3)
        finished.append("slow")
        return {}


def png() -> bytes:
    """An 8x6 PNG photo."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), (10, 20, 30)).save(buf, format="PNG")
    return buf.getvalue()


def probe() -> dict:
    """Each behaviour as plain values (this process starts the Tiny app)."""
    from starlette.testclient import TestClient

    with TestClient(Tiny.to_asgi(), raise_server_exceptions=False) as c:
        def answer(r) -> dict:
            return {"status": r.status_code, "body": r.text, "headers": dict(r.headers)}
        found = {
            "photo_good": answer(c.post("/photo", files={"image": ("a.png", png(), "image/png")})),
            "photo_bad": answer(c.post("/photo", files={"image": ("a.png", b"not an image", "image/png")})),
            "answered_400": answer(c.post("/answered_400", json={})),
            "busy": answer(c.post("/busy", json={})),
            "refused": answer(c.post("/refused", json={})),
            "get_of_an_api": answer(c.get("/photo")),
        }
        sent = raw_post(c, "/slow", b"{}", disconnect_after_s=0.01)
        found["gone_client"] = {"finished": list(finished), "status": sent[0]["status"] if sent else None}
    return found


@functools.cache
def facts() -> dict:
    """:func:`probe`'s answers, from a fresh interpreter (once per session)."""
    here = Path(__file__).resolve().parent
    out = subprocess.run([sys.executable, "-c", "import json, tiny_service; print(json.dumps(tiny_service.probe()))"],
                         cwd=here, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join([str(here), str(here.parent)])})
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def raw_post(client, path: str, body: bytes, disconnect_after_s: float) -> list[dict]:
    """POST ``body`` to ``path`` of a started TestClient's app as raw ASGI in its event loop, the client
    disconnecting ``disconnect_after_s`` after the body was read; the messages the app sent."""
    async def call() -> list[dict]:
        messages = [{"type": "http.request", "body": body, "more_body": False}]
        sent: list[dict] = []

        async def receive():
            if messages:
                return messages.pop(0)
            await asyncio.sleep(disconnect_after_s)
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(), "query_string": b"",
                 "root_path": "", "scheme": "http", "http_version": "1.1", "server": ("testserver", 80),
                 "client": ("testclient", 1),
                 "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]}
        await client.app(scope, receive, send)
        return sent

    return client.portal.call(call)
