"""Overload and cancellation at the router, over sim workers (real processes, real gRPC):
oversized requests while streams run, and a non-streaming client that leaves. Bounds
are generous (a busy 2-core CI machine stays green): they assert behaviour — nothing
blocks the event loop for long, the engine stops — not speed."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from pdserve.tools.procs import Procs
from tests.helpers.simfleet import decode_inflight, served_model, sim_worker, start_router

STREAMS = 20
STREAM_TOKENS = 400  # ~3 s each on the slow profile
# The bodies are parsed, validated and size-checked on the router's preparing threads
# (router/api/body.py); what still holds the event loop is the GIL those threads take
# (json.loads of the 3.5 MB, 100k-message body holds it in one call). Interleaved runs on a
# 2-core VM at load averages 8-10: longest gap / slowest /health 0.28-0.64 s, against
# 0.77-3.57 s when FastAPI parsed on the loop; 1.69 s the worst seen at load ~7.
GAP_S = 2.0  # longest wait between two events of a stream while the big requests are handled
HEALTH_S = 2.0  # slowest /health meanwhile
REFUSED_S = 5.0  # the oversized requests are answered within this
IDLE_S = 2.0  # after a non-streaming client leaves, the engine is idle within this


@dataclass(frozen=True)
class Fleet:
    url: str
    decode: str
    model: str


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, default_model: Path) -> Iterator[Fleet]:
    with Procs(tmp_path_factory.mktemp("overload")) as procs:
        decode = sim_worker(procs, "decode")
        _, url = start_router(procs, default_model, sim_worker(procs, "prefill"), decode, "--log-level", "WARNING")
        yield Fleet(url, decode, served_model(url))


async def stream_gaps(client: httpx.AsyncClient, fleet: Fleet, i: int) -> list[float]:
    """The waits between the stream's events (first token excluded)."""
    body = {"model": fleet.model, "prompt": f"stream {i}", "max_tokens": STREAM_TOKENS, "ignore_eos": True}
    gaps: list[float] = []
    async with client.stream("POST", f"{fleet.url}/v1/completions", json={**body, "stream": True}) as resp:
        assert resp.status_code == 200
        last = None
        async for line in resp.aiter_lines():
            if line.startswith("data: {"):
                assert "error" not in json.loads(line[6:]), line
                now = time.monotonic()
                if last is not None:
                    gaps.append(now - last)
                last = now
    return gaps


async def health_latencies(client: httpx.AsyncClient, fleet: Fleet, until: asyncio.Event) -> list[float]:
    took = []
    while not until.is_set():
        started = time.monotonic()
        assert (await client.get(f"{fleet.url}/health")).status_code == 200
        took.append(time.monotonic() - started)
        await asyncio.sleep(0.1)
    return took


async def refused(client: httpx.AsyncClient, fleet: Fleet, path: str, raw: bytes) -> tuple[int, float]:
    started = time.monotonic()
    resp = await client.post(f"{fleet.url}{path}", content=raw, headers={"content-type": "application/json"})
    return resp.status_code, time.monotonic() - started


def test_oversized_requests_while_20_streams_run_are_refused_quickly_and_stall_nothing(fleet: Fleet) -> None:
    big = {
        "8 MiB prompt": ("/v1/completions", {"prompt": "x" * (8 << 20)}),
        "4 MiB prompt": ("/v1/completions", {"prompt": "lorem ipsum " * ((4 << 20) // 12)}),
        "100k messages": ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}] * 100_000}),
        "60k characters, tokenized": ("/v1/completions", {"prompt": "lorem ipsum " * 5_000}),
    }

    # Encoded before the streams start: encoding them would stall this test's own event loop,
    # which reads the streams, and count against the router.
    raw = {name: json.dumps({"model": fleet.model, "max_tokens": 4, **b}).encode() for name, (_, b) in big.items()}

    async def run() -> tuple[list[list[float]], list[float], dict[str, tuple[int, float]]]:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        async with httpx.AsyncClient(timeout=120, limits=limits) as client:
            streams = [asyncio.create_task(stream_gaps(client, fleet, i)) for i in range(STREAMS)]
            done = asyncio.Event()
            health = asyncio.create_task(health_latencies(client, fleet, done))
            await asyncio.sleep(1.0)  # the streams are generating
            refusals = (refused(client, fleet, path, raw[name]) for name, (path, _) in big.items())
            answers = await asyncio.gather(*refusals)
            gaps = await asyncio.gather(*streams)
            done.set()
            return gaps, await health, dict(zip(big, answers, strict=True))

    gaps, health, answers = asyncio.run(run())
    print(f"\nrefusals {answers}; longest gap {max(map(max, gaps)):.2f} s; slowest /health {max(health):.2f} s")
    assert answers["8 MiB prompt"][0] == 413  # over the body limit, unread
    assert all(status == 400 for name, (status, _) in answers.items() if name != "8 MiB prompt"), answers
    assert all(took < REFUSED_S for _, took in answers.values()), answers
    assert max(map(max, gaps)) < GAP_S
    assert max(health) < HEALTH_S


def test_a_non_streaming_client_that_leaves_stops_the_engine(fleet: Fleet) -> None:
    """max_tokens=2000 is ~16 s of decode; the client gives up after 1 s."""
    body = {"model": fleet.model, "prompt": "leave early", "max_tokens": 2000, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{fleet.url}/v1/completions", json=body, timeout=httpx.Timeout(10, read=1.0))
    left = time.monotonic()
    while asyncio.run(decode_inflight(fleet.decode)):
        assert time.monotonic() - left < IDLE_S, "the decode engine still generates for a client that left"
        time.sleep(0.05)
    print(f"\nengine idle {time.monotonic() - left:.2f} s after the client left")
