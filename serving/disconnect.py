"""A request whose client has gone costs no inference.

BentoML 1.4 (seen with 1.4.40) runs a handler to its end after its client disconnected, and the
ASGI server does not cancel it either: a burst of requests whose clients time out would still queue
every image and run the model for nobody. :func:`unless_disconnected` awaits the handler's work
beside the request's ``http.disconnect`` message and cancels the work (a batcher's submit leaves the
queue when cancelled) when the client goes first. tests/test_disconnect.py pins that the installed
BentoML still lets a handler finish for a gone client; tests/test_batching_serve.py measures the
whole effect on a real server.
"""
from __future__ import annotations

import asyncio
from typing import Awaitable, TypeVar

from serving.errors import ClientClosed

T = TypeVar("T")


async def until_disconnected(request) -> None:
    """Returns when the ASGI server reports that the client disconnected. Only to be awaited after
    the whole body has been read (BentoML has parsed it before the handler runs), so nothing else
    reads ``receive`` meanwhile."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(work: Awaitable[T], request) -> T:
    """``await work``, or cancel it and raise :class:`ClientClosed` (499) if the client of
    ``request`` disconnects first. ``request`` None (the class called outside HTTP): just await it."""
    job = asyncio.ensure_future(work)
    if request is None:
        return await job
    gone = asyncio.ensure_future(until_disconnected(request))
    try:
        await asyncio.wait([job, gone], return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not job.done():
        job.cancel()
        raise ClientClosed("client closed the request")
    return job.result()
