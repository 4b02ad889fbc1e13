"""A shared store with a local fallback: routers keep serving while Redis is down.

Writes go to the local ``MemoryStore`` always and to the shared store when it
answers; reads come from the shared store, or from the local view when it does
not (this router's own predictions, the last registry it read). After a
failure the shared store is skipped for ``retry_s`` (a circuit breaker: no
request waits on a dead Redis) and then tried again; ``on_change`` is told of
every transition (metrics, logs). Nothing needs replaying on recovery: workers
re-register and rewrite their block sets themselves (pdserve.kv.feed).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from pdserve.state.base import StateStore, StoreUnavailable, WorkerRecord, valid_records
from pdserve.state.memory import MemoryStore
from pdserve.types import BlockHash, WorkerId

log = logging.getLogger(__name__)
T = TypeVar("T")


class FallbackStore:
    def __init__(
        self,
        shared: StateStore,
        retry_s: float = 1.0,
        on_change: Callable[[bool], None] | None = None,
        on_error: Callable[[str], None] | None = None,
        on_call: Callable[[str, float], None] | None = None,
    ) -> None:
        self.shared = shared
        self.local = MemoryStore()
        self.up = True
        self.down_kind = ""  # while down: its latest failure's StoreUnavailable.kind, for /health
        self._retry_s = retry_s
        self._retry_at = 0.0
        self._on_change = on_change
        self._on_error = on_error  # told each failure's kind (StoreUnavailable.kind): metrics
        self._on_call = on_call  # told each shared call's operation and seconds, failed ones too: metrics
        self._last_entries: list[str] = []

    async def _try(self, op: str, call: Callable[[], Awaitable[T]]) -> T:
        if not self.up and time.monotonic() < self._retry_at:
            raise StoreUnavailable("shared store marked down")
        start = time.perf_counter()
        try:
            result = await call()
        except StoreUnavailable as exc:
            if self._on_error is not None:
                self._on_error(exc.kind)
            self._set(False, str(exc), exc.kind)
            raise
        finally:
            if self._on_call is not None:
                self._on_call(op, time.perf_counter() - start)
        self._set(True)
        return result

    def _set(self, up: bool, why: str = "", kind: str = "") -> None:
        self.down_kind = kind
        if not up:
            self._retry_at = time.monotonic() + self._retry_s
        if up == self.up:
            return
        self.up = up
        if up:
            log.info("shared state store is back; serving from the shared view")
        else:
            log.warning("shared state store failing (%s); serving from this router's local view", why)
        if self._on_change is not None:
            self._on_change(up)

    async def register(self, record: WorkerRecord, ttl_s: float) -> None:
        await self.local.register(record, ttl_s)
        await self._try("register", lambda: self.shared.register(record, ttl_s))

    async def heartbeat(self, worker_id: WorkerId, ttl_s: float) -> bool:
        await self.local.heartbeat(worker_id, ttl_s)
        return await self._try("heartbeat", lambda: self.shared.heartbeat(worker_id, ttl_s))

    async def deregister(self, worker_id: WorkerId) -> None:
        await self.local.deregister(worker_id)
        await self._try("deregister", lambda: self.shared.deregister(worker_id))

    async def entries(self) -> list[str]:
        try:
            self._last_entries = await self._try("entries", self.shared.entries)
        except StoreUnavailable:
            pass  # the registry as last seen
        return list(self._last_entries)

    async def workers(self) -> list[WorkerRecord]:
        return valid_records(await self.entries())

    async def add_blocks(self, model: str, worker_id: WorkerId, hashes: Sequence[BlockHash]) -> None:
        await self.local.add_blocks(model, worker_id, hashes)
        await self._try("add_blocks", lambda: self.shared.add_blocks(model, worker_id, hashes))

    async def remove_blocks(self, model: str, worker_id: WorkerId, hashes: Sequence[BlockHash]) -> None:
        await self.local.remove_blocks(model, worker_id, hashes)
        await self._try("remove_blocks", lambda: self.shared.remove_blocks(model, worker_id, hashes))

    async def replace_blocks(self, model: str, worker_id: WorkerId, hashes: Sequence[BlockHash]) -> None:
        await self.local.replace_blocks(model, worker_id, hashes)
        await self._try("replace_blocks", lambda: self.shared.replace_blocks(model, worker_id, hashes))

    async def predict(self, model: str, worker_id: WorkerId, hashes: Sequence[BlockHash], ttl_s: float) -> None:
        await self.local.predict(model, worker_id, hashes, ttl_s)
        await self._try("predict", lambda: self.shared.predict(model, worker_id, hashes, ttl_s))

    async def match(self, model: str, hashes: Sequence[BlockHash]) -> dict[WorkerId, int]:
        try:
            return await self._try("match", lambda: self.shared.match(model, hashes))
        except StoreUnavailable:
            return await self.local.match(model, hashes)

    async def count(self, key: str, amount: int, window_s: float) -> int:
        """The shared counter; while it is unreachable, this router's own count."""
        local = await self.local.count(key, amount, window_s)
        try:
            return await self._try("count", lambda: self.shared.count(key, amount, window_s))
        except StoreUnavailable:
            return local

    async def ping(self) -> None:
        await self._try("ping", self.shared.ping)

    async def close(self) -> None:
        await self.shared.close()
