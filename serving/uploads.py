"""Uploaded photos → model input, under the service's limits, with a 4xx reason for every bad file.

The routes take their photos as ``Path`` (BentoML saves each multipart file) and decode them here,
not through a ``PIL.Image``-typed parameter: BentoML 1.4 (seen with 1.4.40) decodes such a parameter
itself and answers a file that is not an image with HTTP 500, where a client must learn what was
wrong with its upload (tests/test_uploads.py pins that behaviour of the installed BentoML). Size,
emptiness, count and pixel limits are checked here too, with the field named in each reason
(``image``, ``images[2]``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import anyio
import numpy as np

from maskdata.preprocess import ImageError
from serving.errors import BadRequest, PayloadTooLarge, status_of


def decode_upload(load: Callable[[bytes], np.ndarray], field: str, path: Path, max_bytes: int) -> np.ndarray:
    """One uploaded file → ``load(bytes)`` (the predictor's decoder), or a typed error naming ``field``:
    413 over ``max_bytes`` or the pixel limit, 400 empty or not an image."""
    size = path.stat().st_size
    if size > max_bytes:
        raise PayloadTooLarge(f"{field}: file of {size} bytes is over the limit of {max_bytes} bytes")
    if size == 0:
        raise BadRequest(f"{field}: empty upload (0 bytes)")
    try:
        return load(path.read_bytes())
    except ImageError as e:  # ImageTooLarge (pixel limits) is 413, any other ImageError 400
        error = PayloadTooLarge if status_of(e) == 413 else BadRequest
        raise error(f"{field}: {e}") from None


async def decode_uploads(load: Callable[[bytes], np.ndarray], field: str, paths: list[Path], *,
                         max_bytes: int, max_files: int) -> list[np.ndarray]:
    """A request's files in ``field`` → model inputs in order, each decoded in a worker thread;
    400 for none, 413 for more than ``max_files``."""
    if not paths:
        raise BadRequest(f"no files in field {field!r}")
    if len(paths) > max_files:
        raise PayloadTooLarge(f"{len(paths)} files in one request; the limit is {max_files}")
    arrays = []
    for i, p in enumerate(paths):
        label = field if len(paths) == 1 and field == "image" else f"{field}[{i}]"
        arrays.append(await anyio.to_thread.run_sync(decode_upload, load, label, p, max_bytes))
    return arrays
