"""Open-loop load at thousands of requests per second: several processes, each a bare
HTTP/1.1 client on asyncio (uvloop where installed) over kept-alive connections.

httpx costs the client about a millisecond of CPU per streamed request; at the rates a
router's ceiling needs, that load generator would be the bottleneck and its own queueing
would read as router latency. Here a request is one prebuilt byte string and its reply
is read whole (chunked or sized), checked to be a 200 that ends in ``data: [DONE]`` with
``completion_tokens`` as asked, and timed send → last byte. Each arrival is due at a
Poisson-drawn time; how late the generator sent it (``lag_s``) is kept, so a saturated
generator shows itself instead of being read as a slow server.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from urllib.parse import urlsplit

from pdserve.lifetime import die_with
from pdserve.tools.bench.workloads import words

REQUEST_TIMEOUT_S = 30.0
_TOKENS = re.compile(rb'"completion_tokens":\s*(\d+)')


@dataclass(frozen=True)
class Point:
    """One sweep point for one generator process."""

    urls: tuple[str, ...]  # base URLs, used round-robin (several: client-side balancing)
    model: str
    rate: float  # this process's share, req/s
    duration_s: float
    seed: int
    prompt_words: tuple[int, int] = (48, 64)  # text, as `bench compare overhead` sends: the router tokenizes
    output_tokens: int = 8
    warm_connections: int = 8  # per URL, opened before the clock starts


@dataclass(frozen=True)
class Sample:
    e2e_s: float  # send → last byte of the reply
    lag_s: float  # how late it was sent against its Poisson arrival time
    error: str  # "" = a complete 200 with the tokens asked for


def run(points: Sequence[Point], pool: ProcessPoolExecutor) -> list[Sample]:
    """Every point at once, one per pool process; their samples together."""
    return [s for part in pool.map(_run_point, points) for s in part]


def pool(processes: int) -> ProcessPoolExecutor:
    """Generator processes (spawned; they inherit this process's CPU affinity), which exit
    once this process is gone, however it ended (a pool's workers otherwise outlive it)."""
    return ProcessPoolExecutor(
        processes, mp_context=get_context("spawn"), initializer=die_with, initargs=(os.getpid(),)
    )


def _run_point(point: Point) -> list[Sample]:
    try:
        import uvloop

        return uvloop.run(_drive(point))
    except ImportError:
        return asyncio.run(_drive(point))


class _Target:
    """One server: its request bytes' head and its idle connections, taken oldest first so that
    each is used often (an idle one past the server's keep-alive would be closed under us)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.head = f"POST /v1/completions HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n".encode()
        self.idle: deque[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = deque()

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return self.idle.popleft() if self.idle else await asyncio.open_connection(self.host, self.port)

    def request(self, body: bytes) -> bytes:
        return self.head + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body


async def _drive(point: Point) -> list[Sample]:
    rng = random.Random(point.seed)
    targets = [_Target(u) for u in point.urls]
    for target in targets:
        for _ in range(point.warm_connections):
            target.idle.append(await asyncio.open_connection(target.host, target.port))
    arrivals, t = [], 0.0
    while point.rate > 0:
        t += rng.expovariate(point.rate)
        if t >= point.duration_s:
            break
        arrivals.append(t)
    bodies = [_body(point, rng, i) for i in range(len(arrivals))]
    tasks: list[asyncio.Task[Sample]] = []
    start = time.perf_counter()
    for i, (due, body) in enumerate(zip(arrivals, bodies, strict=True)):
        wait = start + due - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        lag = time.perf_counter() - start - due
        tasks.append(asyncio.create_task(_one(targets[i % len(targets)], body, point.output_tokens, lag)))
    samples = list(await asyncio.gather(*tasks))
    for target in targets:
        for _, writer in target.idle:
            writer.close()
    return samples


def _body(point: Point, rng: random.Random, i: int) -> bytes:
    body = {
        "model": point.model,
        "prompt": f"Request {point.seed:x}-{i}: " + words(rng, rng.randint(*point.prompt_words)),
        "max_tokens": point.output_tokens,
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    return json.dumps(body, separators=(",", ":")).encode()


async def _one(target: _Target, body: bytes, tokens: int, lag: float) -> Sample:
    start = time.perf_counter()
    conn = None
    try:
        conn = await target.connect()
        reply, keep = await asyncio.wait_for(_exchange(conn, target.request(body)), REQUEST_TIMEOUT_S)
        elapsed = time.perf_counter() - start
        if keep:
            target.idle.append(conn)
        else:
            conn[1].close()
        conn = None
        return Sample(elapsed, lag, _check(reply, tokens))
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ValueError) as exc:
        return Sample(time.perf_counter() - start, lag, f"{type(exc).__name__}: {exc}"[:200])
    finally:
        if conn is not None:
            conn[1].close()


async def _exchange(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], request: bytes) -> tuple[bytes, bool]:
    """Send one request; (status line + body, whether the connection may be reused)."""
    reader, writer = conn
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = {k.strip().lower(): v.strip().lower() for k, _, v in (ln.partition(b":") for ln in lines[1:] if ln)}
    parts = [lines[0], b"\n"]
    if headers.get(b"transfer-encoding") == b"chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # no trailers are sent
                break
            parts.append((await reader.readexactly(size + 2))[:-2])
    elif b"content-length" in headers:
        parts.append(await reader.readexactly(int(headers[b"content-length"])))
    else:  # read to close
        parts.append(await reader.read())
        return b"".join(parts), False
    return b"".join(parts), headers.get(b"connection") != b"close"


def _check(reply: bytes, tokens: int) -> str:
    status = reply.split(b"\n", 1)[0]
    if b" 200" not in status:
        return status.decode(errors="replace")[:100]
    if b"data: [DONE]" not in reply[-64:]:
        return "stream did not end with [DONE]"
    found = _TOKENS.findall(reply)
    if not found or int(found[-1]) != tokens:
        return f"completion_tokens {found[-1:]!r}, asked {tokens}"
    return ""
