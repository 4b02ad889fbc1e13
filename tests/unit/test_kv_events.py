"""KV events: vLLM's own encoder → our decoder → index feed (publisher and subscriber over
ZMQ: tests/integration/test_kv_events.py)."""

from __future__ import annotations

import asyncio

import msgpack
import pytest

from pdserve.kv.events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    Gap,
    decode_payload,
    encode_payload,
)
from pdserve.kv.feed import IndexFeed
from pdserve.kv.hashing import block_hashes
from pdserve.state.memory import MemoryStore
from pdserve.types import WorkerId

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


def test_salted_blocks_stay_out_of_the_index() -> None:
    """vLLM publishes the keys a block's hash took beyond its tokens (cache salt, LoRA,
    multimodal inputs: ``extra_keys``, on the first block for a salt). Such blocks serve only
    requests with the same keys, so the router's plain-prefix index must not find them."""
    from vllm.distributed import kv_events as v

    def stored(hashes: list[int], extra: list[tuple[str, ...] | None] | None) -> bytes:
        event = v.BlockStored(
            block_hashes=hashes,
            parent_block_hash=None,
            token_ids=[5, 6, 7, 8],
            block_size=2,
            lora_id=None,
            medium="GPU",
            lora_name=None,
            extra_keys=extra,
        )
        return __import__("msgspec").msgpack.encode(v.KVEventBatch(ts=0.0, events=[event]))

    salted = decode_payload(0, stored([300, 301], [("tenant-b",), None]))
    assert salted.events == (BlockStored((300, 301), None, (5, 6, 7, 8), 2, keyed=(True, False)),)
    assert decode_payload(0, stored([400, 401], [None, None])).events[0] == BlockStored(
        (400, 401), None, (5, 6, 7, 8), 2
    )
    store = MemoryStore()
    feed = IndexFeed(store, "m", W, block_size=2)
    ours = block_hashes("m", [5, 6, 7, 8], 2)

    async def run() -> None:
        await feed.apply(Gap(()))
        await feed.apply(salted)
        # the salted chain's next block: its parent is salted, so it is not placed either
        await feed.apply(decode_payload(1, encode_payload([BlockStored((302,), 301, (9, 10), 2)])))
        assert await store.match("m", ours) == {} and feed.skipped == 3
        await feed.apply(decode_payload(2, stored([400, 401], None)))  # the same tokens, unsalted
        assert await store.match("m", ours) == {W: 2}

    asyncio.run(run())
