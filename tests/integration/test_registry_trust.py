"""A trusted registry: sim workers (real processes) sign their records with the registry
secret; a router with that secret (and a worker token) discovers them through a real
redis-server. Records it cannot verify — forged, unsigned, signed with another secret,
malformed — are skipped and counted; the address a forged record names never sees a
connection (so never the token), and discovery goes on past every bad entry."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis

from pdserve.kv.hashing import SCHEME
from pdserve.state import WorkerRecord
from pdserve.state.trust import RegistryTrust
from pdserve.tools.fleet import start_router
from pdserve.tools.procs import Procs
from tests.factories import metric_samples
from tests.helpers.net import free_port
from tests.helpers.simfleet import ZERO, start_sim
from tests.redis_server import RedisServer

SECRET = "registry-secret-1"
TOKEN = "worker-token-1"
TTL = ("--heartbeat-ttl", "3")


@dataclass
class Listener:
    """A TCP listener the test owns: counts every connection made to it."""

    sock: socket.socket = field(default_factory=socket.socket)
    accepted: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.sock.getsockname()[1]}"

    def start(self) -> Listener:
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        threading.Thread(target=self._serve, daemon=True).start()
        return self

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self.sock.close()


@dataclass(frozen=True)
class TrustedFleet:
    procs: Procs
    url: str
    model: str
    redis: RedisServer
    worker_args: tuple[str, ...]


def samples(url: str) -> dict:
    return metric_samples(httpx.get(f"{url}/metrics", timeout=10).text)


def rejected(url: str, reason: str) -> float:
    return samples(url).get(("pdserve_router_registry_rejected_total", (("reason", reason),)), 0.0)


def decode_workers(url: str) -> float:
    return sum(
        v for (n, labels), v in samples(url).items() if n == "pdserve_router_workers" and ("role", "decode") in labels
    )


@pytest.fixture
def fleet(tmp_path: Path, default_model: Path) -> Iterator[TrustedFleet]:
    server = RedisServer(free_port(), tmp_path / "redis").start()
    (tmp_path / "secret").write_text(f"{SECRET}\n")
    (tmp_path / "token").write_text(f"{TOKEN}\n")
    try:
        with Procs(tmp_path) as procs:
            shared = ("--state-url", server.url, "--registry-secret-file", str(tmp_path / "secret"))
            worker_args = (*shared, "--token-file", str(tmp_path / "token"), *TTL)
            for role in ("prefill", "decode"):
                start_sim(procs, role, profile=ZERO, extra=worker_args)
            args = [*shared, "--worker-token-file", str(tmp_path / "token"), "--log-level", "WARNING"]
            url = start_router(procs, default_model, args=args).address
            model = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
            yield TrustedFleet(procs, url, model, server, worker_args)
    finally:
        server.stop()


def plant(server: RedisServer, worker: str, entry: str) -> None:
    """Write an entry straight into the registry, as anyone with access to Redis could."""
    r = redis.Redis(port=server.port)
    r.set(f"pdserve:w:{worker}", entry, ex=600)
    r.sadd("pdserve:workers", worker)


def forged(address: str, model: str, signature: str = "") -> WorkerRecord:
    return WorkerRecord(address, "decode", model, 128, SCHEME, 1 << 20, uuid.uuid4().hex, signature=signature)


def completes(url: str, model: str) -> bool:
    resp = httpx.post(f"{url}/v1/completions", json={"model": model, "prompt": "hi", "max_tokens": 4}, timeout=30)
    return resp.status_code == 200


def test_a_forged_registration_gets_no_connection(fleet: TrustedFleet) -> None:
    listeners = [Listener().start() for _ in range(3)]
    try:
        unsigned, bad_sig, other_secret = (listener.address for listener in listeners)
        plant(fleet.redis, unsigned, forged(unsigned, fleet.model).to_json())
        plant(fleet.redis, bad_sig, forged(bad_sig, fleet.model, signature="00" * 32).to_json())
        plant(
            fleet.redis,
            other_secret,
            RegistryTrust(("not-the-secret",)).sign(forged(other_secret, fleet.model)).to_json(),
        )
        deadline = time.monotonic() + 20
        while rejected(fleet.url, "unsigned") < 3 or rejected(fleet.url, "bad_signature") < 6:
            assert time.monotonic() < deadline, samples(fleet.url)
            time.sleep(0.5)  # three refreshes (1 s apart) saw every forged entry
        assert [listener.accepted for listener in listeners] == [0, 0, 0]
        assert decode_workers(fleet.url) == 1
        assert all(completes(fleet.url, fleet.model) for _ in range(5))
        assert [listener.accepted for listener in listeners] == [0, 0, 0]
    finally:
        for listener in listeners:
            listener.close()


def test_malformed_entries_are_skipped_and_discovery_goes_on(fleet: TrustedFleet) -> None:
    good = json.loads(forged("127.0.0.1:1", fleet.model).to_json())
    plant(fleet.redis, "a:1", "{not json")
    plant(fleet.redis, "b:1", json.dumps({**good, "worker_id": "b:1", "block_size": "128"}))
    plant(fleet.redis, "c:1", json.dumps({**good, "worker_id": "c:1", "block_size": 10**9}))
    plant(fleet.redis, "d:1", json.dumps([1, 2, 3]))
    plant(fleet.redis, "e:1", "\xff" * 10)
    deadline = time.monotonic() + 20
    while rejected(fleet.url, "malformed") < 10:
        assert time.monotonic() < deadline, samples(fleet.url)
        time.sleep(0.5)
    start_sim(fleet.procs, "decode", "decode2", profile=ZERO, extra=fleet.worker_args)  # joins past them
    deadline = time.monotonic() + 60
    while decode_workers(fleet.url) != 2:
        assert time.monotonic() < deadline, samples(fleet.url)
        time.sleep(0.5)
    assert all(completes(fleet.url, fleet.model) for _ in range(5))
