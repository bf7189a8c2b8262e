"""A dynamic batcher with fixed rules (the Triton / TF Serving semantics), pure asyncio.

A batch is released when it holds ``MASK_MAX_BATCH_SIZE`` images or when its oldest request has
waited ``MASK_BATCH_WAIT_MS``, whichever comes first; at most ``MASK_MAX_QUEUE`` images wait
(beyond: :class:`QueueFull`, which the service answers with 503 + ``Retry-After``). One model call
runs at a time (in a thread, so the event loop keeps parsing and decoding the next requests), and
the next batch fills while it runs. A request whose future was cancelled (its client went away) is
dropped before it reaches the model. Nothing is learned from past latencies, so a burst leaves no
trace: once it has drained, a lone request waits at most one window.

Why not BentoML's own ``batchable=True`` APIs: their batching fits batch latency online, and a
burst's queueing time poisoned that fit and kept later requests waiting hundreds of milliseconds.

    batcher = Batcher(predictor.infer, settings)      # one per event loop
    probs = await batcher.submit([image_a, image_b])  # -> [row_a, row_b], in order
"""
from __future__ import annotations

import asyncio
import collections
import time
import typing as t
from dataclasses import dataclass, field

import bentoml
import numpy as np

QUEUE_TIME = bentoml.metrics.Histogram(
    name="mask_batch_queue_seconds", documentation="time a request waited in the batching queue before its model call",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0))
BATCH_SIZE = bentoml.metrics.Histogram(
    name="mask_predict_batch_size", documentation="images per model call from the batcher",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128))
MODEL_CALLS = bentoml.metrics.Counter(name="mask_model_calls", documentation="model calls made by the batcher")
REJECTED = bentoml.metrics.Counter(
    name="mask_batch_rejected", documentation="requests refused because the batching queue was full (HTTP 503)")
DROPPED = bentoml.metrics.Counter(
    name="mask_batch_dropped", documentation="queued requests dropped before inference (client gone)")


class QueueFull(Exception):
    """The queue holds ``MASK_MAX_QUEUE`` images already; the caller should retry later."""


class _Settings(t.Protocol):
    max_batch_size: int
    batch_wait_ms: int
    max_queue: int


@dataclass
class _Job:
    images: list[np.ndarray]
    future: asyncio.Future
    enqueued: float = field(default_factory=time.monotonic)


class Batcher:
    """Queues requests' images and runs them through ``run_batch`` ((N, ...) array → (N, ...) array)
    in batches. Bound to the event loop it is first used on (the service makes one per loop)."""

    def __init__(self, run_batch: t.Callable[[np.ndarray], np.ndarray], settings: _Settings):
        if settings.max_batch_size < 1 or settings.batch_wait_ms < 0 or settings.max_queue < 1:
            raise ValueError("need max_batch_size >= 1, batch_wait_ms >= 0 and max_queue >= 1")
        self.run_batch = run_batch
        self.max_batch, self.max_queue = settings.max_batch_size, settings.max_queue
        self.wait_s = settings.batch_wait_ms / 1000
        self._jobs: collections.deque[_Job] = collections.deque()
        self._queued = 0  # images in self._jobs
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None

    @property
    def queued(self) -> int:
        return self._queued

    async def submit(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """One request's images → their rows of ``run_batch``'s output, in order. Raises
        :class:`QueueFull` when they do not fit in the queue (a request larger than the whole
        queue is admitted only into an empty one), and what ``run_batch`` raised for its batch."""
        if not images:
            return []
        if self._queued and self._queued + len(images) > self.max_queue:
            REJECTED.inc()
            raise QueueFull(f"server busy: {self._queued} images queued, the limit is {self.max_queue} "
                            "(MASK_MAX_QUEUE); retry")
        self._ensure_worker()
        loop = asyncio.get_running_loop()
        # a request larger than a batch is split; its chunks queue one after another
        jobs = [_Job(images[i:i + self.max_batch], loop.create_future())
                for i in range(0, len(images), self.max_batch)]
        self._jobs.extend(jobs)
        self._queued += len(images)
        self._arrived.set()
        try:
            rows = await asyncio.gather(*(j.future for j in jobs))
        except BaseException:
            for j in jobs:
                j.future.cancel()
            self._forget(jobs)
            raise
        return [r for chunk in rows for r in chunk]

    def _forget(self, jobs: list[_Job]) -> None:
        """Take a cancelled request's still-queued chunks out, so they neither run nor count."""
        for j in jobs:
            try:
                self._jobs.remove(j)
            except ValueError:
                continue  # already taken into a batch (then its result is simply not used)
            self._queued -= len(j.images)
            DROPPED.inc()

    def _ensure_worker(self) -> None:
        if self._worker is None or self._worker.done():
            if self._arrived is None:
                self._arrived = asyncio.Event()
            self._worker = asyncio.get_running_loop().create_task(self._run(), name="mask-batcher")

    async def _run(self) -> None:
        while True:
            while not self._jobs:
                self._arrived.clear()
                await self._arrived.wait()
            await self._wait_for_batch()
            batch = self._take()
            if batch:
                await self._call(batch)

    async def _wait_for_batch(self) -> None:
        """Until the queue holds a full batch or its oldest request has waited the window."""
        while self._jobs and self._queued < self.max_batch:
            left = self._jobs[0].enqueued + self.wait_s - time.monotonic()
            if left <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except asyncio.TimeoutError:
                return

    def _take(self) -> list[_Job]:
        batch, size = [], 0
        while self._jobs and size + len(self._jobs[0].images) <= self.max_batch:
            job = self._jobs.popleft()
            self._queued -= len(job.images)
            if job.future.done():  # cancelled after all; _forget could not see it
                continue
            batch.append(job)
            size += len(job.images)
        return batch

    async def _call(self, batch: list[_Job]) -> None:
        now = time.monotonic()
        for job in batch:
            QUEUE_TIME.observe(now - job.enqueued)
        BATCH_SIZE.observe(sum(len(job.images) for job in batch))
        MODEL_CALLS.inc()
        try:
            out = await asyncio.to_thread(self.run_batch, np.stack([a for job in batch for a in job.images]))
        except Exception as e:  # the batch's requests get the error; the worker lives on
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(e)
            return
        start = 0
        for job in batch:
            if not job.future.done():
                job.future.set_result(list(out[start:start + len(job.images)]))
            start += len(job.images)
