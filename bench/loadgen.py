"""A small closed-loop HTTP load generator (asyncio + httpx): N clients each POST a JPEG to a URL,
wait for the answer, and POST the next, for a fixed time.

Multipart bodies are built once up front, so the client spends its CPU on HTTP, not on encoding
(it shares the machine with the server it measures). Only requests that *start* inside the
measuring window count; ones still running when it closes are awaited (bounded by ``timeout``).

    python -m bench.loadgen http://127.0.0.1:3000/predict img1.jpg img2.jpg --clients 8 --duration 5
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np


@dataclass
class LoadResult:
    clients: int
    duration_s: float                    # the measuring window
    requests: int = 0                    # started in the window and answered 200
    errors: int = 0                      # non-200 answers, timeouts and connection errors
    error_kinds: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    @property
    def req_per_s(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    def percentile(self, q: float) -> float | None:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else None

    def summary(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "latencies_ms"}
        d.update(req_per_s=self.req_per_s, p50_ms=self.percentile(50), p95_ms=self.percentile(95),
                 p99_ms=self.percentile(99), max_ms=max(self.latencies_ms) if self.latencies_ms else None)
        return d


def multipart_body(field_name: str, filename: str, data: bytes, content_type: str = "image/jpeg") -> tuple[bytes, str]:
    """(body, Content-Type header) of a one-file multipart/form-data request."""
    boundary = uuid.uuid4().hex
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field_name}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: {content_type}\r\n\r\n").encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


async def run_load(url: str, bodies: list[tuple[bytes, str]], clients: int, duration_s: float,
                   warmup_s: float = 1.0, timeout_s: float = 60.0, max_requests: int = 1_000_000) -> LoadResult:
    """``clients`` closed-loop clients for ``warmup_s`` (not counted) then ``duration_s`` (counted)."""
    if clients < 1 or duration_s <= 0 or not bodies:
        raise ValueError("need clients >= 1, duration > 0 and at least one request body")
    result = LoadResult(clients=clients, duration_s=duration_s)
    # one client object (and connection) per simulated client: a single shared httpx pool serializes
    # on its own bookkeeping and caps throughput far below the server's at high concurrency
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    start = time.perf_counter()
    window_start, window_end = start + warmup_s, start + warmup_s + duration_s
    issued = 0

    async def client(k: int, http: httpx.AsyncClient) -> None:
        nonlocal issued
        i = k
        while time.perf_counter() < window_end and issued < max_requests:
            body, ctype = bodies[i % len(bodies)]
            i += clients
            issued += 1
            t0 = time.perf_counter()
            try:
                r = await http.post(url, content=body, headers={"content-type": ctype})
                status = r.status_code
                kind = None if status == 200 else f"HTTP {status}"
            except httpx.HTTPError as e:
                kind = type(e).__name__
            t1 = time.perf_counter()
            if not window_start <= t0 < window_end:
                continue
            if kind is None:
                result.requests += 1
                result.latencies_ms.append((t1 - t0) * 1000)
            else:
                result.errors += 1
                result.error_kinds[kind] = result.error_kinds.get(kind, 0) + 1

    async def one_client(k: int) -> None:
        key = os.environ.get("MASK_API_KEY", "")   # a server started with MASK_API_KEY needs it
        headers = {"Authorization": f"Bearer {key}"} if key else None
        async with httpx.AsyncClient(limits=limits, timeout=timeout_s, headers=headers) as http:
            await client(k, http)

    await asyncio.gather(*(one_client(k) for k in range(clients)))
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.split("\n\n")[0])
    p.add_argument("url", help="e.g. http://127.0.0.1:3000/predict (loopback only)")
    p.add_argument("images", nargs="+", type=Path, help="JPEG files to post, in turn")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients (default: 8)")
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds (default: 5)")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first (default: 1)")
    p.add_argument("--field", default="image", help="multipart field name (default: image)")
    p.add_argument("--requests", type=int, default=None, metavar="N",
                   help="stop after N requests even before --duration ends (default: no limit)")
    args = p.parse_args(argv)
    try:
        host = httpx.URL(args.url).host
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"refusing to load {host!r}: this generator only targets loopback")
        bodies = [multipart_body(args.field, f.name, f.read_bytes()) for f in args.images]
        limit = {} if args.requests is None else {"max_requests": args.requests}
        result = asyncio.run(run_load(args.url, bodies, args.clients, args.duration, args.warmup, **limit))
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result.summary()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
