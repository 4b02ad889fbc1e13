"""The tests' redis-server: the one the bench starts too (pdserve/tools/redis_server.py)."""

from __future__ import annotations

from pdserve.tools.redis_server import RedisServer

__all__ = ["RedisServer"]
