"""Fault test at fleet shape: 2 prefill + 4 decode sim workers (real processes, real
gRPC) behind the router, under load; one decode and one prefill worker are SIGKILLed
mid-run. Every request must succeed, and every one — migrated or not — must carry the
exact tokens an uninterrupted run gives (the sim engine's greedy token is a function
of the context, so a migration that lost or repeated a token would show)."""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import httpx
import pytest

from pdserve.bench.procs import Procs
from pdserve.engine.sim.engine import next_token
from pdserve.v1 import worker_pb2 as pb
from pdserve.v1 import worker_pb2_grpc as pb_grpc
from tests.helpers.net import free_port
from tests.factories import metric_samples
from tests.integration.simfleet import SLOW, start_sim

VOCAB = 32000  # the llama-3.1-8b-h200 profile's
REQUESTS, RATE, OUTPUT = 400, 25.0, 24


def sim_worker(procs: Procs, role: str, i: int, *extra: str) -> tuple[str, int]:
    addr, proc = start_sim(procs, role, f"{role}{i}", SLOW, extra)
    return addr, proc.pid


@pytest.fixture
def fleet(tmp_path: Path, default_model: Path) -> Iterator[tuple[str, list[tuple[str, int]], list[tuple[str, int]]]]:
    with Procs(tmp_path) as procs:
        prefill = [sim_worker(procs, "prefill", i) for i in range(2)]
        decode = [sim_worker(procs, "decode", i) for i in range(4)]
        port = free_port()
        argv = [sys.executable, "-m", "router", "--port", str(port), "--model", str(default_model)]
        argv += ["--decode", ",".join(a for a, _ in decode), *(f"--prefill={a}" for a, _ in prefill)]
        argv += ["--log-level", "WARNING"]
        procs.start("router", argv)
        url = f"http://127.0.0.1:{port}"
        procs.wait_http(f"{url}/v1/models", timeout_s=300, ready=lambda r: bool(r.json()["data"]))
        yield url, prefill, decode


async def busiest(decode: list[tuple[str, int]]) -> tuple[str, int]:
    """The decode worker with the most streams in flight right now."""

    async def inflight(addr: str) -> int:
        async with grpc.aio.insecure_channel(addr) as channel:
            load = await pb_grpc.DecodeWorkerStub(channel).Load(pb.LoadRequest(), timeout=5)
            return int(load.num_inflight)

    counts = await asyncio.gather(*(inflight(a) for a, _ in decode))
    return max(zip(counts, decode, strict=True))[1]


def expected(prompt: list[int], n: int) -> list[int]:
    tokens = list(prompt)
    for _ in range(n):
        tokens.append(next_token(tokens, VOCAB))
    return tokens[len(prompt) :]


async def one(client: httpx.AsyncClient, url: str, model: str, prompt: list[int]) -> list[int] | str:
    """The completion's token ids, or what went wrong (an error keeps its body: see ``clean``)."""
    body = {"model": model, "prompt": prompt, "max_tokens": OUTPUT, "temperature": 0, "ignore_eos": True}
    body |= {"stream": True, "return_token_ids": True}
    for attempt in range(2):
        got: list[int] = []
        started = False
        try:
            async with client.stream("POST", f"{url}/v1/completions", json=body) as resp:
                started = True
                if resp.status_code != 200:
                    return f"HTTP {resp.status_code}: {(await resp.aread()).decode(errors='replace')}"
                async for line in resp.aiter_lines():
                    if line.startswith("data: {"):
                        event = json.loads(line[6:])
                        if "error" in event:
                            return f"error event: {json.dumps(event['error'])}"
                        for choice in event["choices"]:
                            got += choice.get("token_ids") or []
            return got
        except httpx.TransportError as exc:
            # Like the OpenAI SDK: a connection that failed before the response started (a
            # pooled keep-alive connection the server was closing) is retried once. After
            # the response started, a broken stream is a failure of the router.
            if started or attempt:
                return f"{'mid-stream' if started else 'connect'}: {exc!r}"
    return "unreachable"


def clean(failure: str) -> bool:
    """An error a client can act on: an OpenAI-shaped ``{"error": {"message", "type"}}``,
    as the HTTP body of a status other than 500 or in the stream, with no internal error
    or traceback. A broken connection or stream is not clean."""
    kind, _, rest = failure.partition(": ")
    try:
        error = json.loads(rest)
    except ValueError:
        return False
    if kind.startswith("HTTP "):
        if kind == "HTTP 500" or not isinstance(error, dict):
            return False
        error = error.get("error")
    elif kind != "error event":
        return False
    return (
        isinstance(error, dict)
        and isinstance(error.get("message"), str)
        and error.get("type") not in (None, "internal_error")
        and "Traceback" not in rest
    )


async def timed(client: httpx.AsyncClient, url: str, model: str, prompt: list[int]) -> tuple[list[int] | str, float]:
    """``one`` and its end-to-end latency in seconds, as the client sees it."""
    start = time.perf_counter()
    result = await one(client, url, model, prompt)
    return result, time.perf_counter() - start


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]); NaN for no values."""
    if not values:
        return float("nan")
    ranked = sorted(values)
    rank = math.ceil(len(ranked) * q / 100)  # 1-based
    return ranked[min(len(ranked), max(1, rank)) - 1]


def summary(name: str, results: Sequence[tuple[list[int] | str, float]], metrics: str, wall_s: float) -> str:
    """One line of figures for docs/BENCHMARKS.md: requests, outcomes, the router's
    recoveries (from its /metrics text) and client-side e2e latency of the successes."""
    samples = metric_samples(metrics)
    migrations = samples.get(("pdserve_router_migrations_total", ()), 0)
    retries = sum(v for (n, _), v in samples.items() if n == "pdserve_router_retries_total")
    ok = [lat for r, lat in results if not isinstance(r, str)]
    failed = [r for r, _ in results if isinstance(r, str)]
    return (
        f"SUMMARY {name}: {len(results)} requests, {len(ok)} succeeded, {sum(map(clean, failed))} clean errors, "
        f"{sum(not clean(f) for f in failed)} other failures; {migrations:.0f} migrations, {retries:.0f} retries; "
        f"e2e p50 {percentile(ok, 50):.3f} s, p99 {percentile(ok, 99):.3f} s; wall {wall_s:.1f} s"
    )


async def load(
    url: str, prefill: list[tuple[str, int]], decode: list[tuple[str, int]]
) -> list[tuple[list[int], tuple[list[int] | str, float]]]:
    rng = random.Random(7)
    model = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
    prompts = [[rng.randrange(300, VOCAB) for _ in range(rng.randint(100, 600))] for _ in range(REQUESTS)]
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=None)) as client:
        tasks = []
        for i, prompt in enumerate(prompts):
            if i == REQUESTS // 3:  # mid-run: the decode worker streaming the most, and a prefill worker
                _, decode_pid = await busiest(decode)
                for pid in (decode_pid, prefill[0][1]):
                    os.killpg(pid, signal.SIGKILL)
            tasks.append(asyncio.create_task(timed(client, url, model, prompt)))
            await asyncio.sleep(rng.expovariate(RATE))
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
