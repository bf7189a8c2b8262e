"""serving.refusals: a typed error raised in a handler is answered as JSON with its status, and the two
facts about the installed BentoML that make the wrapper necessary."""
from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest
import tiny_service
from maskdata.preprocess import ImageError, ImageTooLarge
from serving.errors import ServiceBusy, as_request_error
from serving.refusals import answers_refusals


def test_bentoml_hides_a_5xx_reason_and_lists_a_4xx_one():
    """Why handlers do not let errors reach BentoML: when this fails, BentoML answers raised errors as
    they are and serving/refusals.py can shrink."""
    busy, refused = tiny_service.facts()["busy"], tiny_service.facts()["refused"]
    assert busy["status"] == 503 and "queue is full" not in busy["body"], busy
    assert "retry-after" not in busy["headers"], busy["headers"]
    assert refused["status"] == 400 and isinstance(json.loads(refused["body"]), list), refused


def test_bentoml_gives_a_returned_response_the_contexts_status():
    """Why the wrapper sets the status on ``ctx`` too: a ctx-taking handler's own 400 leaves as 200."""
    r = tiny_service.facts()["answered_400"]
    assert r["status"] == 200 and json.loads(r["body"])["status"] == 400, r


class _Routes:
    @answers_refusals
    async def route(self, error: Exception | None, ctx=None):
        if error is not None:
            raise error
        return {"ok": True}


@pytest.mark.parametrize("error, status, words", [
    (ServiceBusy("queue full"), 503, "queue full"),
    (ImageError("not a recognised image"), 400, "not a recognised image"),
    (ImageTooLarge("40000000 pixels"), 413, "40000000 pixels"),
])
def test_a_raised_refusal_is_answered_with_its_status_on_the_response_and_the_context(error, status, words):
    ctx = SimpleNamespace(response=SimpleNamespace(status_code=200))   # what the wrapper writes of bentoml.Context
    r = asyncio.run(_Routes().route(error, ctx=ctx))
    assert r.status_code == status and ctx.response.status_code == status, (r.status_code, ctx.response.status_code)
    assert json.loads(r.body) == {"error": words, "status": status}, r.body
    if status == 503:
        assert r.headers["retry-after"] == "1", r.headers


def test_other_errors_and_answers_pass_through():
    assert asyncio.run(_Routes().route(None)) == {"ok": True}
    with pytest.raises(KeyError):    # a bug stays a bug: BentoML logs it and answers 500
        asyncio.run(_Routes().route(KeyError("x")))


def test_a_library_refusal_becomes_the_typed_error_of_its_status():
    assert as_request_error(ValueError("info: no ImageID column")).status == 400
    assert as_request_error(ImageTooLarge("big")).status == 413
    assert type(as_request_error(ImageTooLarge("big"))).__name__ == "PayloadTooLarge"
    busy = ServiceBusy("x")
    assert as_request_error(busy) is busy
