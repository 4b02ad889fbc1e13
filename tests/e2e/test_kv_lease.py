"""A prefill whose decode side never arrives: the prefill engine frees the prompt's KV
blocks when its lease (``--kv-lease-s``, NixlConnector's ``kv_lease_duration``) runs out,
or at once when a decode worker releases them (DecodeWorker.Release, as the router does
for a decode that failed or was cancelled before its first token).

Real workers (vLLM CPU, the default model): the session cluster's first prefill worker,
started with a ``--kv-lease-s`` of KV_LEASE_S, and its decode worker (engine starts are
the expensive part on CPU). Prefill RPCs go straight to the prefill worker and are never
decoded. vLLM stamps the lease when the prefill finishes and checks it on every engine
step (the engine keeps stepping while it holds finished requests' blocks), so unreleased
blocks come back about one lease after the prefill.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from pdserve.engine.base import EngineLoad
from pdserve.rpc.convert import load_from_pb
from pdserve.v1 import worker_pb2 as pb
from pdserve.v1 import worker_pb2_grpc as pb_grpc
from tests.helpers.cluster import KV_LEASE_S, Cluster

pytestmark = pytest.mark.engine

LEASE_S = KV_LEASE_S  # longer than vLLM's default (30 s): a lease that did not apply fails the lower bound
# The lease is checked between engine steps and a step already queued when the prefill
# finished delays it (vLLM rebases the deadline onto the worker's clock, lengthening it);
# then the freeing step's stats reach Load. Seconds, on 2 cores busy with other work.
SLACK_S = 30.0
PROMPTS, PROMPT_TOKENS = 3, 400  # 4 blocks of 128 each (3 full) per request, no shared prefix


@dataclass(frozen=True)
class PdWorker:
    addr: str
    log: Path  # where its output goes: the cluster's log, shared by all its processes


@pytest.fixture(scope="module")
def pd_pair(cluster: Cluster) -> tuple[PdWorker, PdWorker]:
    """The session cluster's first prefill worker and its decode worker."""
    assert LEASE_S > 30, "vLLM's default lease would pass these tests unapplied"
    return PdWorker(cluster.prefill_addrs[0], cluster.log), PdWorker(cluster.decode_addr, cluster.log)


async def _load(addr: str) -> EngineLoad:
    async with grpc.aio.insecure_channel(addr) as ch:
        # Load asks the engine core between steps; a prefill step can take seconds here.
        return load_from_pb(await pb_grpc.PrefillWorkerStub(ch).Load(pb.LoadRequest(), timeout=30))


async def _kv_blocks(addr: str) -> int:
    async with grpc.aio.insecure_channel(addr) as ch:
        info = await pb_grpc.PrefillWorkerStub(ch).Info(pb.InfoRequest(), timeout=5)
    return info.kv_capacity_tokens // info.block_size


async def _prefill_all(addr: str, prompts: dict[str, list[int]]) -> list[str]:
    """Prefill every prompt; their kv_transfer_params_json, in order."""
    sampling = pb.SamplingParams(max_tokens=1, temperature=0, top_p=1)
    async with grpc.aio.insecure_channel(addr) as ch:
        stub = pb_grpc.PrefillWorkerStub(ch)
        replies = await asyncio.gather(
            *(
                stub.Prefill(pb.PrefillRequest(request_id=rid, prompt_token_ids=ids, sampling=sampling), timeout=120)
                for rid, ids in prompts.items()
            )
        )
    handles = [json.loads(r.kv_transfer_params_json) for r in replies]
    assert all(h["do_remote_prefill"] and h["remote_block_ids"] for h in handles), handles
    return [r.kv_transfer_params_json for r in replies]


async def _decode(addr: str, request_id: str, prompt: list[int], kv_transfer_params_json: str) -> None:
    sampling = pb.SamplingParams(max_tokens=1, temperature=0, top_p=1)
    req = pb.DecodeRequest(
        request_id=request_id,
        prompt_token_ids=prompt,
        sampling=sampling,
        kv_transfer_params_json=kv_transfer_params_json,
    )
    async with grpc.aio.insecure_channel(addr) as ch:
        chunks = [c async for c in pb_grpc.DecodeWorkerStub(ch).Decode(req, timeout=120)]
    assert chunks[-1].finish_reason == pb.FINISH_REASON_LENGTH, chunks


async def _release_all(addr: str, handles: dict[str, str]) -> None:
    async with grpc.aio.insecure_channel(addr) as ch:
        stub = pb_grpc.DecodeWorkerStub(ch)
        await asyncio.gather(
            *(
                stub.Release(pb.ReleaseRequest(request_id=rid, kv_transfer_params_json=params), timeout=30)
                for rid, params in handles.items()
            )
        )


def _random_prompts(prefix: str, seed: int) -> dict[str, list[int]]:
    rng = random.Random(seed)
    return {f"{prefix}-{i}": [rng.randrange(1000, 40000) for _ in range(PROMPT_TOKENS)] for i in range(PROMPTS)}


def test_undecoded_prefill_kv_is_freed_when_the_lease_runs_out(pd_pair: tuple[PdWorker, PdWorker]) -> None:
    prefill_worker = pd_pair[0]
    addr = prefill_worker.addr
    blocks = asyncio.run(_kv_blocks(addr)) - 1  # vLLM's usage leaves out its null block
    baseline = asyncio.run(_load(addr)).kv_cache_usage
    prompts = _random_prompts("lease", 11)

    sent = time.monotonic()
    asyncio.run(_prefill_all(addr, prompts))
    answered = time.monotonic()
    held = asyncio.run(_load(addr)).kv_cache_usage
    assert time.monotonic() - sent < LEASE_S, "the prefills took longer than the lease; raise LEASE_S"
    # Every prompt's blocks are held: no lease can have run out yet.
    assert round((held - baseline) * blocks) >= PROMPTS * -(-PROMPT_TOKENS // 128), (baseline, held, blocks)

    first_freed, usage = _wait_for_release(addr, held, baseline, deadline=answered + LEASE_S + SLACK_S)
    assert usage == baseline
    # Not freed by anything but the lease: a lease starts when its prefill finishes
    # (after `sent`), and Load's usage lags the engine, never leads it.
    assert first_freed - sent >= LEASE_S, f"blocks freed {first_freed - sent:.1f}s after sending"
    assert _expired_in_log(prefill_worker.log, set(prompts)) == set(prompts)


def test_prefill_kv_a_decode_worker_releases_is_freed_long_before_the_lease(pd_pair: tuple[PdWorker, PdWorker]) -> None:
    prefill, decode = pd_pair
    blocks = asyncio.run(_kv_blocks(prefill.addr)) - 1
    baseline = asyncio.run(_load(prefill.addr)).kv_cache_usage
    # One real pull first: the decode engine sends a release's notice from its next engine
    # step once it has a NIXL handshake with the prefill engine, and an idle one that has
    # none would make it at its next request (vLLM 0.32: nixl/pull_worker.py
    # start_load_kv drains handshake-ready reads only when the engine steps).
    warm = _random_prompts("warm", 13)
    (handle,) = asyncio.run(_prefill_all(prefill.addr, dict(list(warm.items())[:1])))
    asyncio.run(_decode(decode.addr, "warm", next(iter(warm.values())), handle))
    prompts = _random_prompts("release", 12)

    sent = time.monotonic()
    handles = asyncio.run(_prefill_all(prefill.addr, prompts))
    held = asyncio.run(_load(prefill.addr)).kv_cache_usage
    assert round((held - baseline) * blocks) >= PROMPTS * -(-PROMPT_TOKENS // 128), (baseline, held, blocks)

    asyncio.run(_release_all(decode.addr, dict(zip(prompts, handles, strict=True))))
    # Freed before any of their leases (started after `sent`) can have run out, and with
    # no expiry logged: only the release can have freed them.
    _, usage = _wait_for_release(prefill.addr, held, baseline, deadline=sent + LEASE_S)
    assert usage == baseline
    assert _expired_in_log(prefill.log, set(prompts), wait_s=0) == set()


def _wait_for_release(addr: str, held: float, baseline: float, deadline: float) -> tuple[float, float]:
    """Poll Load until KV usage is back at ``baseline``: (when it first fell below
    ``held``, the final usage)."""
    first: float | None = None
    usage = held
    while usage > baseline:
        assert time.monotonic() < deadline, f"KV still held ({usage:.4f} > {baseline:.4f})"
        time.sleep(0.2)
        usage = asyncio.run(_load(addr)).kv_cache_usage
        if first is None and usage < held:
            first = time.monotonic()
    assert first is not None
    return first, usage


def _expired_in_log(log: Path, request_ids: set[str], wait_s: float = 30) -> set[str]:
    """Our request ids in vLLM's "Releasing expired KV blocks" warnings (it appends
    a suffix to each id); waits up to ``wait_s`` for the engine process's output."""
    found: set[str] = set()
    deadline = time.monotonic() + wait_s
    while True:
        text = log.read_text(errors="replace")
        found = {
            rid
            for rid in request_ids
            if re.search(rf"Releasing expired KV blocks for request {rid}-\w+ which were retrieved by 0 ", text)
        }
        if found == request_ids or time.monotonic() >= deadline:
            return found
        time.sleep(0.2)
