"""A rolling upgrade on a sim fleet (real processes, real gRPC, a real redis-server):
2 prefill + 2 decode workers reporting vLLM "sim-old" are replaced one by one by workers
reporting "sim-new" — each new worker registers, then the old one it replaces gets
SIGTERM (it deregisters and drains) — under steady load. New-version workers form their
own pool (NIXL refuses peers of another version); traffic moves to it as it comes up
and the old pool is dropped once empty. No request may fail or differ."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from pdserve.state import make_store
from pdserve.tools.fleet import start_router
from pdserve.tools.procs import Procs
from tests.factories import metric_samples
from tests.helpers.net import free_port
from tests.helpers.simfleet import start_sim
from tests.helpers.simload import OUTPUT, VOCAB, clean, expected, one
from tests.redis_server import RedisServer

CLIENTS = 4
SETTLE_S = 2.5  # a new worker's registration reaches the router's next refresh (1 s) and joins
GONE_S = 4.5  # a worker missing from the registry leaves the pool after its TTL (3 s), at a refresh


@dataclass
class Fleet:
    procs: Procs
    url: str
    model: str
    redis: RedisServer
    workers: list[tuple[str, str, subprocess.Popen[bytes]]]  # (role, address, process)


def start_worker(
    procs: Procs, redis: RedisServer, role: str, name: str, version: str
) -> tuple[str, subprocess.Popen[bytes]]:
    extra = (
        "--state-url",
        redis.url,
        "--heartbeat-ttl",
        "3",
        "--grace",
        "20",
        "--engine-arg",
        f"vllm_version={version}",
    )
    return start_sim(procs, role, name, extra=extra)


@pytest.fixture
def fleet(tmp_path: Path, default_model: Path) -> Iterator[Fleet]:
    server = RedisServer(free_port(), tmp_path / "redis").start()
    try:
        with Procs(tmp_path) as procs:
            workers = [
                (role, *start_worker(procs, server, role, f"{role}{i}-old", "sim-old"))
                for role in ("prefill", "decode")
                for i in range(2)
            ]
            url = start_router(procs, default_model, args=["--state-url", server.url, "--log-level", "WARNING"]).address
            procs.wait_http(f"{url}/metrics", 120, ready=lambda r: sizes(r.text) == {"prefill": 2, "decode": 2})
            model = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
            yield Fleet(procs, url, model, server, workers)
    finally:
        server.stop()


def sizes(metrics: str) -> dict[str, float]:
    samples = metric_samples(metrics)
    return {dict(labels)["role"]: v for (name, labels), v in samples.items() if name == "pdserve_router_workers"}


async def registered(redis: RedisServer, address: str) -> bool:
    store = make_store(redis.url, timeout_s=5)
    try:
        return address in {r.worker_id for r in await store.workers()}
    finally:
        await store.close()


async def upgrade(fleet: Fleet) -> list[str]:
    """Replace each old worker by a new one; the versions /version reported after each step."""
    seen = []
    for i, (role, _, old) in enumerate(list(fleet.workers)):
        address, _ = await asyncio.to_thread(start_worker, fleet.procs, fleet.redis, role, f"{role}{i}-new", "sim-new")
        deadline = time.monotonic() + 60
        while not await registered(fleet.redis, address):
            assert time.monotonic() < deadline, f"{address} never registered"
            await asyncio.sleep(0.2)
        await asyncio.sleep(SETTLE_S)
        old.send_signal(signal.SIGTERM)  # deregisters, drains its in-flight requests, exits
        assert await asyncio.to_thread(old.wait, 30) == 0
        await asyncio.sleep(GONE_S)
        async with httpx.AsyncClient() as client:
            seen.append((await client.get(f"{fleet.url}/version")).json()["version"])
    return seen


async def run(fleet: Fleet) -> tuple[list[tuple[list[int], list[int] | str]], list[str]]:
    results: list[tuple[list[int], list[int] | str]] = []
    done = asyncio.Event()
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=None)) as client:

        async def user(seed: int) -> None:
            rng = random.Random(seed)
            while not done.is_set():
                prompt = [rng.randrange(300, VOCAB) for _ in range(rng.randint(16, 400))]
                results.append((prompt, await one(client, fleet.url, fleet.model, prompt)))

        users = [asyncio.create_task(user(i)) for i in range(CLIENTS)]
        try:
            versions = await upgrade(fleet)
        finally:
            done.set()
            await asyncio.gather(*users)
    return results, versions


def test_a_rolling_upgrade_fails_no_request(fleet: Fleet) -> None:
    results, versions = asyncio.run(run(fleet))
    failed = [r for _, r in results if isinstance(r, str)]
    assert failed == [], (len(failed), [f for f in failed if not clean(f)][:3] or failed[:3])
    wrong = [p for p, r in results if r != expected(p, OUTPUT)]
    assert wrong == []
    assert len(results) >= 40
    # prefill workers are replaced first (the old pool's decode workers prefill locally once
    # it has none); traffic moves once the new pool has as many decode workers as the old
    assert versions == ["sim-old", "sim-old", "sim-new", "sim-new"]
    metrics = httpx.get(f"{fleet.url}/metrics").text
    assert sizes(metrics) == {"prefill": 2, "decode": 2}  # the new pool, whole; the old one dropped
