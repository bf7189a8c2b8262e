"""The batch job's decode pool: parallel decode+resize overlapped with batched inference.

Batches are decoded by a pool of workers (threads by default: PIL releases the GIL while it
decodes and resizes, and JPEG draft mode makes decoding cheap enough that shipping arrays between
processes costs more than it saves on 2 cores — see docs/submit.md for the measurement). At most
``prefetch`` decoded batches wait in flight, so memory stays bounded however large the job is,
and the caller runs inference on batch k while the workers decode batches k+1..k+prefetch.
Batches come back in submission order, so output order is the input order.

The workers run ``nice`` steps below the caller (``MASK_DECODE_NICE``, default 10): on few cores,
decode threads at the model's priority preempt ONNX Runtime's intra-op threads mid-operator and
every parallel op then waits for its slowest thread; niced, they take the CPU only where the model
leaves it idle, and still get all of it when the model waits for them (docs/submit.md, "Thread
budget": +2-9 % end to end on 2 cores; 10 rather than 19 because a niced worker also yields to other
jobs on a saturated machine, where 19 lost up to 34 %). Usage::

    for batch in decoded_batches(paths_per_batch, preprocess, workers=2):
        probs = predictor.infer(batch.images)         # batch.ok: which rows decoded
"""
from __future__ import annotations

import collections
import functools
import logging
import os
import signal
import sys
import threading
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

from maskdata.preprocess import ImageError, Preprocess
from serving.settings import JOB_DEFAULTS, MAX_NICE, check_nice

log = logging.getLogger(__name__)


def lower_priority(increment: int) -> None:
    """Make the calling thread ``increment`` nice steps lower in priority (at most ``MAX_NICE``).

    Linux only, on purpose: there the nice value belongs to each thread (setpriority(2), "BUGS":
    NPTL threads do not share it), so ``os.setpriority(PRIO_PROCESS, <native thread id>)`` lowers
    just this worker; on other systems the same call names a process, so it is skipped. Lowering
    needs no privilege; nothing raises it back (the workers end with their pool).
    tests/test_threads.py pins the per-thread effect.
    """
    if increment <= 0 or not sys.platform.startswith("linux"):
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(MAX_NICE, os.getpriority(os.PRIO_PROCESS, tid) + increment))
    except OSError as e:   # e.g. a seccomp sandbox without setpriority: decoding still works
        log.debug("could not lower decode worker priority: %s", e)


def _process_worker_init(nice: int) -> None:
    """Ctrl-C reaches the whole process group; only the parent should act on it (and stop the pool)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    lower_priority(nice)


EXECUTORS: dict[str, Callable[[int, int], Executor]] = {
    "thread": lambda n, nice: ThreadPoolExecutor(n, thread_name_prefix="decode",
                                                 initializer=functools.partial(lower_priority, nice)),
    "process": lambda n, nice: ProcessPoolExecutor(n, initializer=functools.partial(_process_worker_init, nice)),
}


def create_executor(kind: str, workers: int, nice: int = 0) -> Executor:
    if kind not in EXECUTORS:
        raise ValueError(f"unknown worker kind {kind!r}; expected one of {sorted(EXECUTORS)}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    check_nice(nice, "decode nice")
    return EXECUTORS[kind](workers, nice)


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
                    workers: int | None = None, kind: str = JOB_DEFAULTS.worker_kind, prefetch: int | None = None,
                    indices: Sequence[int] | None = None, nice: int = 0) -> Iterator[DecodedBatch]:
    """Yield each batch of ``batches`` decoded, in order, decoding up to ``prefetch`` ahead.

    ``indices`` labels the batches (defaults to 0..len-1; resume passes the batches still to do);
    ``nice`` lowers the workers' priority by that many steps (see the module docstring).
    Leaving the loop early (exception, Ctrl-C) cancels the batches not yet started.
    """
    indices = list(range(len(batches))) if indices is None else list(indices)
    workers = JOB_DEFAULTS.workers() if workers is None else workers
    prefetch = max(prefetch or 2 * workers, 1)
    executor = create_executor(kind, workers, nice)
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
