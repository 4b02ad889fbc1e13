"""The in-process KV block index: block hash → bitset of the workers holding it.

``MemoryStore`` (and so every router's local view) keeps its stored blocks here.
The layout is for a million blocks over tens of workers (docs/BENCHMARKS.md §7):

- each worker holding blocks has a bit position (``WorkerBits``); a position is
  reused only after its worker holds nothing, so no stale bit names a new worker;
- per model, one ``dict`` block hash → int bitmask of holders: one entry per
  distinct block however many workers hold it (a dict of sets of worker-id
  strings cost ~4 times as much);
- per (model, worker), an append-only ``array('Q')`` of the hashes it was given,
  which is all that removing a worker's whole set (``clear``) needs. Entries
  for blocks removed since are skipped when read (their bit is clear) and the
  log is compacted once it is twice the worker's live count, so it stays at
  8-16 bytes per held block.

Block hashes must be 64-bit unsigned (pdserve.kv.hashing). Not thread-safe: one
event loop owns it, as it owns the store.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator, Sequence

from pdserve.types import BlockHash, WorkerId


class WorkerBits:
    """Worker id ↔ bit position, positions handed out lowest first and taken back."""

    def __init__(self) -> None:
        self._bit: dict[WorkerId, int] = {}
        self._ids: list[WorkerId | None] = []
        self._free: list[int] = []

    def get(self, worker_id: WorkerId) -> int | None:
        return self._bit.get(worker_id)

    def take(self, worker_id: WorkerId) -> int:
        bit = self._bit.get(worker_id)
        if bit is None:
            bit = min(self._free) if self._free else len(self._ids)
            if self._free:
                self._free.remove(bit)
                self._ids[bit] = worker_id
            else:
                self._ids.append(worker_id)
            self._bit[worker_id] = bit
        return bit

    def release(self, worker_id: WorkerId) -> None:
        bit = self._bit.pop(worker_id, None)
        if bit is not None:
            self._ids[bit] = None
            self._free.append(bit)

    def __len__(self) -> int:
        return len(self._ids)

    def workers(self, mask: int) -> Iterator[WorkerId]:
        """The workers whose bits are set in ``mask``."""
        while mask:
            low = mask & -mask
            worker = self._ids[low.bit_length() - 1]
            if worker is not None:
                yield worker
            mask ^= low


class BlockIndex:
    """Stored blocks per model and who holds them; ``MemoryStore`` is its one caller."""

    def __init__(self) -> None:
        self.bits = WorkerBits()
        self._held: dict[str, dict[BlockHash, int]] = {}  # model → hash → holders' bits
        self._log: dict[tuple[str, WorkerId], array] = {}  # hashes given to the worker (may hold removed ones)
        self._live: dict[tuple[str, WorkerId], int] = {}  # blocks the worker holds now, per model

    def add(self, model: str, worker_id: WorkerId, hashes: Sequence[BlockHash]) -> None:
        bit = 1 << self.bits.take(worker_id)
        table = self._held.setdefault(model, {})
        log = self._log.setdefault((model, worker_id), array("Q"))
        new = 0
        try:
            for h in hashes:
                mask = table.get(h, 0)
                if not mask & bit:
                    log.append(h)  # first: a hash that is not 64-bit unsigned raises before the table changes
                    table[h] = mask | bit
                    new += 1
        finally:  # what was applied stays counted
            self._live[(model, worker_id)] = self._live.get((model, worker_id), 0) + new
            self._settle(model, worker_id)

    def remove(self, model: str, worker_id: WorkerId, hashes: Sequence[BlockHash]) -> None:
        position, table = self.bits.get(worker_id), self._held.get(model)
        if position is None or table is None or (model, worker_id) not in self._live:
            return
        bit, gone = 1 << position, 0
        for h in hashes:
            mask = table.get(h, 0)
            if mask & bit:
                gone += 1
                if mask == bit:
                    del table[h]
                else:
                    table[h] = mask ^ bit
        self._live[(model, worker_id)] -= gone
        self._settle(model, worker_id)

    def clear(self, model: str, worker_id: WorkerId) -> None:
        """Remove every block the worker holds in ``model``."""
        log = self._log.get((model, worker_id))
        if log is not None:
            self.remove(model, worker_id, log)

    def models(self, worker_id: WorkerId) -> list[str]:
        """The models the worker holds blocks of."""
        return [m for (m, w) in self._live if w == worker_id]

    def holders(self, model: str, h: BlockHash) -> int:
        """Bitmask (``bits``) of the workers holding ``h`` in ``model``."""
        table = self._held.get(model)
        return 0 if table is None else table.get(h, 0)

    def table(self, model: str) -> dict[BlockHash, int]:
        """The model's hash → holders table, for a read-only walk (``MemoryStore.match``)."""
        return self._held.get(model, {})

    def live(self, model: str, worker_id: WorkerId) -> int:
        return self._live.get((model, worker_id), 0)

    def __len__(self) -> int:
        """Distinct (model, block) entries."""
        return sum(len(t) for t in self._held.values())

    def _settle(self, model: str, worker_id: WorkerId) -> None:
        """Compact a log grown past twice the live count; forget a worker that holds nothing."""
        key = (model, worker_id)
        live, log = self._live[key], self._log[key]
        if live == 0:
            del self._live[key], self._log[key]
            if not self.models(worker_id):
                self.bits.release(worker_id)
            if not self._held.get(model, True):
                del self._held[model]
        elif len(log) > 2 * live + 64:
            position, table = self.bits.get(worker_id), self._held[model]
            assert position is not None  # it holds blocks, so it has a bit
            bit = 1 << position
            self._log[key] = array("Q", dict.fromkeys(h for h in log if table.get(h, 0) & bit))
