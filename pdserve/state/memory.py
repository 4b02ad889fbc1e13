"""In-process StateStore: the embedded default (one router, no Redis)."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence

from pdserve.state.base import WorkerRecord, prefix_lengths, valid_records
from pdserve.types import BlockHash, WorkerId


class MemoryStore:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._workers: dict[WorkerId, tuple[WorkerRecord, float]] = {}
        self._stored: defaultdict[tuple[str, BlockHash], set[WorkerId]] = defaultdict(set)
        self._owned: defaultdict[tuple[str, WorkerId], set[BlockHash]] = defaultdict(set)
        self._predicted: defaultdict[tuple[str, BlockHash], dict[WorkerId, float]] = defaultdict(dict)
        self._counters: dict[str, tuple[int, float]] = {}  # key → (value, expiry)
        self._sweep_at = 0.0  # next pass over predictions nobody asked for again

    async def register(self, record: WorkerRecord, ttl_s: float) -> None:
        self._workers[record.worker_id] = (record, self._clock() + ttl_s)

    async def heartbeat(self, worker_id: WorkerId, ttl_s: float) -> bool:
        entry = self._workers.get(worker_id)
        if entry is None or entry[1] <= self._clock():
            self._workers.pop(worker_id, None)
            return False
        self._workers[worker_id] = (entry[0], self._clock() + ttl_s)
        return True

    async def deregister(self, worker_id: WorkerId) -> None:
        entry = self._workers.pop(worker_id, None)
        models = {m for (m, w) in self._owned if w == worker_id}
        if entry is not None:
            models.add(entry[0].model)
        for model in models:
            await self.replace_blocks(model, worker_id, ())

    async def entries(self) -> list[str]:
        now = self._clock()
        for worker_id in [w for w, (_, exp) in self._workers.items() if exp <= now]:
            await self.deregister(worker_id)  # its blocks go with it, as Redis's expire
        return [record.to_json() for record, _ in self._workers.values()]

    async def workers(self) -> list[WorkerRecord]:
        return valid_records(await self.entries())

    async def add_blocks(self, model: str, worker_id: WorkerId, hashes: Sequence[BlockHash]) -> None:
        for h in hashes:
            self._stored[(model, h)].add(worker_id)
        self._owned[(model, worker_id)].update(hashes)

    async def remove_blocks(self, model: str, worker_id: WorkerId, hashes: Sequence[BlockHash]) -> None:
        owned = self._owned[(model, worker_id)]
        for h in hashes:
            holders = self._stored.get((model, h))
            if holders is not None:
                holders.discard(worker_id)
                if not holders:
                    del self._stored[(model, h)]
            owned.discard(h)

    async def replace_blocks(self, model: str, worker_id: WorkerId, hashes: Sequence[BlockHash]) -> None:
        await self.remove_blocks(model, worker_id, list(self._owned.pop((model, worker_id), ())))
        if hashes:
            await self.add_blocks(model, worker_id, hashes)

    async def predict(self, model: str, worker_id: WorkerId, hashes: Sequence[BlockHash], ttl_s: float) -> None:
        now = self._clock()
        if now >= self._sweep_at:  # at most once a TTL: expired entries of prefixes never matched again
            self._sweep_at = now + ttl_s
            for key in list(self._predicted):
                live = {w: exp for w, exp in self._predicted[key].items() if exp > now}
                if live:
                    self._predicted[key] = live
                else:
                    del self._predicted[key]
        expires = now + ttl_s
        for h in hashes:
            self._predicted[(model, h)][worker_id] = expires

    async def match(self, model: str, hashes: Sequence[BlockHash]) -> dict[WorkerId, int]:
        now = self._clock()
        expired = {w for w, (_, exp) in self._workers.items() if exp <= now}
        for worker_id in expired:
            await self.deregister(worker_id)
        holders: list[set[WorkerId]] = []
        for h in hashes:
            held = set(self._stored.get((model, h), ()))
            predicted = self._predicted.get((model, h))
            if predicted:
                for w in [w for w, exp in predicted.items() if exp <= now]:
                    del predicted[w]
                held.update(predicted)
            if not held:
                break
            holders.append(held)
        return prefix_lengths(holders)

    async def count(self, key: str, amount: int, window_s: float) -> int:
        now = self._clock()
        if len(self._counters) > 4096:  # expired windows are dropped now and then
            self._counters = {k: v for k, v in self._counters.items() if v[1] > now}
        value, expires = self._counters.get(key, (0, 0.0))
        if expires <= now:
            value, expires = 0, now + window_s
        self._counters[key] = (value + amount, expires)
        return value + amount

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None
