"""The shared KV-event index in Redis, read directly (not through a router)."""

from __future__ import annotations

import redis

from pdserve.kv.hashing import block_hashes
from pdserve.types import to_hex
from tests.redis_server import RedisServer

BLOCK = 128  # the block size of the session cluster and of the sim workers (their default)


def index_holders(
    redis_server: RedisServer, model: str, prompt_ids: list[int], namespace: str = "pdserve"
) -> list[set[str]]:
    """Workers per block from the KV-event index only (not the routers' predictions): the
    per-worker block sets (pdserve/state/redis.py's layout)."""
    r = redis.Redis(port=redis_server.port, decode_responses=True)
    workers = sorted(r.smembers(f"{namespace}:m:{model}"))
    hexes = [to_hex(h) for h in block_hashes(model, prompt_ids, BLOCK)]
    held = {w: r.smismember(f"{namespace}:o:{model}:{w}", hexes) for w in workers} if hexes else {}
    return [{w for w in workers if held[w][i]} for i in range(len(hexes))]
