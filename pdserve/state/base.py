"""The StateStore seam: worker registry + KV block index.

Callers: the router (placement reads, predicted writes, registry reads), the
workers (register/heartbeat, block writes from their KV events) and, for the
embedded store, the router's event followers. All methods are coroutines on
one event loop per process; several processes may share one Redis store.

Contract (tests/contract/test_state_store.py runs it against every store):
- ``register`` upserts a worker with a TTL; ``heartbeat`` refreshes it (and
  re-asserts its membership of the registry) and returns False once it expired
  (the worker must register again); ``entries`` returns the live workers' raw
  entries as ``register`` wrote them, unjudged (the reader validates and
  verifies them: ``WorkerRecord.from_json``, pdserve.state.trust); ``workers``
  the valid records among them; ``deregister`` removes the record and its blocks.
- A worker's block set lives as long as its registration: blocks of a worker
  that stopped heart-beating are no longer matched once its TTL has passed.
- Blocks are namespaced by model: a hash only ever matches within its model.
- ``match(model, hashes)`` → for each worker, how many LEADING blocks of
  ``hashes`` it holds (stored or predicted and unexpired); workers holding
  none are absent. The value is in [1, len(hashes)].
- ``predict`` entries expire after ``ttl_s``; ``add_blocks`` entries stay until
  removed or cleared. Adding a present block or removing an absent one is a no-op.
- ``count(key, amount, window_s)`` adds ``amount`` (may be negative) to a
  counter and returns its new value; a counter starts at 0 on its first add
  and is gone ``window_s`` after it (a fixed window: rate limits).
- Every method either completes or raises ``StoreUnavailable`` within the
  store's timeout — whatever the backend's error (unreachable, timed out, out
  of memory, read-only, refused by an ACL); a failed write may have been
  partly applied (callers resynchronise with ``replace_blocks``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import MISSING, asdict, dataclass, fields, replace
from typing import Any, Protocol

from pdserve.types import BlockHash, WorkerId


class StoreUnavailable(Exception):
    """The backing store could not serve a call: unreachable, too slow, or refusing it.
    ``kind`` names the cause for metrics (a small fixed set: ``connection``, ``timeout``,
    ``tls``, ``oom``, ``readonly``, ``misconf``, ``noperm``, ``auth``, ``response``)."""

    def __init__(self, message: str, kind: str = "connection") -> None:
        super().__init__(message)
        self.kind = kind


class MalformedRecord(ValueError):
    """A registry entry that is not a valid ``WorkerRecord`` (JSON, types, ranges)."""


# Bounds of a sane record: a value outside them is a corrupt or hostile entry, never a worker.
_LIMITS = {"block_size": (1, 1 << 16), "capacity_tokens": (0, 1 << 40), "ttl_ms": (0, 86_400_000)}
_MAX_TEXT = 512
ROLES = ("prefill", "decode")


@dataclass(frozen=True)
class WorkerRecord:
    worker_id: WorkerId  # the worker's gRPC address, host:port
    role: str  # "prefill" | "decode"
    model: str  # served model name
    block_size: int  # must match the block size the router hashes prompts with
    hash_scheme: str  # pdserve.kv.hashing.SCHEME of the process that feeds the index
    capacity_tokens: int
    instance_id: str  # new on every start: a restart is told apart from a heartbeat
    kv_events: str = ""  # ZMQ endpoint of the engine's KV event publisher ("" = none)
    kv_replay: str = ""  # its replay endpoint
    ttl_ms: int = 0  # its heartbeat TTL: how long routers wait before dropping a missing worker (0 = theirs)
    signature: str = ""  # HMAC of ``payload()`` under the registry secret ("" = unsigned)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def payload(self) -> bytes:
        """What the signature covers: every other field, canonically encoded."""
        return json.dumps(asdict(replace(self, signature="")), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, text: str | bytes) -> WorkerRecord:
        """The record an entry holds; ``MalformedRecord`` for anything else. Unknown fields
        are ignored (a newer worker's record still reads)."""
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise MalformedRecord(f"not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise MalformedRecord("not a JSON object")
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in data:
                if f.default is MISSING:
                    raise MalformedRecord(f"{f.name}: missing")
                continue
            values[f.name] = _checked(f.name, data[f.name], int if f.type == "int" else str)
        record = cls(**values)
        record._check()
        return record

    def _check(self) -> None:
        host, sep, port = self.worker_id.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or " " in host:
            raise MalformedRecord(f"worker_id: {self.worker_id!r} is not host:port")
        if self.role not in ROLES:
            raise MalformedRecord(f"role: {self.role!r} is not one of {list(ROLES)}")
        for name in ("model", "hash_scheme", "instance_id"):
            if not getattr(self, name):
                raise MalformedRecord(f"{name}: empty")
        for name in ("kv_events", "kv_replay"):
            value = getattr(self, name)
            if value and not value.startswith(("tcp://", "ipc://")):
                raise MalformedRecord(f"{name}: {value!r} is not a ZMQ endpoint")


def _checked(name: str, value: Any, kind: type) -> Any:
    if type(value) is not kind:  # bool is an int to isinstance: never a block size
        raise MalformedRecord(f"{name}: expected {kind.__name__}, got {type(value).__name__}")
    if isinstance(value, int):
        low, high = _LIMITS[name]
        if not low <= value <= high:
            raise MalformedRecord(f"{name}: {value} outside [{low}, {high}]")
    elif isinstance(value, str) and len(value) > _MAX_TEXT:
        raise MalformedRecord(f"{name}: longer than {_MAX_TEXT} characters")
    return value


def valid_records(entries: Sequence[str]) -> list[WorkerRecord]:
    """The entries that are valid records (malformed ones left out)."""
    out = []
    for entry in entries:
        try:
            out.append(WorkerRecord.from_json(entry))
        except MalformedRecord:
            continue
    return out


class StateStore(Protocol):
    async def register(self, record: WorkerRecord, ttl_s: float) -> None: ...

    async def heartbeat(self, worker_id: WorkerId, ttl_s: float) -> bool: ...

    async def deregister(self, worker_id: WorkerId) -> None: ...

    async def entries(self) -> list[str]: ...

    async def workers(self) -> list[WorkerRecord]: ...

    async def add_blocks(self, model: str, worker_id: WorkerId, hashes: Sequence[BlockHash]) -> None: ...

    async def remove_blocks(self, model: str, worker_id: WorkerId, hashes: Sequence[BlockHash]) -> None: ...

    async def replace_blocks(self, model: str, worker_id: WorkerId, hashes: Sequence[BlockHash]) -> None:
        """Make ``hashes`` the worker's whole block set (empty = clear)."""
        ...

    async def predict(self, model: str, worker_id: WorkerId, hashes: Sequence[BlockHash], ttl_s: float) -> None: ...

    async def match(self, model: str, hashes: Sequence[BlockHash]) -> dict[WorkerId, int]: ...

    async def count(self, key: str, amount: int, window_s: float) -> int: ...

    async def ping(self) -> None:
        """Raise ``StoreUnavailable`` if the store cannot be reached."""
        ...

    async def close(self) -> None: ...
