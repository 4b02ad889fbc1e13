"""Fault test at fleet shape: 2 prefill + 4 decode sim workers (real processes, real
gRPC) behind the router, under load; one decode and one prefill worker are SIGKILLed
mid-run. Every request must succeed, and every one — migrated or not — must carry the
exact tokens an uninterrupted run gives (the sim engine's greedy token is a function
of the context, so a migration that lost or repeated a token would show)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pdserve.tools.fleet import start_router
from pdserve.tools.procs import Procs
from tests.factories import metric_samples
from tests.helpers.simfleet import decode_load, numbered_sim_worker
from tests.helpers.simload import OUTPUT, VOCAB, expected, summary, timed

REQUESTS, RATE = 400, 25.0


@pytest.fixture
def fleet(tmp_path: Path, default_model: Path) -> Iterator[tuple[str, list[tuple[str, int]], list[tuple[str, int]]]]:
    with Procs(tmp_path) as procs:
        prefill = [numbered_sim_worker(procs, "prefill", i) for i in range(2)]
        decode = [numbered_sim_worker(procs, "decode", i) for i in range(4)]
        args = ["--log-level", "WARNING"]
        url = start_router(procs, default_model, [a for a, _ in prefill], [a for a, _ in decode], args).address
        yield url, prefill, decode


async def streaming(decode: list[tuple[str, int]], backstop_s: float = 30.0) -> tuple[str, int]:
    """A decode worker whose engine is generating: seen with a running sequence in two
    polls 10 ms apart (two sim steps), so streams on it have tokens out. An RPC merely in
    flight may still wait for its KV, and a kill then is a retry, not a migration."""
    deadline = time.monotonic() + backstop_s
    seen: set[tuple[str, int]] = set()
    while time.monotonic() < deadline:
        loads = await asyncio.gather(*(decode_load(a) for a, _ in decode))
        running = {worker for worker, load in zip(decode, loads, strict=True) if load.num_running}
        if running & seen:
            return max(running & seen)
        seen = running
        await asyncio.sleep(0.01)
    raise AssertionError(f"no decode worker was generating within {backstop_s:.0f} s")


async def kill(decode: list[tuple[str, int]], prefill_pid: int) -> None:
    _, decode_pid = await streaming(decode)
    for pid in (decode_pid, prefill_pid):
        os.killpg(pid, signal.SIGKILL)


async def load(
    url: str, prefill: list[tuple[str, int]], decode: list[tuple[str, int]]
) -> list[tuple[list[int], tuple[list[int] | str, float]]]:
    rng = random.Random(7)
    model = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
    prompts = [[rng.randrange(300, VOCAB) for _ in range(rng.randint(100, 600))] for _ in range(REQUESTS)]
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=None)) as client:
        tasks = []
        for i, prompt in enumerate(prompts):
            if i == REQUESTS // 3:  # mid-run, requests still coming: a streaming decode and a prefill worker
                killer = asyncio.create_task(kill(decode, prefill[0][1]))
            tasks.append(asyncio.create_task(timed(client, url, model, prompt)))
            await asyncio.sleep(rng.expovariate(RATE))
        await killer
        results = await asyncio.gather(*tasks)
    return list(zip(prompts, results, strict=True))


def test_killing_a_decode_and_a_prefill_worker_mid_run_loses_no_request(
    fleet: tuple[str, list[tuple[str, int]], list[tuple[str, int]]],
) -> None:
    url, prefill, decode = fleet
    start = time.monotonic()
    timings = asyncio.run(load(url, prefill, decode))
    wall_s = time.monotonic() - start
    metrics = httpx.get(f"{url}/metrics").text
    print(f"\n{summary('failover (2P+4D sim, SIGKILL 1P+1D)', [t for _, t in timings], metrics, wall_s)}")
    results = [(p, r) for p, (r, _) in timings]
    failed = [r for _, r in results if isinstance(r, str)]
    assert len(failed) <= REQUESTS * 0.001, failed[:3]  # >= 99.9 % succeed (here: all)
    wrong = [i for i, (p, r) in enumerate(results) if not isinstance(r, str) and r != expected(p, OUTPUT)]
    assert wrong == [], f"{len(wrong)} completions differ from an uninterrupted run, e.g. #{wrong[0]}"
    samples = metric_samples(metrics)
    migrations = samples.get(("pdserve_router_migrations_total", ()), 0)
    retries = sum(v for (name, _), v in samples.items() if name == "pdserve_router_retries_total")
    assert migrations >= 1, f"the killed decode worker had streams in flight: they must have moved (retries: {retries})"
    assert migrations + retries >= 2
