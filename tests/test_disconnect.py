"""serving.disconnect: work for a client that has gone is cancelled, and the BentoML behaviour that
makes it necessary."""
from __future__ import annotations

import asyncio

import pytest
import tiny_service
from serving.disconnect import unless_disconnected
from serving.errors import ClientClosed


def test_bentoml_runs_a_handler_to_its_end_for_a_gone_client():
    """Why serving/disconnect.py exists: when this fails, BentoML cancels such handlers itself."""
    gone = tiny_service.facts()["gone_client"]
    assert gone == {"finished": ["slow"], "status": 200}, f"the handler was cancelled when its client left: {gone}"


class _Request:
    """What unless_disconnected reads of a Starlette request: ``receive``."""

    def __init__(self, gone_after_s: float):
        self.gone_after_s = gone_after_s

    async def receive(self):
        await asyncio.sleep(self.gone_after_s)
        return {"type": "http.disconnect"}


def test_the_work_is_cancelled_when_the_client_goes_first():
    cancelled = []

    async def work():
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def main():
        with pytest.raises(ClientClosed):
            await unless_disconnected(work(), _Request(0.01))
        await asyncio.sleep(0)   # let the cancellation reach the work
    asyncio.run(main())
    assert cancelled == [True], "a gone client's work must be cancelled (its images leave the queue)"


def test_the_answer_comes_back_when_the_client_stays():
    async def work():
        await asyncio.sleep(0.01)
        return 42
    assert asyncio.run(unless_disconnected(work(), _Request(5))) == 42
    assert asyncio.run(unless_disconnected(work(), None)) == 42, "no request (called outside HTTP): just the work"
