"""One worker's KV events → the shared block index.

The engine names blocks by its own hash; we re-hash each stored block's token
ids with pdserve's chained hash (the router hashes prompts the same way) and
keep engine hash → our hash so removals can be applied. Callers: the worker
(Redis store) or the router (embedded store), one ``IndexFeed`` per worker,
fed from one task.

Store outages: the local mapping is always updated; a failed write marks the
feed dirty and the next ``apply`` (or ``resync``) rewrites the worker's whole
block set once the store answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from pdserve.kv.events import AllBlocksCleared, BlockRemoved, BlockStored, EngineHash, EventBatch, EventSubscriber, Gap
from pdserve.kv.hashing import block_hash, root_hash
from pdserve.state.base import StateStore, StoreUnavailable
from pdserve.types import BlockHash, WorkerId

log = logging.getLogger(__name__)


class IndexFeed:
    def __init__(self, store: StateStore, model: str, worker_id: WorkerId, block_size: int) -> None:
        self._store = store
        self.model = model
        self.worker_id = worker_id
        self.block_size = block_size
        self._root = root_hash(model)
        self.blocks: dict[EngineHash, BlockHash] = {}
        self.dirty = True  # the store has not seen our state yet
        self.skipped = 0  # stored blocks we could not place (unknown parent, other block size, extra keys)

    def _translate(self, batch: EventBatch) -> tuple[list[BlockHash], list[BlockHash], bool]:
        added: list[BlockHash] = []
        removed: list[BlockHash] = []
        cleared = False
        for event in batch.events:
            if isinstance(event, AllBlocksCleared):
                self.blocks.clear()
                added, removed, cleared = [], [], True
            elif isinstance(event, BlockStored):
                added.extend(self._stored(event))
            elif isinstance(event, BlockRemoved):
                for engine_hash in event.engine_hashes:
                    ours = self.blocks.pop(engine_hash, None)
                    if ours is not None:
                        removed.append(ours)
        return added, removed, cleared

    def _stored(self, event: BlockStored) -> list[BlockHash]:
        parent = self._root if event.parent is None else self.blocks.get(event.parent)
        n = len(event.engine_hashes)
        if parent is None or event.block_size != self.block_size or len(event.token_ids) != n * self.block_size:
            self.skipped += n
            return []
        out: list[BlockHash] = []
        for i, engine_hash in enumerate(event.engine_hashes):
            if i < len(event.keyed) and event.keyed[i]:
                # A salted (or LoRA, multimodal) block and every block after it serve only
                # requests with the same keys: the router's plain prefix must not find them.
                # Unmapped, their removals are ignored and their children have no parent.
                self.skipped += n - i
                return out
            parent = block_hash(parent, event.token_ids[i * self.block_size : (i + 1) * self.block_size])
            self.blocks[engine_hash] = parent
            out.append(parent)
        return out

    async def apply(self, item: EventBatch | Gap) -> None:
        if isinstance(item, Gap):
            self.blocks.clear()
            for batch in item.replayed:
                self._translate(batch)
            self.dirty = True
            await self.resync()
            return
        added, removed, cleared = self._translate(item)
        if self.dirty or cleared:
            self.dirty = True
            await self.resync()
            return
        try:
            if removed:
                await self._store.remove_blocks(self.model, self.worker_id, removed)
            if added:
                await self._store.add_blocks(self.model, self.worker_id, added)
        except StoreUnavailable as exc:
            self._mark_dirty(exc)

    async def resync(self) -> None:
        """Write the worker's whole block set if the store may have missed something."""
        if not self.dirty:
            return
        try:
            await self._store.replace_blocks(self.model, self.worker_id, list(self.blocks.values()))
            self.dirty = False
        except StoreUnavailable as exc:
            self._mark_dirty(exc)

    def _mark_dirty(self, exc: StoreUnavailable) -> None:
        if not self.dirty:
            log.warning("block index write for %s failed (%s); will resynchronise", self.worker_id, exc)
        self.dirty = True


async def follow(
    subscriber: EventSubscriber,
    feed: IndexFeed,
    resync_every_s: float = 1.0,
    on_batch: Callable[[EventBatch | Gap], None] | None = None,
) -> None:
    """Apply every batch from ``subscriber`` to ``feed`` until cancelled; while the
    store is unreachable, retry the full resync every ``resync_every_s``."""
    items = subscriber.__aiter__()
    pending: asyncio.Task[EventBatch | Gap] | None = None
    try:
        while True:
            pending = pending or asyncio.ensure_future(anext(items))
            done, _ = await asyncio.wait({pending}, timeout=resync_every_s if feed.dirty else None)
            if not done:
                await feed.resync()
                continue
            item, pending = pending.result(), None
            await feed.apply(item)
            if on_batch is not None:
                on_batch(item)
    finally:
        if pending is not None:  # the generator is suspended inside this task: end it first
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await pending
        await items.aclose()  # type: ignore[attr-defined]
