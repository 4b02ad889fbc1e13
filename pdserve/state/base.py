"""The StateStore seam: worker registry + KV block index.

Callers: the router (placement reads, predicted writes, registry reads), the
workers (register/heartbeat, block writes from their KV events) and, for the
embedded store, the router's event followers. All methods are coroutines on
one event loop per process; several processes may share one Redis store.

Contract (tests/contract/test_state_store.py runs it against every store):
- ``register`` upserts a worker with a TTL; ``heartbeat`` refreshes it and
  returns False once it expired (the worker must register again); ``workers``
  returns live records only; ``deregister`` removes the record and its blocks.
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
  store's timeout; a failed write may have been partly applied (callers
  resynchronise with ``replace_blocks``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

from pdserve.types import BlockHash, WorkerId


class StoreUnavailable(Exception):
    """The backing store could not be reached within its timeout."""


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

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> WorkerRecord:
        data = json.loads(text)
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


def prefix_lengths(holders: Sequence[set[WorkerId]]) -> dict[WorkerId, int]:
    """Holders of each block, in prompt order → leading blocks held per worker."""
    out: dict[WorkerId, int] = {}
    alive = set(holders[0]) if holders else set()
    for i, held in enumerate(holders):
        alive &= held
        if not alive:
            break
        for worker in alive:
            out[worker] = i + 1
    return out


class StateStore(Protocol):
    async def register(self, record: WorkerRecord, ttl_s: float) -> None: ...

    async def heartbeat(self, worker_id: WorkerId, ttl_s: float) -> bool: ...

    async def deregister(self, worker_id: WorkerId) -> None: ...

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
