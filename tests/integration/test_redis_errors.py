"""Every way Redis refuses a call reaches the store's callers as ``StoreUnavailable``
with its kind: out of memory under ``maxmemory`` + ``noeviction``, READONLY (a
replica), NOPERM (an ACL user lacking commands), a wrong password, a stopped server.
The passwords in the URL never appear in an error."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis

from pdserve.state import StateStore, StoreUnavailable, WorkerRecord, make_store
from pdserve.types import WorkerId
from tests.helpers.net import free_port
from tests.redis_server import RedisServer

A = WorkerId("10.0.0.1:50051")


def record() -> WorkerRecord:
    return WorkerRecord(A, "prefill", "m", 16, "s", 4096, uuid.uuid4().hex)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    s = RedisServer(free_port(), tmp_path / "redis").start()
    yield s
    s.stop()


@pytest.fixture
async def store(server: RedisServer) -> AsyncIterator[StateStore]:
    s = make_store(server.url, timeout_s=5)
    yield s
    await s.close()


async def kind_of_failure(store: StateStore) -> str:
    with pytest.raises(StoreUnavailable) as caught:
        await store.register(record(), ttl_s=30)
    return caught.value.kind


async def test_out_of_memory(store: StateStore, server: RedisServer) -> None:
    admin = redis.Redis(port=server.port)
    admin.set("filler", "x" * 100_000)
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", 1)
    assert await kind_of_failure(store) == "oom"
    await store.entries()  # reads still answer
    admin.config_set("maxmemory", 0)
    await store.register(record(), ttl_s=30)


async def test_read_only_replica(store: StateStore, server: RedisServer, tmp_path: Path) -> None:
    primary = RedisServer(free_port(), tmp_path / "primary").start()
    try:
        redis.Redis(port=server.port).replicaof("127.0.0.1", primary.port)
        assert await kind_of_failure(store) == "readonly"
        redis.Redis(port=server.port).replicaof("NO", "ONE")
        await store.register(record(), ttl_s=30)
    finally:
        primary.stop()


async def test_acl_user_lacking_commands(server: RedisServer) -> None:
    admin = redis.Redis(port=server.port)
    admin.acl_setuser("reader", enabled=True, passwords=["+s3cret-pw"], keys=["*"], commands=["+@read", "+ping"])
    store = make_store(f"redis://reader:s3cret-pw@127.0.0.1:{server.port}/0", timeout_s=5)
    try:
        with pytest.raises(StoreUnavailable) as caught:
            await store.register(record(), ttl_s=30)
        assert caught.value.kind == "noperm"
        assert "s3cret-pw" not in str(caught.value)
        with pytest.raises(StoreUnavailable) as caught:
            await store.heartbeat(A, ttl_s=30)  # a script (EVALSHA) it may not run
        assert caught.value.kind == "noperm"
    finally:
        await store.close()


async def test_wrong_password_and_stopped_server(server: RedisServer) -> None:
    store = make_store(f"redis://default:wrong-pw@127.0.0.1:{server.port}/0", timeout_s=5)
    redis.Redis(port=server.port).config_set("requirepass", "right-pw")
    try:
        with pytest.raises(StoreUnavailable) as caught:
            await store.entries()
        assert caught.value.kind == "auth" and "wrong-pw" not in str(caught.value)
    finally:
        await store.close()
    server.stop()
    store = make_store(f"redis://default:right-pw@127.0.0.1:{server.port}/0", timeout_s=5)
    try:
        with pytest.raises(StoreUnavailable) as caught:
            await store.ping()
        assert caught.value.kind == "connection" and "right-pw" not in str(caught.value)
    finally:
        await store.close()
