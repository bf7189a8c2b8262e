"""serving.request_timeout: the request timeout that lets go of each request when it ends, its 504,
and the two facts about the installed BentoML that its workaround rests on (pinned here)."""
from __future__ import annotations

import asyncio
import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import bentoml
from bentoml._internal.server.http import traffic

from serving import request_timeout
from serving.request_timeout import RequestTimeout

request_timeout.install()  # what importing serving.service does; keeps BentoML's class as `replaced`
UPSTREAM = request_timeout.replaced


async def answer_ok(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def call(app, scope: dict | None = None) -> list[dict]:
    """One request through an ASGI app on a fresh event loop; the messages it sent."""
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope or {"type": "http", "path": "/x", "method": "POST"}, receive, send))
    return sent


def timers_left_here(middleware_cls, requests: int) -> int:
    """Requests through ``middleware_cls(answer_ok, timeout=3600)`` on one loop; then how many armed
    (not cancelled) timers this process holds."""
    app = middleware_cls(answer_ok, timeout=3600)

    async def many():
        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            pass

        for _ in range(requests):
            await app({"type": "http", "path": "/x", "method": "POST"}, receive, send)
        gc.collect()
        return sum(1 for o in gc.get_objects() if type(o) is asyncio.TimerHandle and not o.cancelled())

    return asyncio.run(many())


def live_timers_after(middleware: str, requests: int) -> int:
    """:func:`timers_left_here` in a fresh interpreter: gc sees the timers of every loop in a process,
    and earlier tests leave loops running in threads of this one (a full run counted their timers)."""
    here = Path(__file__).resolve().parent
    code = f"import test_request_timeout as t; print(t.timers_left_here(t.{middleware}, {requests}))"
    out = subprocess.run([sys.executable, "-c", code], cwd=here, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join([str(here), str(here.parent)])})
    assert out.returncode == 0, out.stderr[-3000:]
    return int(out.stdout.strip().splitlines()[-1])


def test_no_timer_outlives_its_request():
    assert live_timers_after("RequestTimeout", 200) == 0, "RequestTimeout must cancel every request's deadline"


def test_bentoml_timeout_middleware_still_keeps_a_timer_per_request():
    """The reason for the workaround: when this fails, the installed BentoML lets go of its timers
    and serving/request_timeout.py can be dropped (docs/serving.md, known issues)."""
    kept = live_timers_after("UPSTREAM", 200)
    assert kept == 200, f"BentoML's TimeoutMiddleware kept {kept} of 200 timers; revisit serving/request_timeout.py"


def test_answers_504_when_nothing_started_within_the_timeout():
    async def slow(scope, receive, send):
        await asyncio.sleep(5)
        await answer_ok(scope, receive, send)

    sent = call(RequestTimeout(slow, timeout=0.05))
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 504, sent
    body = json.loads(sent[1]["body"])
    assert body["status"] == 504 and "0.05 seconds" in body["error"], body
    assert len(sent) == 2, f"the slow app must not send after the 504: {sent}"


def test_an_answer_that_has_started_runs_to_its_end():
    async def streams_slowly(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"a", b"b", b"c"):
            await asyncio.sleep(0.05)
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    sent = call(RequestTimeout(streams_slowly, timeout=0.02))
    assert [m.get("status") for m in sent][:1] == [200], sent
    assert b"".join(m.get("body", b"") for m in sent[1:]) == b"abc", f"the body was cut: {sent}"


def test_websocket_that_never_accepts_is_closed():
    async def never_accepts(scope, receive, send):
        await asyncio.sleep(5)

    sent = call(RequestTimeout(never_accepts, timeout=0.02), {"type": "websocket", "path": "/ws"})
    assert sent == [{"type": "websocket.close", "code": 1011, "reason": sent[0]["reason"]}], sent


def test_other_scopes_pass_through():
    seen = []

    async def app(scope, receive, send):
        seen.append(scope["type"])

    call(RequestTimeout(app, timeout=0.01), {"type": "lifespan"})
    assert seen == ["lifespan"], seen


def test_install_makes_bentoml_build_it(monkeypatch):
    monkeypatch.setattr(traffic, "TimeoutMiddleware", UPSTREAM)  # BentoML's again until this test ends
    assert request_timeout.install() is True, "the name BentoML builds its timeout from must still exist"

    @bentoml.service(traffic={"timeout": 30})
    class Tiny:
        @bentoml.api
        def echo(self, x: int) -> int:
            return x

    built = [m.cls for m in Tiny.to_asgi().user_middleware]
    assert RequestTimeout in built, f"BentoML did not build the replacement: {built}"
    assert UPSTREAM not in built, f"BentoML's own timeout is still built: {built}"
