"""vLLM's KV cache events on the wire: decode, encode (for the sim engine), subscribe.

Format (vLLM ``ZmqEventPublisher``): ZMQ multipart ``[topic, seq (8 bytes, big
endian), payload]``; payload is msgpack ``[ts, events, dp_rank]``; each event is
a msgpack MAP tagged by ``type``: ``BlockStored`` (block_hashes,
parent_block_hash, token_ids, block_size, medium, ...), ``BlockRemoved``
(block_hashes, medium, ...), ``AllBlocksCleared``. We read fields by name and
ignore unknown fields and event types, so newer vLLM releases still decode.
Replay: a DEALER sends ``[b"", start_seq]`` to the publisher's ROUTER socket and
gets ``[b"", topic, seq, payload]`` frames, then ``[b"", b"", END_SEQ, b""]``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import zmq
import zmq.asyncio

log = logging.getLogger(__name__)

EngineHash = int | bytes  # the engine's own block hash, as vLLM publishes it
END_SEQ = (-1).to_bytes(8, "big", signed=True)
# Blocks the engine can serve a prefix from. Offload tiers (CPU/STORAGE) are not
# counted: the engine has to load them back first.
DEVICE_MEDIA = (None, "GPU")


@dataclass(frozen=True)
class BlockStored:
    engine_hashes: tuple[EngineHash, ...]
    parent: EngineHash | None
    token_ids: tuple[int, ...]
    block_size: int
    # Per block: whether the engine's hash took extra keys (cache salt, LoRA, multimodal
    # inputs: vLLM's ``extra_keys``). Such a block serves only requests with the same keys,
    # not the plain token prefix the router hashes. () = none did (or not published).
    keyed: tuple[bool, ...] = ()


@dataclass(frozen=True)
class BlockRemoved:
    engine_hashes: tuple[EngineHash, ...]


@dataclass(frozen=True)
class AllBlocksCleared:
    pass


KvEvent = BlockStored | BlockRemoved | AllBlocksCleared


@dataclass(frozen=True)
class EventBatch:
    seq: int
    ts: float
    events: tuple[KvEvent, ...]


def _key(h: Any) -> EngineHash:
    return bytes(h) if isinstance(h, (bytes, bytearray)) else int(h)


def _event(raw: Any) -> KvEvent | None:
    if not isinstance(raw, dict):
        return None
    kind = raw.get("type")
    if kind == "AllBlocksCleared":
        return AllBlocksCleared()
    if raw.get("medium") not in DEVICE_MEDIA or raw.get("group_idx") not in (None, 0):
        return None
    if kind == "BlockStored":
        parent = raw.get("parent_block_hash")
        extra = raw.get("extra_keys") or ()
        return BlockStored(
            engine_hashes=tuple(_key(h) for h in raw["block_hashes"]),
            parent=None if parent is None else _key(parent),
            token_ids=tuple(int(t) for t in raw["token_ids"]),
            block_size=int(raw["block_size"]),
            keyed=tuple(bool(k) for k in extra) if any(extra) else (),
        )
    if kind == "BlockRemoved":
        return BlockRemoved(tuple(_key(h) for h in raw["block_hashes"]))
    return None  # an event type this release does not know


def decode_payload(seq: int, payload: bytes) -> EventBatch:
    """One published batch → our events (unknown ones dropped). Raises ValueError if malformed."""
    try:
        body = msgpack.unpackb(payload, raw=False, strict_map_key=False)
        ts, raw_events = float(body[0]), body[1]
        events = tuple(e for e in (_event(r) for r in raw_events) if e is not None)
    except (ValueError, TypeError, KeyError, IndexError, msgpack.UnpackException) as exc:
        raise ValueError(f"malformed KV event batch {seq}: {exc}") from None
    return EventBatch(seq, ts, events)


def encode_payload(events: Sequence[KvEvent], ts: float | None = None) -> bytes:
    """Our events in vLLM's wire shape (what the sim engine publishes)."""
    raw: list[dict[str, Any]] = []
    for e in events:
        if isinstance(e, BlockStored):
            raw.append(
                {
                    "type": "BlockStored",
                    "block_hashes": list(e.engine_hashes),
                    "parent_block_hash": e.parent,
                    "token_ids": list(e.token_ids),
                    "block_size": e.block_size,
                    "lora_id": None,
                    "medium": "GPU",
                    "lora_name": None,
                    # vLLM's per-block extra keys; the sim's are its requests' cache salts
                    "extra_keys": [["cache_salt"] if k else None for k in e.keyed] if e.keyed else None,
                }
            )
        elif isinstance(e, BlockRemoved):
            raw.append({"type": "BlockRemoved", "block_hashes": list(e.engine_hashes), "medium": "GPU"})
        else:
            raw.append({"type": "AllBlocksCleared"})
    return msgpack.packb([time.time() if ts is None else ts, raw, 0])


@dataclass(frozen=True)
class Gap:
    """Events were lost (dropped, or the publisher restarted): rebuild from ``replayed``."""

    replayed: tuple[EventBatch, ...]


async def replay(ctx: zmq.asyncio.Context, endpoint: str, start: int, timeout_s: float) -> list[EventBatch]:
    """Ask the publisher's replay socket for every buffered batch from ``start`` on."""
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    try:
        sock.connect(endpoint)
        await sock.send_multipart([b"", start.to_bytes(8, "big")])
        out: list[EventBatch] = []
        while True:
            if not await sock.poll(int(timeout_s * 1000)):
                raise TimeoutError(f"no replay from {endpoint} within {timeout_s}s")
            frames = await sock.recv_multipart()
            if len(frames) != 4 or frames[2] == END_SEQ:
                return out
            out.append(decode_payload(int.from_bytes(frames[2], "big"), frames[3]))
    finally:
        sock.close()


class EventSubscriber:
    """Follows one publisher: yields ``EventBatch`` in order, or ``Gap`` with a fresh
    replay when sequence numbers jump (lost batches) or restart (publisher restart).
    The first item is always a ``Gap`` carrying everything the publisher buffered,
    so a subscriber that starts late (or a restarted router) catches up."""

    def __init__(self, endpoint: str, replay_endpoint: str, topic: str = "", replay_timeout_s: float = 5.0) -> None:
        self.endpoint = endpoint
        self.replay_endpoint = replay_endpoint
        self._topic = topic.encode()
        self._replay_timeout_s = replay_timeout_s
        self._ctx = zmq.asyncio.Context()

    async def __aiter__(self) -> AsyncIterator[EventBatch | Gap]:
        sub = self._ctx.socket(zmq.SUB)
        sub.linger = 0
        sub.setsockopt(zmq.SUBSCRIBE, self._topic)
        sub.connect(self.endpoint)
        try:
            last, resync, catching_up = -1, True, False
            while True:
                if resync:  # SUB is connected first, so nothing falls between replay and live
                    batches = await self._replay_or_empty()
                    last = batches[-1].seq if batches else -1
                    resync, catching_up = False, bool(batches)
                    yield Gap(tuple(batches))
                _, seq_bytes, payload = await sub.recv_multipart()
                seq = int.from_bytes(seq_bytes, "big")
                if catching_up and seq <= last:
                    continue  # live copy of a batch the replay already gave us
                catching_up = False
                if seq != last + 1:  # lost batches, or a restarted publisher (seq back to 0)
                    log.warning("KV events from %s: expected seq %d, got %d; rebuilding", self.endpoint, last + 1, seq)
                    resync = True
                    continue
                last = seq
                yield decode_payload(seq, payload)
        finally:
            sub.close()

    async def _replay_or_empty(self) -> list[EventBatch]:
        try:
            return await replay(self._ctx, self.replay_endpoint, 0, self._replay_timeout_s)
        except TimeoutError as exc:
            log.warning("%s; continuing with live events only", exc)
            return []

    def close(self) -> None:
        self._ctx.destroy(linger=0)
