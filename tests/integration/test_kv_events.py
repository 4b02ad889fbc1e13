"""KV events over real ZMQ sockets: our publisher → subscriber → index feed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from pdserve.kv.events import BlockStored, EventSubscriber, Gap
from pdserve.kv.feed import IndexFeed, follow
from pdserve.kv.hashing import block_hashes
from pdserve.kv.publisher import EventPublisher
from pdserve.state.memory import MemoryStore
from pdserve.types import WorkerId
from tests.helpers.net import free_port

W = WorkerId("w:1")


async def test_subscriber_catches_up_by_replay_and_rebuilds_after_a_gap() -> None:
    port = free_port()
    pub = EventPublisher(f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{port + 1}")
    pub.start()
    store = MemoryStore()
    feed = IndexFeed(store, "m", W, block_size=2)
    first, second = block_hashes("m", [1, 2], 2), block_hashes("m", [3, 4], 2)
    pub.publish([BlockStored((1,), None, (1, 2), 2)])  # before anyone subscribed
    seen: list[object] = []
    sub = EventSubscriber(f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{port + 1}")
    task = asyncio.create_task(follow(sub, feed, on_batch=seen.append))
    try:
        await _until(lambda: bool(seen))
        assert isinstance(seen[0], Gap) and len(seen[0].replayed) == 1  # caught up through replay
        assert await store.match("m", first) == {W: 1}
        # ZMQ drops what is published before the subscription reaches the publisher: wait
        # until a live batch arrives (it stores a block the assertions do not look at)
        probes = 0
        while not any(not isinstance(s, Gap) for s in seen):
            probes += 1
            assert probes < 120, "the subscriber never received a live batch"
            pub.publish([BlockStored((100 + probes,), None, (50, 51), 2)])
            await _until(lambda: any(not isinstance(s, Gap) for s in seen), timeout=0.5, fail=False)
        pub._seq += 5  # lose five batches
        pub.publish([BlockStored((2,), None, (3, 4), 2)])
        await _until(lambda: sum(isinstance(s, Gap) for s in seen) == 2)
        assert await store.match("m", second) == {W: 1}  # rebuilt from the replay buffer
        assert await store.match("m", first) == {W: 1}
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sub.close()
        await pub.close()


async def _until(cond: Callable[[], bool], timeout: float = 60.0, fail: bool = True) -> None:
    """Until ``cond`` holds; the timeout only bounds a signal that never comes."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            assert not fail, "condition not met in time"
            return
        await asyncio.sleep(0.02)
