"""Adaptive batching for ``/predict`` and ``/predict_batch``: concurrent requests' images share one
model call.

Why it exists — BentoML 1.4 (seen with 1.4.40) batches only a ``batchable=True`` API called through
its client; our upload routes decode files themselves (a non-image given to a PIL-typed parameter is
an HTTP 500 in BentoML), so they must queue decoded arrays. The obvious ``await
self.to_async.infer(...)`` self-call goes through an in-process aiohttp connector that dropped
requests ("Server disconnected", "Cannot write to closing transport") at 16 concurrent clients. So
:class:`Batcher` holds BentoML's own adaptive dispatcher (``CorkDispatcher``), which has no public
API — it is the internal that BentoML builds for batchable APIs, pinned by
``tests/test_service.py::test_batcher_forms_batches``; the REST batching issue replaces it with the
project's own batcher behind the same interface.

    batcher = Batcher(predictor.infer, settings)        # inside the event loop that will use it
    rows = await batcher.submit([img_a, img_b])          # one request's images -> their probabilities

The batch sizes are the ``mask_predict_batch_size`` histogram on ``/metrics``.
"""
from __future__ import annotations

import typing as t
from typing import Callable

import anyio
import bentoml
import numpy as np
from bentoml._internal.marshal.dispatcher import CorkDispatcher  # no public equivalent; see above

from serving.guard import ServiceBusy

BATCH_SIZE = bentoml.metrics.Histogram(
    name="mask_predict_batch_size", documentation="images per model call from /predict and /predict_batch",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128))


class Batcher:
    """Queues each request's images and runs ``run_batch`` (an (N, H, W, 3) uint8 batch → (N, 18)
    probabilities, called in a worker thread) on what concurrent requests queued together, at most
    ``settings.max_batch_size`` images within ``settings.max_latency_ms``. The dispatcher binds the
    running event loop: create one per loop."""

    def __init__(self, run_batch: Callable[[np.ndarray], np.ndarray], settings):
        self.run_batch, self.settings = run_batch, settings
        dispatcher = CorkDispatcher(max_latency_in_ms=settings.max_latency_ms,
                                    max_batch_size=settings.max_batch_size,
                                    fallback=self._overloaded, get_batch_size=len)
        self._dispatch = dispatcher(self._run_jobs)

    async def submit(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """One request's images → their probability rows, in order (batched with other requests)."""
        return await self._dispatch(images)

    async def _run_jobs(self, jobs: t.Sequence[list[np.ndarray]]) -> list[list[np.ndarray]]:
        flat = [a for job in jobs for a in job]
        BATCH_SIZE.observe(len(flat))
        probs = await anyio.to_thread.run_sync(self.run_batch, np.stack(flat))
        out, start = [], 0
        for job in jobs:
            out.append(list(probs[start:start + len(job)]))
            start += len(job)
        return out

    def _overloaded(self):
        # the dispatcher sheds what it cannot serve within MASK_MAX_LATENCY_MS
        raise ServiceBusy(f"server busy: the request could not be served within "
                          f"{self.settings.max_latency_ms} ms (MASK_MAX_LATENCY_MS); retry")
