"""The dynamic batcher alone (serving/batching.py): no server, a fake model that records its calls.

Windows are long where a test must show that something did NOT wait for them (a batch released at
size, under a 10 s window), and short where it must show that something did; no test asserts on
how long anything took."""
from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass

import numpy as np
import pytest

from serving.batching import Batcher, QueueFull


@dataclass(frozen=True)
class Cfg:
    max_batch_size: int = 4
    batch_wait_ms: int = 10_000
    max_queue: int = 64


class FakeModel:
    """(N, 1) float array of image ids → (N, 2) rows [id, 2*id]; records each call's ids. ``gate``
    (a threading.Event) holds a call until the test lets it go; ``fail_on`` ids raise."""

    def __init__(self, gate: threading.Event | None = None, fail_on: frozenset = frozenset()):
        self.calls: list[list[int]] = []
        self.gate, self.fail_on = gate, fail_on
        self.started = threading.Event()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        ids = [int(x) for x in batch[:, 0]]
        self.calls.append(ids)
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(10), "test never released the model"
        if self.fail_on & set(ids):
            raise RuntimeError(f"model failed on {sorted(self.fail_on & set(ids))}")
        return np.stack([batch[:, 0], 2 * batch[:, 0]], axis=1)


def imgs(*ids: int) -> list[np.ndarray]:
    return [np.array([i], dtype=np.float32) for i in ids]


def ids_of(rows) -> list[int]:
    return [int(r[0]) for r in rows]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


async def wait_until(pred, what: str):
    for _ in range(2000):
        if pred():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


def test_batch_released_at_size_without_waiting_for_the_window():
    model = FakeModel()

    async def main():
        b = Batcher(model, Cfg(max_batch_size=4, batch_wait_ms=10_000))
        # 10 s window: these can only finish inside the 20 s test bound if size releases them
        return await asyncio.gather(*(b.submit(imgs(i)) for i in range(8)))

    out = run(main())
    assert [ids_of(r) for r in out] == [[i] for i in range(8)], out
    assert sorted(len(c) for c in model.calls) == [4, 4], f"two full batches expected: {model.calls}"


def test_lone_request_released_by_the_window():
    model = FakeModel()

    async def main():
        b = Batcher(model, Cfg(max_batch_size=32, batch_wait_ms=20))
        first = await b.submit(imgs(7))
        second = await asyncio.gather(b.submit(imgs(1)), b.submit(imgs(2, 3)))
        return first, second

    first, second = run(main())
    assert ids_of(first) == [7] and [r[1] for r in first] == [14.0], first
    assert [ids_of(r) for r in second] == [[1], [2, 3]], second
    assert model.calls[0] == [7], f"a lone request is a batch of one: {model.calls}"
    assert sorted(model.calls[1]) == [1, 2, 3], f"requests inside one window share a call: {model.calls}"


def test_order_kept_within_and_across_requests_and_large_requests_split():
    model = FakeModel()

    async def main():
        b = Batcher(model, Cfg(max_batch_size=4, batch_wait_ms=5))
        return await asyncio.gather(b.submit(imgs(*range(10))), b.submit(imgs(100, 101)), b.submit(imgs(200)))

    big, two, one = run(main())
    assert ids_of(big) == list(range(10)) and ids_of(two) == [100, 101] and ids_of(one) == [200]
    assert max(len(c) for c in model.calls) <= 4, f"no model call above max_batch_size: {model.calls}"
    assert sum(len(c) for c in model.calls) == 13, f"every image exactly once: {model.calls}"


def test_queue_bound_rejects_the_excess_and_recovers():
    gate = threading.Event()
    model = FakeModel(gate)

    async def main():
        b = Batcher(model, Cfg(max_batch_size=2, batch_wait_ms=0, max_queue=3))
        running = asyncio.ensure_future(b.submit(imgs(0, 1)))  # taken by the model, held by the gate
        await wait_until(model.started.is_set, "first model call")
        queued = [asyncio.ensure_future(b.submit(imgs(i))) for i in (2, 3, 4)]
        await asyncio.sleep(0)
        assert b.queued == 3, f"three images wait: {b.queued}"
        with pytest.raises(QueueFull, match="MASK_MAX_QUEUE"):
            await b.submit(imgs(5))
        gate.set()
        done = await asyncio.gather(running, *queued)
        after = await b.submit(imgs(6))  # room again once drained
        return done, after

    done, after = run(main())
    assert [ids_of(r) for r in done] == [[0, 1], [2], [3], [4]], done
    assert ids_of(after) == [6]
    assert not any(5 in c for c in model.calls), f"a rejected image must not reach the model: {model.calls}"


def test_request_larger_than_the_queue_is_admitted_only_when_empty():
    model = FakeModel()

    async def main():
        b = Batcher(model, Cfg(max_batch_size=2, batch_wait_ms=0, max_queue=2))
        return await b.submit(imgs(1, 2, 3, 4, 5))

    assert ids_of(run(main())) == [1, 2, 3, 4, 5]


def test_cancelled_requests_are_dropped_before_inference():
    gate = threading.Event()
    model = FakeModel(gate)

    async def main():
        b = Batcher(model, Cfg(max_batch_size=2, batch_wait_ms=0, max_queue=16))
        running = asyncio.ensure_future(b.submit(imgs(0)))
        await wait_until(model.started.is_set, "first model call")
        gone = asyncio.ensure_future(b.submit(imgs(1, 2, 3)))  # two chunks, both queued
        kept = asyncio.ensure_future(b.submit(imgs(4)))
        await asyncio.sleep(0)
        gone.cancel()  # what the service does when the client disconnects
        await wait_until(lambda: b.queued == 1, f"the cancelled request's images to leave the queue ({b.queued})")
        gate.set()
        return await asyncio.gather(running, kept), gone.cancelled()

    (first, kept), cancelled = run(main())
    assert cancelled and ids_of(first) == [0] and ids_of(kept) == [4]
    seen = {i for c in model.calls for i in c}
    assert seen.isdisjoint({1, 2, 3}), f"cancelled images reached the model: {model.calls}"


def test_errors_go_to_the_requests_of_the_failing_batch_only():
    model = FakeModel(fail_on=frozenset({3}))

    async def main():
        b = Batcher(model, Cfg(max_batch_size=2, batch_wait_ms=10_000))
        results = await asyncio.gather(b.submit(imgs(1)), b.submit(imgs(2)), b.submit(imgs(3)),
                                       b.submit(imgs(4)), return_exceptions=True)
        return results, await b.submit(imgs(5, 6))  # the worker survives a failed call

    (r1, r2, r3, r4), after = run(main())
    assert ids_of(r1) == [1] and ids_of(r2) == [2], (r1, r2)
    for r in (r3, r4):
        assert isinstance(r, RuntimeError) and "[3]" in str(r), f"batch-mates of 3 share its error: {r!r}"
    assert ids_of(after) == [5, 6]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="max_queue"):
        Batcher(FakeModel(), Cfg(max_queue=0))
