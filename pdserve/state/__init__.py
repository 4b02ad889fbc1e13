"""Shared routing state: the worker registry and the KV block index.

``StateStore`` (base.py) has two implementations run through one contract
suite (tests/contract/test_state_store.py): ``MemoryStore`` (the embedded
single-host default) and ``RedisStore`` (shared by router replicas and fed by
the workers). ``FallbackStore`` keeps a router serving from its local view
while Redis is unreachable.
"""

from __future__ import annotations

import re

from pdserve.security import TlsFiles
from pdserve.state.base import MalformedRecord, StateStore, StoreUnavailable, WorkerRecord

__all__ = [
    "MalformedRecord",
    "StateStore",
    "StoreUnavailable",
    "WorkerRecord",
    "check_namespace",
    "make_store",
    "state_tls",
]

DEFAULT_NAMESPACE = "pdserve"
_NAMESPACE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def check_namespace(namespace: str) -> None:
    """``ValueError`` unless ``namespace`` is a plain key prefix (no ``:``, which separates keys)."""
    if not _NAMESPACE.fullmatch(namespace):
        raise ValueError(f"state_namespace: {namespace!r}: use 1-64 of A-Z a-z 0-9 _ . -")


def state_tls(url: str, cert: str, key: str, ca: str) -> TlsFiles:
    """The ``--state-tls-*`` files, checked: ``ValueError`` naming the flag for a missing file,
    a certificate without its key, or any of them with a URL that is not ``rediss://``."""
    try:
        tls = TlsFiles(cert, key, ca)
    except ValueError as exc:
        raise ValueError(f"state_{exc}") from None
    if tls.enabled and not url.startswith("rediss://"):
        raise ValueError("state_tls_ca, state_tls_cert, state_tls_key: need a rediss:// --state-url")
    return tls


def make_store(
    url: str,
    timeout_s: float = 0.5,
    namespace: str = DEFAULT_NAMESPACE,
    password: str = "",
    tls: TlsFiles | None = None,
) -> StateStore:
    """``memory://`` (or empty) → in-process; ``redis://[user:password@]host:port/db`` (or
    ``rediss://`` for TLS, the server verified against ``tls.ca``, else the system's CAs)
    → Redis, its keys under ``namespace`` (clusters sharing one database stay disjoint);
    ``password``, if given, over the URL's."""
    check_namespace(namespace)
    if not url or url.startswith("memory:"):
        from pdserve.state.memory import MemoryStore

        return MemoryStore()
    if url.startswith(("redis://", "rediss://", "unix://")):
        from pdserve.state.redis import RedisStore

        return RedisStore(url, timeout_s=timeout_s, namespace=namespace, password=password, tls=tls)
    scheme = url.partition(":")[0]  # never the whole URL: it may hold a password
    raise ValueError(
        f"state_url: unsupported scheme {scheme!r}; use memory://, redis://host:port or rediss://host:port"
    )
