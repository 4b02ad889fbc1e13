"""Redis outage at fleet shape: 2 prefill + 2 decode sim workers (real processes, real
gRPC) registered in a real redis-server, one router that knows them only through it,
open-loop load on shared prefixes. Redis is stopped for 30 s mid-run and started again
empty (no persistence, as deployed). While it is down the router serves from its local
view; once it is back the workers must register again and rewrite their block sets, so
that the index — not the router's memory — brings a prefix back to the worker holding it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from pdserve.state import StoreUnavailable, make_store
from pdserve.tools.fleet import start_router
from pdserve.tools.procs import Procs
from tests.factories import metric_samples
from tests.helpers.kv_index import index_holders
from tests.helpers.net import free_port
from tests.helpers.simfleet import numbered_sim_worker
from tests.helpers.simload import OUTPUT, VOCAB, clean, expected, one, percentile, summary, timed
from tests.redis_server import RedisServer

RATE = 10.0  # requests per second, Poisson arrivals
BEFORE_S, OUTAGE_S, AFTER_S = 10.0, 30.0, 15.0
PREFIXES, PREFIX_BLOCKS, BLOCK = 8, 4, 128  # BLOCK: the sim workers' default block size
RECOVERY_BOUND_S = 12.0  # heartbeats every TTL/3 = 3.3 s and feed resyncs every 1 s fit well inside
PREDICT_TTL_S = 10.0  # the router's default: placements older than this live in the index only


@dataclass(frozen=True)
class RedisSimFleet:
    """Sim workers and a router that find each other through Redis only."""

    url: str
    model: str
    redis: RedisServer
    roles: dict[str, str]  # worker address → role


def pool_sizes(metrics: str) -> dict[str, float]:
    samples = metric_samples(metrics)
    return {dict(labels)["role"]: v for (name, labels), v in samples.items() if name == "pdserve_router_workers"}


@pytest.fixture
def fleet(tmp_path: Path, default_model: Path) -> Iterator[RedisSimFleet]:
    redis_server = RedisServer(free_port(), tmp_path / "redis").start()
    try:
        with Procs(tmp_path) as procs:
            registered = ("--state-url", redis_server.url)  # --heartbeat-ttl: the default (10 s)
            roles = {
                numbered_sim_worker(procs, r, i, *registered)[0]: r for r in ("prefill", "decode") for i in range(2)
            }
            args = ["--state-url", redis_server.url, "--log-level", "WARNING"]
            url = start_router(procs, default_model, args=args, wait=False).address
            full = {"prefill": 2.0, "decode": 2.0}  # found through the registry only
            procs.wait_http(f"{url}/metrics", timeout_s=120, ready=lambda r: pool_sizes(r.text) == full)
            model = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
            yield RedisSimFleet(url, model, redis_server, roles)
    finally:
        redis_server.stop()


@dataclass
class Timeline:
    """What the outage script saw; times in seconds since the load started (at ``t0``)."""

    t0: float = 0.0  # time.monotonic()
    down_at: float = 0.0
    up_at: float = 0.0
    probed_at: float = 0.0  # the last probe was placed by then
    probes: list[tuple[list[int], list[int] | str]] = field(default_factory=list)  # (prompt, result)
    gauge_down: list[float] = field(default_factory=list)  # state_store_up read during the outage
    gauge_after: list[float] = field(default_factory=list)  # ... every 0.25 s once it read 1 again
    recovered: dict[str, float] = field(default_factory=dict)  # check → seconds after Redis came back


@dataclass(frozen=True)
class Sent:
    at: float  # seconds since the load started
    prompt: list[int]
    result: list[int] | str
    latency_s: float


def prompts(rng: random.Random) -> Callable[[], list[int]]:
    """Shared prefixes (so the index matters), each with a fresh tail."""
    prefixes = [[rng.randrange(300, VOCAB) for _ in range(PREFIX_BLOCKS * BLOCK)] for _ in range(PREFIXES)]
    return lambda: rng.choice(prefixes) + [rng.randrange(300, VOCAB) for _ in range(rng.randint(8, 200))]


def probe_prompt(rng: random.Random, prefix: list[int] | None = None) -> list[int]:
    """A prefix no load request uses (so one prefill and one decode worker hold it), and a tail."""
    head = prefix or [rng.randrange(300, VOCAB) for _ in range(PREFIX_BLOCKS * BLOCK)]
    return head + [rng.randrange(300, VOCAB) for _ in range(16)]


async def gauge(client: httpx.AsyncClient, url: str) -> float:
    return metric_samples((await client.get(f"{url}/metrics")).text)[("pdserve_router_state_store_up", ())]


async def within(since: float, bound_s: float, check: Callable[[], Awaitable[bool]]) -> float:
    """Seconds from ``since`` (a time.monotonic()) until ``check()`` holds; fails past ``bound_s``."""
    while not await check():
        assert time.monotonic() - since < bound_s, f"{check.__name__} did not hold within {bound_s:.0f} s"
        await asyncio.sleep(0.2)
    return time.monotonic() - since


async def recovery(fleet: RedisSimFleet, client: httpx.AsyncClient, seen: Timeline) -> None:
    """Time each sign of recovery from Redis's return; each must come within the bound."""
    store = make_store(fleet.redis.url, timeout_s=2)

    async def registered() -> bool:
        with contextlib.suppress(StoreUnavailable):
            return {r.worker_id for r in await store.workers()} == set(fleet.roles)
        return False

    async def gauge_up() -> bool:
        return await gauge(client, fleet.url) == 1

    async def index_rebuilt() -> bool:
        """Every block of every probe is held by the prefill and the decode worker that served it."""
        for prompt, _ in seen.probes:
            blocks = await asyncio.to_thread(index_holders, fleet.redis, fleet.model, prompt)
            roles = sorted(fleet.roles[w] for w in blocks[0])
            if roles != ["decode", "prefill"] or any(h != blocks[0] for h in blocks):
                return False
        return True

    since = seen.t0 + seen.up_at
    checks = (registered, gauge_up, index_rebuilt)
    try:
        times = await asyncio.gather(*(within(since, RECOVERY_BOUND_S, c) for c in checks))
        seen.recovered = {c.__name__: t for c, t in zip(checks, times, strict=True)}
    finally:
        await store.close()


async def outage(fleet: RedisSimFleet, client: httpx.AsyncClient, seen: Timeline) -> None:
    """The script beside the load: probes, stop Redis, read the gauge, start Redis, recovery."""
    t0 = seen.t0
    rng = random.Random(11)

    async def at(t: float) -> None:
        await asyncio.sleep(max(0.0, t0 + t - time.monotonic()))

    async def probe() -> None:
        prompt = probe_prompt(rng)
        seen.probes.append((prompt, await one(client, fleet.url, fleet.model, prompt)))

    await at(BEFORE_S / 2)
    await asyncio.gather(probe(), probe())  # their blocks reach Redis by KV events; then Redis loses them
    await at(BEFORE_S)
    await asyncio.to_thread(fleet.redis.stop)
    seen.down_at = time.monotonic() - t0
    await asyncio.gather(probe(), probe())  # their blocks reach Redis only when the workers resync
    seen.probed_at = time.monotonic() - t0
    for t in (2.0, OUTAGE_S / 2, OUTAGE_S - 1.0):
        await at(seen.down_at + t)
        seen.gauge_down.append(await gauge(client, fleet.url))
    await at(seen.down_at + OUTAGE_S)
    await asyncio.to_thread(fleet.redis.start)  # empty: no persistence
    seen.up_at = time.monotonic() - t0
    await recovery(fleet, client, seen)
    while time.monotonic() - t0 < BEFORE_S + OUTAGE_S + AFTER_S:  # a flap back to 0 lasts >= 1 s
        seen.gauge_after.append(await gauge(client, fleet.url))
        await asyncio.sleep(0.25)


async def run(fleet: RedisSimFleet) -> tuple[list[Sent], Timeline]:
    rng = random.Random(7)
    next_prompt = prompts(rng)
    seen = Timeline()
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=None)) as client:

        async def send(at: float, prompt: list[int]) -> Sent:
            result, latency_s = await timed(client, fleet.url, fleet.model, prompt)
            return Sent(at, prompt, result, latency_s)

        seen.t0 = time.monotonic()
        script = asyncio.create_task(outage(fleet, client, seen))
        tasks = []
        while (now := time.monotonic() - seen.t0) < BEFORE_S + OUTAGE_S + AFTER_S:
            tasks.append(asyncio.create_task(send(now, next_prompt())))
            await asyncio.sleep(rng.expovariate(RATE))
        sent = await asyncio.gather(*tasks)
        await script
    return sent, seen


def report(sent: list[Sent], seen: Timeline, metrics: str, wall_s: float) -> list[Sent]:
    """Print the run's summary lines; return the requests sent while Redis was down."""
    window = [s for s in sent if seen.down_at <= s.at < seen.up_at]
    ok = [s.latency_s for s in window if not isinstance(s.result, str)]
    results = [(s.result, s.latency_s) for s in sent]
    print(f"\n{summary('redis outage (2P+2D sim, Redis down 30 s)', results, metrics, wall_s)}")
    print(
        f"SUMMARY redis outage window ({seen.down_at:.1f}-{seen.up_at:.1f} s): {len(window)} requests, "
        f"{100 * len(ok) / max(1, len(window)):.1f} % succeeded, e2e p50 {percentile(ok, 50):.3f} s, "
        f"p99 {percentile(ok, 99):.3f} s; after Redis returned: "
        + ", ".join(f"{check} in {s:.1f} s" for check, s in seen.recovered.items())
    )
    return window


def prefill_placements(url: str) -> dict[str, float]:
    return {
        dict(labels)["worker"]: v
        for (name, labels), v in metric_samples(httpx.get(f"{url}/metrics").text).items()
        if name == "pdserve_router_placement_decisions_total" and dict(labels)["role"] == "prefill"
    }


def matched_tokens(url: str) -> float:
    return metric_samples(httpx.get(f"{url}/metrics").text)[("pdserve_router_prefix_matched_tokens_total", ())]


async def complete(fleet: RedisSimFleet, prompt: list[int]) -> list[int] | str:
    async with httpx.AsyncClient(timeout=60) as client:
        return await one(client, fleet.url, fleet.model, prompt)


def assert_prefix_aware_again(fleet: RedisSimFleet, seen: Timeline) -> None:
    """A probe's prefix, asked again, goes to the prefill worker the index names for it.
    The router predicted every probe before Redis restarted empty and has forgotten the
    predictions since: only the workers' rewritten block sets can place it."""
    for prompt, _ in seen.probes:
        holders = index_holders(fleet.redis, fleet.model, prompt)[0]
        repeat = probe_prompt(random.Random(), prompt[: PREFIX_BLOCKS * BLOCK])
        before, matched = prefill_placements(fleet.url), matched_tokens(fleet.url)
        assert asyncio.run(complete(fleet, repeat)) == expected(repeat, OUTPUT)
        after = prefill_placements(fleet.url)
        placed = {w for w, v in after.items() if v > before.get(w, 0)}
        assert len(placed) == 1 and placed <= holders, (placed, holders)
        assert matched_tokens(fleet.url) - matched >= PREFIX_BLOCKS * BLOCK  # found in the index


def test_redis_down_for_30_s_under_load_fails_no_request_and_the_index_recovers(fleet: RedisSimFleet) -> None:
    start = time.monotonic()
    sent, seen = asyncio.run(run(fleet))
    wall_s = time.monotonic() - start
    metrics = httpx.get(f"{fleet.url}/metrics").text
    window = report(sent, seen, metrics, wall_s)

    failed = [s.result for s in sent if isinstance(s.result, str)]
    assert len(failed) <= 0.01 * len(sent), failed[:3]  # >= 99 % succeed (here: all)
    assert [f for f in failed if not clean(f)] == []  # no 500, no broken stream
    window_failed = [s for s in window if isinstance(s.result, str)]
    assert len(window) >= RATE * OUTAGE_S / 2 and len(window_failed) <= 0.01 * len(window)
    wrong = [i for i, s in enumerate(sent) if not isinstance(s.result, str) and s.result != expected(s.prompt, OUTPUT)]
    assert wrong == [], f"{len(wrong)} completions differ from an uninterrupted run, e.g. #{wrong[0]}"
    assert [r == expected(p, OUTPUT) for p, r in seen.probes] == [True] * 4
    assert seen.gauge_down == [0, 0, 0]
    assert set(seen.recovered) == {"registered", "gauge_up", "index_rebuilt"}  # each within RECOVERY_BOUND_S
    assert len(seen.gauge_after) >= 10 and set(seen.gauge_after) == {1}  # and it stayed up
    assert pool_sizes(metrics) == {"prefill": 2, "decode": 2}  # nobody left the pools

    assert time.monotonic() - seen.t0 - seen.probed_at > PREDICT_TTL_S
    assert_prefix_aware_again(fleet, seen)


async def test_a_restarted_redis_answers_every_next_call(tmp_path: Path) -> None:
    """Connections pooled before a restart are dead: the pool must replace them, not hand
    them out. (redis-py 8.1's asyncio pool under RESP3 hands them out, redis/redis-py#4252:
    each failed one call after Redis came back — the router's store_up gauge flapped to 0
    and its breaker skipped Redis for a second; a worker's re-registration slipped a
    heartbeat.)"""
    server = RedisServer(free_port(), tmp_path).start()
    store = make_store(server.url)
    try:
        await asyncio.gather(*(store.workers() for _ in range(8)))  # 8 connections in the pool
        server.stop()
        await asyncio.sleep(0.2)  # the client's event loop sees its connections close
        server.start()
        results = await asyncio.gather(*(store.workers() for _ in range(8)), return_exceptions=True)
        assert results == [[]] * 8
    finally:
        await store.close()
        server.stop()
