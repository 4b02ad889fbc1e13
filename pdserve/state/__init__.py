"""Shared routing state: the worker registry and the KV block index.

``StateStore`` (base.py) has two implementations run through one contract
suite (tests/contract/test_state_store.py): ``MemoryStore`` (the embedded
single-host default) and ``RedisStore`` (shared by router replicas and fed by
the workers). ``FallbackStore`` keeps a router serving from its local view
while Redis is unreachable.
"""

from __future__ import annotations

from pdserve.security import redact_url
from pdserve.state.base import StateStore, StoreUnavailable, WorkerRecord

__all__ = ["StateStore", "StoreUnavailable", "WorkerRecord", "make_store"]


def make_store(url: str, timeout_s: float = 0.5) -> StateStore:
    """``memory://`` (or empty) → in-process; ``redis://host:port/db`` → Redis."""
    if not url or url.startswith("memory:"):
        from pdserve.state.memory import MemoryStore

        return MemoryStore()
    if url.startswith(("redis://", "rediss://", "unix://")):
        from pdserve.state.redis import RedisStore

        return RedisStore(url, timeout_s=timeout_s)
    raise ValueError(f"state_url: unsupported {redact_url(url)!r}; use memory:// or redis://host:port")
