"""A handler's refusal, raised as a typed error, becomes its JSON answer here and only here.

The service's handlers raise :class:`serving.errors.RequestError` subclasses (or an
:class:`maskdata.preprocess.ImageError` from decoding); :func:`answers_refusals`, which wraps every
handler, turns them into ``{"error", "status"}`` with the status the class names. Why not let them
reach BentoML: BentoML 1.4 (seen with 1.4.40) answers an exception that leaves a handler with HTTP
500, or for its own ``BentoMLException`` with the reason wrapped in a JSON list (4xx) or replaced by
"An unexpected error has occurred" (5xx), and without our headers (``Retry-After``,
``WWW-Authenticate``). And a handler that takes ``ctx: bentoml.Context`` gets the context's status
applied to a Response it returns (200 unless set), so the status goes on the context as well.
tests/test_refusals.py pins both facts of the installed BentoML; when they stop holding, this
module can shrink to a plain ``raise``.
"""
from __future__ import annotations

import functools
from typing import Awaitable, Callable

from maskdata.preprocess import ImageError
from serving.errors import RequestError, as_request_error


def answers_refusals(handler: Callable[..., Awaitable]) -> Callable[..., Awaitable]:
    """Wrap an ``async`` handler (under ``@bentoml.api``): a :class:`RequestError` or ImageError it
    raises is answered as JSON with its status. The signature BentoML reads is the handler's own."""
    @functools.wraps(handler)
    async def handle(self, *args, **kwargs):
        try:
            return await handler(self, *args, **kwargs)
        except (RequestError, ImageError) as e:
            response = as_request_error(e).response()
            ctx = kwargs.get("ctx")
            if ctx is not None:
                ctx.response.status_code = response.status_code
            return response
    return handle
