"""One contract suite for every StateStore: in-memory and Redis (a real redis-server)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis

from pdserve.kv.hashing import block_hashes
from pdserve.state import StateStore, WorkerRecord, make_store
from pdserve.state.fallback import FallbackStore
from pdserve.types import WorkerId
from tests.redis_server import RedisServer

A, B = WorkerId("10.0.0.1:50051"), WorkerId("10.0.0.2:50051")


@pytest.fixture(params=["memory", "redis", "fallback"])
async def store(request: pytest.FixtureRequest, redis_server: RedisServer) -> AsyncIterator[StateStore]:
    if request.param == "memory":
        s = make_store("memory://")
    else:
        redis_server.flush(db=1)
        # The contract, not Redis's latency: a loaded 2-core box can take longer than the
        # router's 0.5 s budget to answer (seen: a read timing out beside two engines).
        s = make_store(redis_server.db_url(1), timeout_s=10)
        if request.param == "fallback":  # the router's wrapper, while Redis answers
            s = FallbackStore(s)
    yield s
    await s.close()


def record(worker: WorkerId, model: str = "m", role: str = "prefill") -> WorkerRecord:
    return WorkerRecord(worker, role, model, 16, "pdserve-blake2b64-v1", 4096, uuid.uuid4().hex)


def hashes(n: int, model: str = "m", salt: int = 0) -> list:
    return block_hashes(model, [salt + i for i in range(16 * n)], 16)


async def test_registry_round_trip_and_ttl(store: StateStore) -> None:
    await store.register(record(A), ttl_s=0.4)
    await store.register(record(B, role="decode"), ttl_s=30)
    assert {r.worker_id: r.role for r in await store.workers()} == {A: "prefill", B: "decode"}
    assert await store.heartbeat(A, ttl_s=0.4)
    await asyncio.sleep(0.6)  # A stops heart-beating
    assert [r.worker_id for r in await store.workers()] == [B]
    assert not await store.heartbeat(A, ttl_s=0.4)  # expired: must register again


async def test_record_survives_serialisation(store: StateStore) -> None:
    rec = WorkerRecord(A, "decode", "org/model:v2", 128, "s", 1 << 20, "i1", "tcp://h:1", "tcp://h:2")
    await store.register(rec, ttl_s=30)
    assert await store.workers() == [rec]


async def test_match_counts_leading_blocks_only(store: StateStore) -> None:
    h = hashes(4)
    await store.add_blocks("m", A, h[:3])
    await store.add_blocks("m", B, [h[0], h[2], h[3]])  # a hole at block 1
    assert await store.match("m", h) == {A: 3, B: 1}
    assert await store.match("m", h[1:]) == {A: 2}
    assert await store.match("m", hashes(2, salt=999)) == {}
    assert await store.match("m", []) == {}


async def test_models_never_match_each_other(store: StateStore) -> None:
    tokens = list(range(64))
    await store.add_blocks("m1", A, block_hashes("m1", tokens, 16))
    assert await store.match("m2", block_hashes("m2", tokens, 16)) == {}
    assert await store.match("m2", block_hashes("m1", tokens, 16)) == {}  # same hash, other namespace
    assert await store.match("m1", block_hashes("m1", tokens, 16)) == {A: 4}


async def test_remove_and_replace(store: StateStore) -> None:
    h = hashes(3)
    await store.add_blocks("m", A, h)
    await store.add_blocks("m", A, h[:1])  # idempotent
    await store.remove_blocks("m", A, [h[1]])
    await store.remove_blocks("m", A, hashes(1, salt=7))  # absent: no-op
    assert await store.match("m", h) == {A: 1}
    await store.replace_blocks("m", A, h[1:])
    assert await store.match("m", h) == {}
    assert await store.match("m", h[1:]) == {A: 2}
    await store.replace_blocks("m", A, [])
    assert await store.match("m", h[1:]) == {}


async def test_predictions_expire(store: StateStore) -> None:
    h = hashes(2)
    await store.add_blocks("m", A, h[:1])
    await store.predict("m", B, h, ttl_s=0.4)
    assert await store.match("m", h) == {A: 1, B: 2}
    await asyncio.sleep(0.6)
    assert await store.match("m", h) == {A: 1}


async def test_stored_and_predicted_blocks_make_one_prefix(store: StateStore) -> None:
    h = hashes(4)
    await store.add_blocks("m", A, [h[0], h[2]])
    await store.predict("m", A, h[1:2], ttl_s=30)  # the hole at block 1 is covered by a prediction
    await store.predict("m", B, h[:1], ttl_s=30)
    await store.add_blocks("m", B, h[1:])  # a predicted-only first block, stored after it
    assert await store.match("m", h) == {A: 3, B: 4}


async def test_a_long_prompt_is_walked_to_its_end(store: StateStore) -> None:
    """Past 1024 blocks (the Redis walk's chunk) a hole still ends the prefix where it is."""
    h = hashes(1100)
    await store.add_blocks("m", A, h)
    await store.add_blocks("m", B, h[:1050] + h[1051:])
    assert await store.match("m", h) == {A: 1100, B: 1050}


async def test_deregister_removes_record_and_blocks(store: StateStore) -> None:
    await store.register(record(A), ttl_s=30)
    await store.add_blocks("m", A, hashes(2))
    await store.add_blocks("m", B, hashes(2))
    await store.deregister(A)
    assert await store.workers() == []
    assert await store.match("m", hashes(2)) == {B: 2}


async def test_ping(store: StateStore) -> None:
    await store.ping()


async def test_counters_add_up_within_their_window_and_start_again_after(store: StateStore) -> None:
    key = f"k{uuid.uuid4().hex}"
    assert await store.count(key, 3, window_s=0.5) == 3
    assert await store.count(key, 4, window_s=0.5) == 7
    assert await store.count(key, -2, window_s=0.5) == 5  # a refund
    assert await store.count("other" + key, 1, window_s=0.5) == 1  # counters are independent
    await asyncio.sleep(0.7)
    assert await store.count(key, 1, window_s=0.5) == 1  # a new window


async def test_a_worker_that_stops_heart_beating_takes_its_blocks_with_it(store: StateStore) -> None:
    """Nothing a dead worker wrote outlives its TTL (the index needs no sweeper)."""
    await store.register(record(A), ttl_s=0.4)
    await store.register(record(B), ttl_s=30)
    await store.add_blocks("m", A, hashes(2))
    await store.add_blocks("m", B, hashes(1))
    assert await store.heartbeat(A, ttl_s=0.4)  # a heartbeat keeps the blocks alive too
    assert await store.match("m", hashes(2)) == {A: 2, B: 1}
    await asyncio.sleep(0.6)
    assert await store.match("m", hashes(2)) == {B: 1}


async def test_entries_are_the_records_as_written(store: StateStore) -> None:
    rec = record(A)
    await store.register(rec, ttl_s=30)
    assert [WorkerRecord.from_json(e) for e in await store.entries()] == [rec]


# --- Redis only: what the registry's key layout must guarantee ------------------------------


@pytest.fixture
async def redis_stores(redis_server: RedisServer) -> AsyncIterator[tuple[StateStore, StateStore]]:
    """Two stores on one database, in two namespaces (two clusters sharing a Redis)."""
    redis_server.flush(db=2)
    one = make_store(redis_server.db_url(2), timeout_s=10, namespace="cluster-a")
    two = make_store(redis_server.db_url(2), timeout_s=10, namespace="cluster-b")
    yield one, two
    await one.close()
    await two.close()


async def test_namespaces_are_disjoint(redis_stores: tuple[StateStore, StateStore]) -> None:
    one, two = redis_stores
    await one.register(record(A), ttl_s=30)
    await two.register(record(B), ttl_s=30)
    await one.add_blocks("m", A, hashes(2))
    await two.add_blocks("m", B, hashes(2))
    assert [r.worker_id for r in await one.workers()] == [A]
    assert [r.worker_id for r in await two.workers()] == [B]
    assert await one.match("m", hashes(2)) == {A: 2}
    assert await two.match("m", hashes(2)) == {B: 2}
    await one.deregister(B)  # not its worker: the other cluster's record stays
    assert [r.worker_id for r in await two.workers()] == [B]


async def test_a_heartbeat_puts_a_live_worker_back_in_the_registry(
    redis_stores: tuple[StateStore, StateStore], redis_server: RedisServer
) -> None:
    """The race SMEMBERS → MGET → SREM could lose a live worker from the set for good;
    whatever removed it, its next heartbeat re-adds it."""
    one, _ = redis_stores
    await one.register(record(A), ttl_s=30)
    raw = redis.Redis(port=redis_server.port, db=2)
    raw.srem("cluster-a:workers", A)
    assert await one.workers() == []
    assert await one.heartbeat(A, ttl_s=30)
    assert [r.worker_id for r in await one.workers()] == [A]


async def test_a_match_drops_workers_whose_block_set_expired_from_the_model_set(
    redis_stores: tuple[StateStore, StateStore], redis_server: RedisServer
) -> None:
    one, _ = redis_stores
    await one.add_blocks("m", A, hashes(2))
    await one.add_blocks("m", B, hashes(2))
    raw = redis.Redis(port=redis_server.port, db=2, decode_responses=True)
    raw.delete(f"cluster-a:o:m:{A}")  # as its TTL would
    assert await one.match("m", hashes(2)) == {B: 2}
    assert raw.smembers("cluster-a:m:m") == {B}


async def test_malformed_entries_are_returned_raw_and_left_out_of_workers(
    redis_stores: tuple[StateStore, StateStore], redis_server: RedisServer
) -> None:
    one, _ = redis_stores
    await one.register(record(A), ttl_s=30)
    raw = redis.Redis(port=redis_server.port, db=2)
    bad = {"x:1": "{not json", "y:1": '{"worker_id": "y:1", "role": "prefill"}', "z:1": "[1, 2]"}
    for worker, text in bad.items():
        raw.set(f"cluster-a:w:{worker}", text)
        raw.sadd("cluster-a:workers", worker)
    entries = await one.entries()
    assert len(entries) == 4 and set(bad.values()) <= set(entries)
    assert [r.worker_id for r in await one.workers()] == [A]
