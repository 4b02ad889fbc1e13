"""Shared routing state: the worker registry and the KV block index.

``StateStore`` (base.py) has two implementations run through one contract
suite (tests/contract/test_state_store.py): ``MemoryStore`` (the embedded
single-host default) and ``RedisStore`` (shared by router replicas and fed by
the workers). ``FallbackStore`` keeps a router serving from its local view
while Redis is unreachable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pdserve.flags import flag
from pdserve.security import TlsFiles, read_secrets
from pdserve.state.base import MalformedRecord, StateStore, StoreUnavailable, WorkerRecord

__all__ = [
    "MalformedRecord",
    "StateAccess",
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


@dataclass(frozen=True)
class StateAccess:
    """How a process authenticates to ``--state-url``: its password and TLS files. The router
    and both worker roles take these flags alike (a group of each one's configuration)."""

    password_file: str = flag(
        "",
        name="--state-password-file",
        env="PDSERVE_STATE_PASSWORD_FILE",
        help="the --state-url's password: the file's first line (or PDSERVE_STATE_PASSWORD), so that it "
        "stays out of the URL, the environment of other processes and the logs",
    )
    tls_ca: str = flag(
        "",
        name="--state-tls-ca",
        env="PDSERVE_STATE_TLS_CA",
        help="rediss:// --state-url: PEM CA that signed the Redis server's certificate (default: the system's)",
    )
    tls_cert: str = flag(
        "",
        name="--state-tls-cert",
        env="PDSERVE_STATE_TLS_CERT",
        help="rediss:// --state-url: PEM client certificate, if Redis asks for one",
    )
    tls_key: str = flag(
        "", name="--state-tls-key", env="PDSERVE_STATE_TLS_KEY", help="rediss:// --state-url: PEM its private key"
    )

    def password(self) -> str:
        """Read now: the file's first line, else ``PDSERVE_STATE_PASSWORD``, else none."""
        return next(iter(read_secrets(self.password_file, "PDSERVE_STATE_PASSWORD")), "")

    def tls(self, url: str) -> TlsFiles:
        """The TLS files for ``url``, checked as ``state_tls`` checks them."""
        return state_tls(url, self.tls_cert, self.tls_key, self.tls_ca)


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
