"""The shared KV-event index in Redis, read directly (not through a router)."""

from __future__ import annotations

import redis

from pdserve.kv.hashing import block_hashes
from pdserve.types import to_hex
from tests.redis_server import RedisServer

BLOCK = 128  # the block size of the session cluster and of the sim workers (their default)


def index_holders(redis_server: RedisServer, model: str, prompt_ids: list[int]) -> list[set[str]]:
    """Workers per block from the KV-event index only (not the routers' predictions)."""
    r = redis.Redis(port=redis_server.port, decode_responses=True)
    return [r.smembers(f"pdserve:b:{model}:{to_hex(h)}") for h in block_hashes(model, prompt_ids, BLOCK)]
