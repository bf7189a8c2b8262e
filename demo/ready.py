"""The `make serve` readiness banner: wait until the server's ``/readyz`` answers, then print the
URLs and the curl command to paste. Standard library only, so it starts at once beside the server.

BentoML 1.4 serves its Swagger UI at ``/`` and the OpenAPI schema at ``/docs.json`` (``/docs`` is a
404); tests/test_printed_urls.py requests every URL printed here against a real ``bentoml serve``.
"""
from __future__ import annotations

import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def sample_image(workdir: Path) -> Path | None:
    images = sorted((workdir / "data" / "eval" / "images").glob("*"))
    return images[0] if images else None


def _shown(path: Path) -> Path:
    """``path`` relative to the working directory when it lies below it (what to paste from there)."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return path.resolve()


def banner(url: str, image: str) -> str:
    """What `make serve` prints once the server is ready."""
    return (f"\nmask-classifier is ready at {url}  (Ctrl-C stops it)\n"
            f"  API docs (Swagger UI): {url}/\n"
            f"  OpenAPI schema:        {url}/docs.json\n"
            f"  try it in a browser:   {url}/ui/\n"
            f"try:\n  curl -F image=@{image} {url}/predict\n")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_ready(url: str, workdir: Path, server_pid: int | None = None, timeout: float = 600.0) -> int:
    """Poll ``url/readyz`` (the model has loaded and warmed up), then print what to paste."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server_pid is not None and not _alive(server_pid):
            print("error: the server exited before it was ready (see its log above)", file=sys.stderr)
            return 1
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as r:
                if r.status == 200:
                    break
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1)
    else:
        print(f"error: {url}/readyz not ready after {timeout:.0f}s", file=sys.stderr)
        return 1
    sample = sample_image(workdir)
    print(banner(url, str(_shown(sample)) if sample else "photo.jpg"), flush=True)
    return 0
