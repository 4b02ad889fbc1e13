"""Soak with random client disconnects on the real cluster (vLLM CPU engines, NIXL): clients
leave before the first byte, mid-stream, or not at all. Afterwards no engine request is
running, the KV blocks are back to their baseline on every worker (the prefill side's
orphans within the KV lease), and the router holds no more asyncio tasks than before."""

from __future__ import annotations

import asyncio
import json
import random
import time

import httpx

from tests.factories import metric_samples
from tests.helpers.cluster import KV_LEASE_S, Cluster
from tests.helpers.workers import engine_load

REQUESTS, CONCURRENCY = 24, 6
SEED = 20261201
PREFIXES = ["You are a careful assistant. " * 20, "Summarise the following log. " * 25, "Translate to French: " * 30]


def _router_gauge(cluster: Cluster, name: str) -> float:
    return metric_samples(httpx.get(cluster.url + "/metrics", timeout=10).text)[(name, ())]


async def _loads(cluster: Cluster) -> list:
    return await asyncio.gather(
        *(engine_load(a, "prefill") for a in cluster.prefill_addrs), engine_load(cluster.decode_addr, "decode")
    )


async def _one(client: httpx.AsyncClient, cluster: Cluster, rng: random.Random, i: int) -> str:
    """'ok', or how the client left. A request that ran to the end must have succeeded.
    ``rng``: this request's own, so what it does does not hang on how the requests in
    flight interleave (one shared generator once gave 9 early leavers and 1 mid-stream)."""
    leave = rng.choice(["stay", "stay", "before-first-byte", "mid-stream"])
    stream = leave == "mid-stream" or rng.random() < 0.5
    body = {
        "model": cluster.model,
        "prompt": rng.choice(PREFIXES) + f" Request {i}: {rng.random()}",
        "max_tokens": rng.randint(8, 64),
        "ignore_eos": True,
        "temperature": 0,
        "stream": stream,
    }
    if leave == "before-first-byte":
        try:  # the client gives up while the request is being prefilled or decoded
            await asyncio.wait_for(client.post(cluster.url + "/v1/completions", json=body), rng.uniform(0.05, 1.5))
        except TimeoutError:
            return leave
        return "ok (finished before the client left)"
    async with client.stream("POST", cluster.url + "/v1/completions", json=body) as resp:
        assert resp.status_code == 200, await resp.aread()
        if not stream:
            data = json.loads(await resp.aread())
            assert data["choices"][0]["finish_reason"] == "length", data
            return "ok"
        seen, cut = 0, rng.randint(1, 6)
        async for line in resp.aiter_lines():
            if line.startswith("data: {"):
                event = json.loads(line[6:])
                assert "error" not in event, event
                seen += 1
                if leave == "mid-stream" and seen >= cut:
                    return leave  # leaving the block closes the connection
            elif line == "data: [DONE]":
                return "ok"
    raise AssertionError("the stream ended without [DONE]")


async def _soak(cluster: Cluster) -> list[str]:
    # Per request, seeded: 14 stay, 6 leave before the first byte, 4 mid-stream.
    gate = asyncio.Semaphore(CONCURRENCY)
    async with httpx.AsyncClient(timeout=300) as client:

        async def bounded(i: int) -> str:
            async with gate:
                return await _one(client, cluster, random.Random(SEED + i), i)

        return await asyncio.gather(*(bounded(i) for i in range(REQUESTS)))


def test_random_disconnects_leave_no_requests_kv_or_tasks_behind(cluster: Cluster) -> None:
    deadline = time.monotonic() + 60
    while any(x.num_running or x.num_waiting or x.num_inflight for x in asyncio.run(_loads(cluster))):
        assert time.monotonic() < deadline, "the cluster was not idle before the soak"
        time.sleep(0.5)
    baseline = [x.kv_cache_usage for x in asyncio.run(_loads(cluster))]
    tasks_before = _router_gauge(cluster, "pdserve_router_asyncio_tasks")

    outcomes = asyncio.run(_soak(cluster))
    assert outcomes.count("before-first-byte") >= 2 and outcomes.count("mid-stream") >= 2, outcomes
    assert sum(o.startswith("ok") for o in outcomes) >= REQUESTS // 3, outcomes

    # Every engine request ends and every KV block comes back: the decode side's at once,
    # the prefill side's (prefilled for a decode that never came) within the lease.
    deadline = time.monotonic() + KV_LEASE_S + 30
    while True:
        loads = asyncio.run(_loads(cluster))
        busy = [x for x in loads if x.num_running or x.num_waiting or x.num_inflight]
        held = [(x.kv_cache_usage, b) for x, b in zip(loads, baseline, strict=True) if x.kv_cache_usage > b + 1e-6]
        if not busy and not held:
            break
        assert time.monotonic() < deadline, (busy, held)
        time.sleep(1)
    assert _router_gauge(cluster, "pdserve_router_inflight_requests") == 0
    # uvicorn's connection tasks end with the client's connections; nothing else may stay
    assert _router_gauge(cluster, "pdserve_router_asyncio_tasks") <= tasks_before
