"""Shared routing state: the worker registry and the KV block index.

``StateStore`` (base.py) has two implementations run through one contract
suite (tests/contract/test_state_store.py): ``MemoryStore`` (the embedded
single-host default) and ``RedisStore`` (shared by router replicas and fed by
the workers). ``FallbackStore`` keeps a router serving from its local view
while Redis is unreachable.
"""

from __future__ import annotations

import re

from pdserve.state.base import MalformedRecord, StateStore, StoreUnavailable, WorkerRecord

__all__ = ["MalformedRecord", "StateStore", "StoreUnavailable", "WorkerRecord", "check_namespace", "make_store"]

DEFAULT_NAMESPACE = "pdserve"
_NAMESPACE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def check_namespace(namespace: str) -> None:
    """``ValueError`` unless ``namespace`` is a plain key prefix (no ``:``, which separates keys)."""
    if not _NAMESPACE.fullmatch(namespace):
        raise ValueError(f"state_namespace: {namespace!r}: use 1-64 of A-Z a-z 0-9 _ . -")


def make_store(url: str, timeout_s: float = 0.5, namespace: str = DEFAULT_NAMESPACE, password: str = "") -> StateStore:
    """``memory://`` (or empty) → in-process; ``redis://[user:password@]host:port/db`` (or
    ``rediss://`` for TLS) → Redis, its keys under ``namespace`` (clusters
    sharing one database stay disjoint); ``password``, if given, over the URL's."""
    check_namespace(namespace)
    if not url or url.startswith("memory:"):
        from pdserve.state.memory import MemoryStore

        return MemoryStore()
    if url.startswith(("redis://", "rediss://", "unix://")):
        from pdserve.state.redis import RedisStore

        return RedisStore(url, timeout_s=timeout_s, namespace=namespace, password=password)
    scheme = url.partition(":")[0]  # never the whole URL: it may hold a password
    raise ValueError(f"state_url: unsupported scheme {scheme!r}; use memory:// or redis://host:port")
