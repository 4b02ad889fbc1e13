"""A decode worker SIGSTOPped under load: its gRPC socket stays open and nothing
answers (a wedged engine behind a live server looks the same to the router). Sim
workers as real processes, real gRPC. Traffic must leave it within MOVE_S, the
streams that were on it must finish elsewhere with the exact tokens of an
uninterrupted run (or end with a clean error), and no request may wait anything
like its deadline (600 s by default)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from pdserve.tools.fleet import start_router
from pdserve.tools.procs import Procs
from tests.factories import metric_samples
from tests.helpers import simload
from tests.helpers.simfleet import decode_load, numbered_sim_worker
from tests.helpers.simload import VOCAB, clean, expected

OUTPUT = 64  # tokens per stream: ~0.5 s of decode on the slow profile
STREAMS = 8  # clients sending one stream after another
STALL_S, FIRST_TOKEN_S = 2.0, 3.0  # the router's per-attempt timeouts in this test
MOVE_S = 8.0  # after the stop, no request is placed on the stopped worker past this
SLOWEST_S = 15.0  # no request takes longer (its deadline is 600 s)


@dataclass
class Fleet:
    url: str
    decode: list[tuple[str, int]]


@pytest.fixture
def fleet(tmp_path: Path, default_model: Path) -> Iterator[Fleet]:
    with Procs(tmp_path) as procs:
        prefill = numbered_sim_worker(procs, "prefill", 0)[0]
        decode = [numbered_sim_worker(procs, "decode", i) for i in range(2)]
        args = ["--log-level", "WARNING", "--stall-timeout", str(STALL_S), "--first-token-timeout", str(FIRST_TOKEN_S)]
        url = start_router(procs, default_model, [prefill], [a for a, _ in decode], args).address
        try:
            yield Fleet(url, decode)
        finally:
            for _, pid in decode:  # a stopped process would ignore the SIGTERM that ends it
                os.kill(pid, signal.SIGCONT)


@dataclass
class Outcome:
    started: float
    took_s: float
    prompt: list[int]
    result: list[int] | str  # token ids, or what went wrong


async def client_loop(url: str, model: str, seed: int, until: float, out: list[Outcome]) -> None:
    rng = random.Random(seed)
    async with httpx.AsyncClient(timeout=120) as client:
        while time.monotonic() < until:
            prompt = [rng.randrange(300, VOCAB) for _ in range(rng.randint(50, 200))]
            started = time.monotonic()
            result = await simload.one(client, url, model, prompt, OUTPUT)
            out.append(Outcome(started, time.monotonic() - started, prompt, result))


def placements(url: str, worker: str) -> float:
    samples = metric_samples(httpx.get(f"{url}/metrics").text)
    key = (
        "pdserve_router_placement_decisions_total",
        (("policy", "prefix-aware"), ("role", "decode"), ("worker", worker)),
    )
    return samples.get(key, 0.0)


async def busy_worker(decode: list[tuple[str, int]]) -> tuple[str, int]:
    """A decode worker with streams generating on it."""
    for _ in range(500):
        loads = await asyncio.gather(*(decode_load(a) for a, _ in decode))
        busy = [w for w, load in zip(decode, loads, strict=True) if load.num_running]
        if busy:
            return busy[0]
        await asyncio.sleep(0.01)
    raise AssertionError("no decode worker was generating")


def test_a_sigstopped_decode_worker_loses_its_traffic_and_nothing_waits_the_deadline(fleet: Fleet) -> None:
    model = httpx.get(f"{fleet.url}/v1/models").json()["data"][0]["id"]

    async def run() -> tuple[list[Outcome], float, str, float]:
        outcomes: list[Outcome] = []
        until = time.monotonic() + 25
        loops = [asyncio.create_task(client_loop(fleet.url, model, i, until, outcomes)) for i in range(STREAMS)]
        await asyncio.sleep(3)
        addr, pid = await busy_worker(fleet.decode)
        os.kill(pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        await asyncio.sleep(MOVE_S)
        placed = placements(fleet.url, addr)
        await asyncio.gather(*loops)
        return outcomes, stopped_at, addr, placed

    outcomes, stopped_at, addr, placed_after_move = asyncio.run(run())
    assert placements(fleet.url, addr) == placed_after_move, f"requests were still placed on {addr} after {MOVE_S} s"
    late = [o for o in outcomes if o.started > stopped_at + MOVE_S]
    assert len(late) >= STREAMS, "the load went on after the worker moved out"
    failed = [o.result for o in outcomes if isinstance(o.result, str)]
    assert all(clean(f) for f in failed), failed[:3]
    assert len(failed) <= len(outcomes) * 0.05, failed[:3]
    wrong = [o for o in outcomes if not isinstance(o.result, str) and o.result != expected(o.prompt, OUTPUT)]
    assert not wrong, f"{len(wrong)} streams differ from an uninterrupted run"
    hit = [o for o in outcomes if o.started <= stopped_at < o.started + o.took_s]
    assert hit, "no stream was in flight when the worker stopped"
    slowest = max(o.took_s for o in outcomes)
    print(f"\n{len(outcomes)} streams, {len(hit)} in flight at the stop, {len(failed)} failed, slowest {slowest:.1f} s")
    assert slowest < SLOWEST_S, f"a request took {slowest:.1f} s"
    samples = metric_samples(httpx.get(f"{fleet.url}/metrics").text)
    assert samples.get(("pdserve_router_migrations_total", ()), 0) >= 1  # streams on it moved mid-way


@pytest.mark.parametrize("code", ["overloaded", "internal"])
def test_half_the_decode_fleet_failing_every_request_costs_at_most_a_fifth_more_attempts(
    tmp_path: Path, default_model: Path, code: str
) -> None:
    """Sim workers as processes: two of four decode workers fail every request with
    RESOURCE_EXHAUSTED (the sim's error_code=overloaded) or INTERNAL. Every decode attempt is
    a placement, so the router's placement counter counts the attempts: ejection and the
    retry budget keep them ≤ 1.2 x requests."""
    requests = 120
    with Procs(tmp_path) as procs:
        prefill = numbered_sim_worker(procs, "prefill", 0)[0]
        good = [numbered_sim_worker(procs, "decode", i)[0] for i in range(2)]
        failing = ("--engine-arg", "error_rate=1", "--engine-arg", f"error_code={code}")
        bad = [numbered_sim_worker(procs, "decode", i, *failing)[0] for i in range(2, 4)]
        url = start_router(procs, default_model, [prefill], [*good, *bad], ["--log-level", "ERROR"]).address
        model = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]

        async def run() -> list[int]:
            async with httpx.AsyncClient(timeout=60) as client:
                gate = asyncio.Semaphore(4)

                async def one(i: int) -> int:
                    async with gate:
                        body = {"model": model, "prompt": f"request {i}", "max_tokens": 4}
                        return (await client.post(f"{url}/v1/completions", json=body)).status_code

                return await asyncio.gather(*(one(i) for i in range(requests)))

        codes = asyncio.run(run())
        samples = metric_samples(httpx.get(f"{url}/metrics").text)
    attempts = sum(
        v
        for (name, labels), v in samples.items()
        if name == "pdserve_router_placement_decisions_total" and ("role", "decode") in labels
    )
    print(f"\n{requests} requests, {attempts:.0f} decode attempts, {codes.count(200)} succeeded")
    assert attempts <= 1.2 * requests
    assert codes.count(200) >= 0.9 * requests, codes
