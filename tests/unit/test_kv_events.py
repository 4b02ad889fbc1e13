"""KV events: vLLM's own encoder → our decoder; our publisher → subscriber → index feed."""

from __future__ import annotations

import asyncio
import contextlib

import msgpack
import pytest

from pdserve.kv.events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    EventSubscriber,
    Gap,
    decode_payload,
    encode_payload,
)
from pdserve.kv.feed import IndexFeed, follow
from pdserve.kv.hashing import block_hashes
from pdserve.kv.publisher import EventPublisher
from pdserve.state.memory import MemoryStore
from pdserve.types import WorkerId
from tests.helpers.net import free_port

W = WorkerId("w:1")


def test_decodes_what_vllm_encodes() -> None:
    from vllm.distributed import kv_events as v

    batch = v.KVEventBatch(
        ts=1.5,
        events=[
            v.BlockStored(
                block_hashes=[11, 12],
                parent_block_hash=None,
                token_ids=list(range(8)),
                block_size=4,
                lora_id=None,
                medium="GPU",
                lora_name=None,
            ),
            v.BlockStored(
                block_hashes=[13],
                parent_block_hash=12,
                token_ids=[8, 9, 10, 11],
                block_size=4,
                lora_id=None,
                medium="CPU",
                lora_name=None,  # an offload tier: not a prefix-cache hit
            ),
            v.BlockRemoved(block_hashes=[11], medium=None),
            v.AllBlocksCleared(),
        ],
    )
    out = decode_payload(7, __import__("msgspec").msgpack.encode(batch))
    assert out.seq == 7 and out.ts == 1.5
    assert out.events == (
        BlockStored((11, 12), None, tuple(range(8)), 4),
        BlockRemoved((11,)),
        AllBlocksCleared(),
    )


def test_unknown_fields_and_event_types_are_ignored() -> None:
    raw = [
        0.0,
        [
            {
                "type": "BlockStored",
                "block_hashes": [b"\x01"],
                "parent_block_hash": None,
                "token_ids": [1, 2],
                "block_size": 2,
                "future_field": {"x": 1},
            },
            {"type": "BlockPinned", "block_hashes": [1]},
        ],
        0,
    ]
    assert decode_payload(0, msgpack.packb(raw)).events == (BlockStored((b"\x01",), None, (1, 2), 2),)
    with pytest.raises(ValueError, match="malformed"):
        decode_payload(0, b"\xc1")


def test_our_encoding_round_trips() -> None:
    events = (BlockStored((1, 2), 9, (1, 2, 3, 4), 2), BlockRemoved((1,)), AllBlocksCleared())
    assert decode_payload(0, encode_payload(events)).events == events


def test_feed_rehashes_chains_and_removes() -> None:
    store = MemoryStore()
    feed = IndexFeed(store, "m", W, block_size=2)
    tokens = [5, 6, 7, 8, 9, 10]
    ours = block_hashes("m", tokens, 2)

    async def run() -> None:
        await feed.apply(Gap(()))
        b = decode_payload(0, encode_payload([BlockStored((100, 101), None, tuple(tokens[:4]), 2)]))
        await feed.apply(b)
        await feed.apply(decode_payload(1, encode_payload([BlockStored((102,), 101, tuple(tokens[4:]), 2)])))
        assert await store.match("m", ours) == {W: 3}
        await feed.apply(decode_payload(2, encode_payload([BlockRemoved((101,))])))
        assert await store.match("m", ours) == {W: 1}
        # a block whose parent we never saw cannot be placed in the chain
        await feed.apply(decode_payload(3, encode_payload([BlockStored((200,), 999, (1, 2), 2)])))
        assert feed.skipped == 1
        await feed.apply(decode_payload(4, encode_payload([AllBlocksCleared()])))
        assert await store.match("m", ours) == {}

    asyncio.run(run())


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
        await asyncio.sleep(0.3)  # let the subscription reach the publisher
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


async def _until(cond, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        assert loop.time() < end, "condition not met in time"
        await asyncio.sleep(0.02)
