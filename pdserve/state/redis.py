"""Redis StateStore: shared by router replicas, written by the workers.

Keys (``prefix`` default ``pdserve``):
  {p}:w:{worker}            worker record (JSON), expires with its heartbeat TTL
  {p}:workers               set of registered worker ids (expired ones pruned on read)
  {p}:b:{model}:{hash}      set of workers holding the block (from KV events)
  {p}:p:{model}:{hash}      hash worker → expiry (ms) of predicted entries; the key expires too
  {p}:o:{model}:{worker}    set of the worker's blocks (to clear them)
  {p}:c:{key}               a counter (``count``), expires one window after its first add
Every command has the client's socket timeout; connection and timeout errors
become ``StoreUnavailable``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pdserve.security import redact_url
from pdserve.state.base import StoreUnavailable, WorkerRecord, prefix_lengths
from pdserve.types import BlockHash, WorkerId, to_hex


@asynccontextmanager
async def _reachable(url: str) -> AsyncIterator[None]:
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        raise StoreUnavailable(f"redis at {redact_url(url)}: {exc}") from None  # logged: no password


class RedisStore:
    def __init__(self, url: str, timeout_s: float = 0.5, prefix: str = "pdserve") -> None:
        self.url = url
        # RESP2: under RESP3, redis-py 8.1's asyncio pool skips its check for connections the
        # server closed (redis/redis-py#4252), so after a Redis restart every pooled connection
        # failed one call. We use no RESP3 feature.
        self._r = aioredis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, decode_responses=True, protocol=2
        )
        self._p = prefix

    def _w(self, worker_id: str) -> str:
        return f"{self._p}:w:{worker_id}"

    def _b(self, model: str, h: BlockHash | str) -> str:
        return f"{self._p}:b:{model}:{h if isinstance(h, str) else to_hex(h)}"

    def _pred(self, model: str, h: BlockHash) -> str:
        return f"{self._p}:p:{model}:{to_hex(h)}"

    def _o(self, model: str, worker_id: str) -> str:
        return f"{self._p}:o:{model}:{worker_id}"

    async def register(self, record: WorkerRecord, ttl_s: float) -> None:
        async with _reachable(self.url):
            pipe = self._r.pipeline(transaction=True)
            pipe.set(self._w(record.worker_id), record.to_json(), px=int(ttl_s * 1000))
            pipe.sadd(f"{self._p}:workers", record.worker_id)
            await pipe.execute()

    async def heartbeat(self, worker_id: WorkerId, ttl_s: float) -> bool:
        async with _reachable(self.url):
            return bool(await self._r.pexpire(self._w(worker_id), int(ttl_s * 1000)))

    async def deregister(self, worker_id: WorkerId) -> None:
        async with _reachable(self.url):
            raw = await self._r.get(self._w(worker_id))
            await self._r.delete(self._w(worker_id))
            await self._r.srem(f"{self._p}:workers", worker_id)
        if raw is not None:
            await self.replace_blocks(WorkerRecord.from_json(raw).model, worker_id, ())

    async def workers(self) -> list[WorkerRecord]:
        async with _reachable(self.url):
            ids = sorted(str(i) for i in await self._r.smembers(f"{self._p}:workers"))
            if not ids:
                return []
            values = await self._r.mget([self._w(i) for i in ids])
            gone = [i for i, v in zip(ids, values, strict=True) if v is None]
            if gone:  # expired: pruned here so the set does not grow forever
                await self._r.srem(f"{self._p}:workers", *gone)
        return [WorkerRecord.from_json(v) for v in values if v is not None]

    async def add_blocks(self, model: str, worker_id: WorkerId, hashes: Sequence[BlockHash]) -> None:
        if not hashes:
            return
        async with _reachable(self.url):
            pipe = self._r.pipeline(transaction=False)
            for h in hashes:
                pipe.sadd(self._b(model, h), worker_id)
            pipe.sadd(self._o(model, worker_id), *(to_hex(h) for h in hashes))
            await pipe.execute()

    async def remove_blocks(self, model: str, worker_id: WorkerId, hashes: Sequence[BlockHash]) -> None:
        if hashes:
            await self._remove_hex(model, worker_id, [to_hex(h) for h in hashes])

    async def _remove_hex(self, model: str, worker_id: WorkerId, hexes: Sequence[str]) -> None:
        async with _reachable(self.url):
            pipe = self._r.pipeline(transaction=False)
            for h in hexes:
                pipe.srem(self._b(model, h), worker_id)
            pipe.srem(self._o(model, worker_id), *hexes)
            await pipe.execute()

    async def replace_blocks(self, model: str, worker_id: WorkerId, hashes: Sequence[BlockHash]) -> None:
        async with _reachable(self.url):
            owned = {str(h) for h in await self._r.smembers(self._o(model, worker_id))}
        keep = {to_hex(h) for h in hashes}
        stale = [h for h in owned if h not in keep]
        if stale:
            await self._remove_hex(model, worker_id, stale)
        await self.add_blocks(model, worker_id, [h for h in hashes if to_hex(h) not in owned])

    async def predict(self, model: str, worker_id: WorkerId, hashes: Sequence[BlockHash], ttl_s: float) -> None:
        ttl_ms = int(ttl_s * 1000)
        expires = int(time.time() * 1000) + ttl_ms
        async with _reachable(self.url):
            pipe = self._r.pipeline(transaction=False)
            for h in hashes:
                pipe.hset(self._pred(model, h), worker_id, expires)
                pipe.pexpire(self._pred(model, h), ttl_ms)
            await pipe.execute()

    async def match(self, model: str, hashes: Sequence[BlockHash]) -> dict[WorkerId, int]:
        if not hashes:
            return {}
        async with _reachable(self.url):
            pipe = self._r.pipeline(transaction=False)
            for h in hashes:
                pipe.smembers(self._b(model, h))
                pipe.hgetall(self._pred(model, h))
            replies = await pipe.execute()
        now_ms = time.time() * 1000
        holders: list[set[WorkerId]] = []
        for stored, predicted in zip(replies[0::2], replies[1::2], strict=True):
            held = {WorkerId(w) for w in stored}
            held.update(WorkerId(w) for w, exp in predicted.items() if float(exp) > now_ms)
            if not held:
                break
            holders.append(held)
        return prefix_lengths(holders)

    async def count(self, key: str, amount: int, window_s: float) -> int:
        async with _reachable(self.url):
            pipe = self._r.pipeline(transaction=True)
            pipe.incrby(f"{self._p}:c:{key}", amount)
            pipe.pexpire(f"{self._p}:c:{key}", max(1, int(window_s * 1000)), nx=True)
            value, _ = await pipe.execute()
        return int(value)

    async def ping(self) -> None:
        async with _reachable(self.url):
            await self._r.ping()

    async def close(self) -> None:
        await self._r.aclose()
