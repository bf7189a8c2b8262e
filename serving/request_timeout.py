"""The request timeout in front of the routes, without the memory BentoML's own keeps per request.

BentoML 1.4 (seen with 1.4.40) puts a ``TimeoutMiddleware`` in front of every service's routes
(``traffic.timeout`` of ``@bentoml.service``; it cannot be turned off, the setting must be > 0). It
arms a ``loop.call_later(timeout, ...)`` timer per request and never cancels it, so every request's
timer stays in the event loop's schedule for the whole timeout after its answer has gone. The timer
holds the future it would resolve and the ``contextvars`` context it was armed in, and that context
holds the request's OpenTelemetry span (its attribute and event lists) and BentoML's trace context:
about 3.7 KB of Python objects a request (tracemalloc), ~5-6 KB of worker RSS. With the service's
600 s timeout, a worker at 100 requests a second keeps its last 60,000 requests, ~350 MB: RSS grows
for the first ten minutes of sustained load before the oldest timers start to fire.

:class:`RequestTimeout` does the same job — a request that has not started its answer within the
timeout is cancelled and answered 504 (JSON); once its answer has started it runs to the end — and
drops its deadline the moment the answer starts or the request ends. :func:`install` makes BentoML
build it where it would build its own (see there for why that needs an internal name).
"""
from __future__ import annotations

import asyncio
import logging

from starlette.responses import JSONResponse

log = logging.getLogger(__name__)
# BentoML's own class, once install() has replaced it (the tests run both side by side)
replaced: type | None = None


class RequestTimeout:
    """ASGI middleware: ``timeout`` seconds for a request to start its answer, else 504."""

    def __init__(self, app, timeout: float) -> None:
        self.app, self.timeout = app, timeout

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        started = False

        async def send_started(message) -> None:
            nonlocal started
            if not started:
                started = True
                deadline.reschedule(None)  # the answer has started: no deadline from here on
            await send(message)

        try:
            # asyncio.timeout cancels its timer on the way out, whatever happened inside
            async with asyncio.timeout(self.timeout) as deadline:
                await self.app(scope, receive, send_started)
        except TimeoutError:
            if started:  # cannot happen (the deadline is dropped when the answer starts); never send twice
                raise
            await self._timed_out(scope, receive, send)

    async def _timed_out(self, scope, receive, send) -> None:
        message = f"Not able to process the request in {self.timeout} seconds"
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1011, "reason": message})
            return
        await JSONResponse({"error": message, "status": 504}, status_code=504)(scope, receive, send)


def install() -> bool:
    """Have BentoML build :class:`RequestTimeout` in place of its ``TimeoutMiddleware``.

    BentoML offers no public way to replace or drop that middleware (``add_asgi_middleware`` only adds
    behind it), so this rebinds the name its app factory imports when it builds a service's middleware
    stack (``bentoml._internal.server.http.traffic.TimeoutMiddleware``, read at app build time, i.e.
    after the service module is imported). tests/test_request_timeout.py pins both that the installed
    BentoML still builds what this name holds and that its own class still keeps its timer; when either
    fails, this workaround is to be revisited. Returns whether the name was found and rebound."""
    try:
        from bentoml._internal.server.http import traffic
    except ImportError:
        log.warning("BentoML's traffic module is gone; its own request timeout is in use")
        return False
    if not hasattr(traffic, "TimeoutMiddleware"):
        log.warning("BentoML has no TimeoutMiddleware any more; nothing to replace")
        return False
    global replaced
    if traffic.TimeoutMiddleware is not RequestTimeout:
        replaced = traffic.TimeoutMiddleware
    traffic.TimeoutMiddleware = RequestTimeout
    return True
