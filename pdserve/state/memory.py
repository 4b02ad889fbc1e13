"""In-process StateStore: the embedded default (one router, no Redis), and every router's
local view (``FallbackStore``). Stored blocks live in a ``BlockIndex`` (hash → bitset of
holders); predictions, short-lived and few, in a dict of their own."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence

from pdserve.state.base import WorkerRecord, valid_records
from pdserve.state.block_index import BlockIndex
from pdserve.types import BlockHash, WorkerId


class MemoryStore:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._workers: dict[WorkerId, tuple[WorkerRecord, float]] = {}
        self._index = BlockIndex()
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
        models = set(self._index.models(worker_id))
        if entry is not None:
            models.add(entry[0].model)
        for model in models:
            self._index.clear(model, worker_id)

    async def entries(self) -> list[str]:
        now = self._clock()
        for worker_id in [w for w, (_, exp) in self._workers.items() if exp <= now]:
            await self.deregister(worker_id)  # its blocks go with it, as Redis's expire
        return [record.to_json() for record, _ in self._workers.values()]

    async def workers(self) -> list[WorkerRecord]:
        return valid_records(await self.entries())

    async def add_blocks(self, model: str, worker_id: WorkerId, hashes: Sequence[BlockHash]) -> None:
        self._index.add(model, worker_id, hashes)

    async def remove_blocks(self, model: str, worker_id: WorkerId, hashes: Sequence[BlockHash]) -> None:
        self._index.remove(model, worker_id, hashes)

    async def replace_blocks(self, model: str, worker_id: WorkerId, hashes: Sequence[BlockHash]) -> None:
        self._index.clear(model, worker_id)
        self._index.add(model, worker_id, hashes)

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
        for worker_id in [w for w, (_, exp) in self._workers.items() if exp <= now]:
            await self.deregister(worker_id)
        # One walk down the prompt over holder bitsets: ``alive`` = the workers holding every
        # block so far; a worker leaving it at block i held i leading blocks. Workers known only
        # from predictions get bits past the index's (``extra``), for this call only.
        table, extra = self._index.table(model), _Extra(len(self._index.bits))
        out: dict[WorkerId, int] = {}
        alive, walked = -1, 0
        for h in hashes:
            held = table.get(h, 0)
            predicted = self._predicted.get((model, h))
            if predicted:
                held |= self._predicted_bits(predicted, now, extra)
            if walked and alive & ~held:
                out.update(dict.fromkeys(self._names(alive & ~held, extra), walked))
            alive &= held
            if not alive:
                break
            walked += 1
        if alive and walked:
            out.update(dict.fromkeys(self._names(alive, extra), walked))
        return out

    def _predicted_bits(self, predicted: dict[WorkerId, float], now: float, extra: _Extra) -> int:
        mask = 0
        for worker_id, expires in list(predicted.items()):
            if expires <= now:
                del predicted[worker_id]
                continue
            position = self._index.bits.get(worker_id)
            mask |= 1 << (extra.position(worker_id) if position is None else position)
        return mask

    def _names(self, mask: int, extra: _Extra) -> list[WorkerId]:
        known = mask & ((1 << extra.base) - 1)
        return [*self._index.bits.workers(known), *extra.workers(mask >> extra.base)]

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


class _Extra:
    """Bit positions from ``base`` up for the workers one ``match`` meets only in predictions."""

    def __init__(self, base: int) -> None:
        self.base = base
        self._ids: list[WorkerId] = []
        self._position: dict[WorkerId, int] = {}

    def position(self, worker_id: WorkerId) -> int:
        if worker_id not in self._position:
            self._position[worker_id] = self.base + len(self._ids)
            self._ids.append(worker_id)
        return self._position[worker_id]

    def workers(self, mask: int) -> list[WorkerId]:
        """The workers of ``mask`` shifted down by ``base``."""
        return [w for i, w in enumerate(self._ids) if mask >> i & 1]
