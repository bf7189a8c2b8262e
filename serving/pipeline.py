"""Throughput pipeline of the batch job: parallel decode+resize overlapped with batched inference.

Batches are decoded by a pool of workers (threads by default: PIL releases the GIL while it
decodes and resizes, and JPEG draft mode makes decoding cheap enough that shipping arrays between
processes costs more than it saves on 2 cores — see docs/submit.md for the measurement). At most
``prefetch`` decoded batches wait in flight, so memory stays bounded however large the job is,
and the caller runs inference on batch k while the workers decode batches k+1..k+prefetch.
Batches come back in submission order, so output order is the input order. Usage::

    for batch in decoded_batches(paths_per_batch, preprocess, workers=2):
        probs = predictor.infer(batch.images)         # batch.ok: which rows decoded
"""
from __future__ import annotations

import collections
import logging
import signal
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

from maskdata.preprocess import ImageError, Preprocess

log = logging.getLogger(__name__)

def _ignore_sigint() -> None:
    """Ctrl-C reaches the whole process group; only the parent should act on it (and stop the pool)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


EXECUTORS: dict[str, Callable[[int], Executor]] = {
    "thread": lambda n: ThreadPoolExecutor(n, thread_name_prefix="decode"),
    "process": lambda n: ProcessPoolExecutor(n, initializer=_ignore_sigint),
}


def create_executor(kind: str, workers: int) -> Executor:
    if kind not in EXECUTORS:
        raise ValueError(f"unknown worker kind {kind!r}; expected one of {sorted(EXECUTORS)}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    return EXECUTORS[kind](workers)


@dataclass
class DecodedBatch:
    index: int                 # position of the batch in the job
    images: np.ndarray         # (n_ok, H, W, 3) uint8: the rows that decoded, in order
    ok: np.ndarray             # (n,) bool: which of the batch's paths decoded
    errors: dict[int, str]     # row-in-batch -> reason, for the rows that did not


def decode_batch(preprocess: Preprocess, max_pixels: int, paths: Sequence[str]) -> tuple[np.ndarray, np.ndarray, dict]:
    """Decode and resize one batch; a bad image becomes an error entry, not an exception.

    Module-level (not a closure) so process workers can pickle it.
    """
    h, w = preprocess.height, preprocess.width
    out = np.empty((len(paths), h, w, 3), dtype=np.uint8)
    ok = np.zeros(len(paths), dtype=bool)
    errors: dict[int, str] = {}
    n = 0
    for i, path in enumerate(paths):
        try:
            out[n] = preprocess(path, max_pixels=max_pixels)
        except (ImageError, OSError) as e:  # OSError: the file vanished or is unreadable since the check
            errors[i] = str(e)
            continue
        ok[i] = True
        n += 1
    return out[:n], ok, errors


def decoded_batches(batches: Sequence[Sequence[str]], preprocess: Preprocess, *, max_pixels: int,
                    workers: int = 2, kind: str = "thread", prefetch: int | None = None,
                    indices: Sequence[int] | None = None) -> Iterator[DecodedBatch]:
    """Yield each batch of ``batches`` decoded, in order, decoding up to ``prefetch`` ahead.

    ``indices`` labels the batches (defaults to 0..len-1; resume passes the batches still to do).
    Leaving the loop early (exception, Ctrl-C) cancels the batches not yet started.
    """
    indices = list(range(len(batches))) if indices is None else list(indices)
    prefetch = max(prefetch or 2 * workers, 1)
    executor = create_executor(kind, workers)
    pending: collections.deque[tuple[int, Future]] = collections.deque()
    todo = iter(zip(indices, batches))
    try:
        while True:
            while len(pending) < prefetch:
                item = next(todo, None)
                if item is None:
                    break
                pending.append((item[0], executor.submit(decode_batch, preprocess, max_pixels, list(item[1]))))
            if not pending:
                return
            index, future = pending.popleft()
            images, ok, errors = future.result()
            yield DecodedBatch(index, images, ok, errors)
    finally:
        for _, future in pending:
            future.cancel()
        executor.shutdown(wait=True, cancel_futures=True)
