"""Every way Redis refuses a call reaches the store's callers as ``StoreUnavailable``
with its kind: out of memory under ``maxmemory`` + ``noeviction``, READONLY (a
replica), NOPERM (an ACL user lacking commands), a wrong password, a stopped server.
The passwords in the URL never appear in an error. Then the same faults under load on a
sim fleet: no request fails, and the workers are registered again within a TTL."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from pdserve.state import StateStore, StoreUnavailable, WorkerRecord, make_store
from pdserve.tools.fleet import start_router
from pdserve.tools.procs import Procs
from pdserve.types import WorkerId
from tests.factories import metric_samples
from tests.helpers.net import free_port
from tests.helpers.simfleet import ZERO, start_sim
from tests.helpers.simload import one
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
    store = make_store(server.url, timeout_s=5, password="right-pw")  # --state-password-file: not in the URL
    try:
        await store.register(record(), ttl_s=30)
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


# --- the same errors under load, on a sim fleet that finds itself through Redis -------------

TTL_S = 10.0  # the workers' heartbeat TTL (the default)
PHASE_S = 4.0  # each fault lasts this long (shorter than a TTL: a router keeps its pools)
USER, PASSWORD = "pdserve", "fleet-pw-1"


@dataclass(frozen=True)
class ErrorFleet:
    url: str
    model: str
    server: RedisServer
    workers: tuple[str, ...]
    store_url: str


@pytest.fixture
def fleet(tmp_path: Path, default_model: Path, server: RedisServer) -> Iterator[ErrorFleet]:
    admin = redis.Redis(port=server.port)
    admin.acl_setuser(USER, enabled=True, passwords=[f"+{PASSWORD}"], keys=["*"], commands=["+@all"])
    url = f"redis://{USER}:{PASSWORD}@127.0.0.1:{server.port}/0"
    with Procs(tmp_path) as procs:
        registered = ("--state-url", url, "--heartbeat-ttl", str(int(TTL_S)))
        workers = tuple(start_sim(procs, role, profile=ZERO, extra=registered)[0] for role in ("prefill", "decode"))
        router = start_router(procs, default_model, args=["--state-url", url, "--log-level", "WARNING"])
        model = httpx.get(f"{router.address}/v1/models").json()["data"][0]["id"]
        yield ErrorFleet(router.address, model, server, workers, url)
        assert PASSWORD not in (tmp_path / "router.log").read_text()  # never logged


async def registered_within(fleet: ErrorFleet, bound_s: float) -> float:
    store = make_store(fleet.store_url, timeout_s=5)
    start = time.monotonic()
    try:
        while True:
            with contextlib.suppress(StoreUnavailable):
                if {r.worker_id for r in await store.workers()} == set(fleet.workers):
                    return time.monotonic() - start
            assert time.monotonic() - start < bound_s, "workers did not re-register within a TTL"
            await asyncio.sleep(0.2)
    finally:
        await store.close()


def faults(server: RedisServer, primary: RedisServer) -> dict[str, tuple[Callable[[], object], Callable[[], object]]]:
    admin = redis.Redis(port=server.port)
    return {
        "oom": (
            lambda: (admin.config_set("maxmemory-policy", "noeviction"), admin.config_set("maxmemory", 1)),
            lambda: admin.config_set("maxmemory", 0),
        ),
        "readonly": (  # a replica of an empty primary: read-only, and it loses every key
            lambda: admin.replicaof("127.0.0.1", primary.port),
            lambda: admin.replicaof("NO", "ONE"),
        ),
        "noperm": (
            lambda: admin.acl_setuser(USER, enabled=True, reset_keys=True, commands=["-@all", "+ping"]),
            lambda: admin.acl_setuser(USER, enabled=True, keys=["*"], commands=["+@all"]),
        ),
    }


async def healthy_again(client: httpx.AsyncClient, url: str) -> dict:
    """/health's body once it reads ok again (the router retries the store every second)."""
    deadline = time.monotonic() + TTL_S
    while (body := (await client.get(f"{url}/health")).json()) != {"status": "ok"}:
        assert body["status"] == "degraded" and time.monotonic() < deadline, body
        await asyncio.sleep(0.2)
    return body


async def under_load(fleet: ErrorFleet, primary: RedisServer) -> tuple[list[str], dict[str, float], dict]:
    failures: list[str] = []
    recovered: dict[str, float] = {}
    done = asyncio.Event()
    sent = 0
    async with httpx.AsyncClient(timeout=60) as client:

        async def user(seed: int) -> None:
            nonlocal sent
            rng = random.Random(seed)
            while not done.is_set():
                result = await one(client, fleet.url, fleet.model, [rng.randrange(300, 1000) for _ in range(200)])
                sent += 1
                if isinstance(result, str):
                    failures.append(result)

        users = [asyncio.create_task(user(i)) for i in range(2)]
        try:
            for name, (start, stop) in faults(fleet.server, primary).items():
                start()
                await asyncio.sleep(PHASE_S)
                stop()
                recovered[name] = await registered_within(fleet, TTL_S)
            health = await healthy_again(client, fleet.url)
        finally:
            done.set()
            await asyncio.gather(*users)
    metrics = metric_samples(httpx.get(f"{fleet.url}/metrics").text)
    return failures, recovered, {"sent": sent, "health": health, "metrics": metrics}


def test_oom_readonly_and_noperm_under_load_fail_no_request(fleet: ErrorFleet, tmp_path: Path) -> None:
    primary = RedisServer(free_port(), tmp_path / "primary").start()
    try:
        failures, recovered, seen = asyncio.run(under_load(fleet, primary))
    finally:
        primary.stop()
    print(f"\nSUMMARY redis errors under load: {seen['sent']} requests, re-registered after {recovered}")
    assert failures == [], failures[:3]
    assert seen["sent"] >= 50
    assert set(recovered) == {"oom", "readonly", "noperm"}  # each within TTL_S of recovery
    errors = {
        dict(labels)["kind"]
        for (name, labels), _ in seen["metrics"].items()
        if name.startswith("pdserve_router_state_store_errors")
    }
    assert {"oom", "readonly", "noperm"} <= errors, errors  # counted by kind (placement writes its predictions)
    assert seen["health"] == {"status": "ok"}
    sizes = {dict(lb)["role"]: v for (n, lb), v in seen["metrics"].items() if n == "pdserve_router_workers"}
    assert sizes == {"prefill": 1, "decode": 1}
