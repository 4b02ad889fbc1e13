"""Who may call what: client API keys at the router, a shared token and TLS on the gRPC
links between router and workers.

- API keys (router): ``Authorization: Bearer <key>`` on every ``/v1/*`` request, checked
  in constant time against every configured key; the other routes (``/health``,
  ``/metrics``, ``/tokenize``, ...) stay open for probes and Prometheus, as vLLM's do.
  Keys come from a file (one per line) or an environment variable; they are never logged.
- Worker token: workers refuse every RPC without ``authorization: Bearer <token>``
  metadata (UNAUTHENTICATED), except the gRPC health service, which orchestrators probe
  without credentials.
- TLS: workers serve TLS with ``cert``/``key``; with ``ca`` too they require a client
  certificate signed by it (mutual TLS). Routers dial with the same three files.
"""

from __future__ import annotations

import hmac
import os
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

HEALTH_PREFIX = "/grpc.health.v1.Health/"


def read_secrets(file: str = "", env: str = "") -> tuple[str, ...]:
    """Secrets from ``file`` (one per line, ``#`` comments) and the comma-separated
    environment variable ``env``, in that order, without repeats; () = none configured.
    Several are accepted at once so a secret can be rotated without downtime."""
    found: list[str] = []
    if file:
        try:
            lines = Path(file).read_text().splitlines()
        except OSError as exc:
            raise ValueError(f"secrets file {file}: {exc.strerror}") from None
        found += [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if env and os.environ.get(env):
        found += [v.strip() for v in os.environ[env].split(",") if v.strip()]
    return tuple(dict.fromkeys(found))


def redact_url(url: str) -> str:
    """``url`` fit for a log line or an error: its user and password (``redis://:pw@host``)
    and a query naming a password (``?password=pw``) replaced by ``***``."""
    try:
        parts = urllib.parse.urlsplit(url)
        has_login = parts.username is not None or parts.password is not None
    except ValueError:  # not a URL: nothing in it can be told from a secret
        return "***"
    secret_query = "password" in parts.query.lower()
    if not has_login and not secret_query:
        return url
    if has_login:
        parts = parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2])
    if secret_query:
        parts = parts._replace(query="***")
    return urllib.parse.urlunsplit(parts)


def bearer_token(header: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header (scheme in any case); "" if none."""
    scheme, _, token = (header or "").strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def bearer_ok(header: str | None, secrets: Iterable[str]) -> bool:
    """Whether ``header`` is ``Bearer <one of secrets>``. Compares against every secret
    (no early exit) with ``hmac.compare_digest``, so timing says nothing about the keys."""
    given = bearer_token(header).encode()
    ok = False
    for secret in secrets:
        ok |= hmac.compare_digest(given, secret.encode())
    return ok and bool(given)


@dataclass(frozen=True)
class TlsFiles:
    cert: str = ""  # PEM certificate (server's, or the router's client certificate)
    key: str = ""  # its private key
    ca: str = ""  # PEM CA: a server requires client certs signed by it; a client verifies the server with it

    def __post_init__(self) -> None:
        if bool(self.cert) != bool(self.key):
            raise ValueError("tls: give both a certificate and its key")
        for name in ("cert", "key", "ca"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise ValueError(f"tls_{name}: {path} is not a file")

    @property
    def enabled(self) -> bool:
        return bool(self.cert or self.ca)

    def _read(self, path: str) -> bytes | None:
        return Path(path).read_bytes() if path else None

    def server_credentials(self) -> grpc.ServerCredentials:
        if not self.cert:
            raise ValueError("tls: a server needs --tls-cert and --tls-key")
        pair = [(self._read(self.key), self._read(self.cert))]
        return grpc.ssl_server_credentials(
            pair, root_certificates=self._read(self.ca), require_client_auth=bool(self.ca)
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self._read(self.ca),
            private_key=self._read(self.key),
            certificate_chain=self._read(self.cert),
        )


@dataclass(frozen=True)
class WorkerLink:
    """How a router reaches its workers: TLS files and the shared token (both optional)."""

    tls: TlsFiles = field(default_factory=TlsFiles)
    token: str = field(default="", repr=False)  # a secret: never in a repr, so never in a log

    def channel(self, address: str, options: list[tuple[str, Any]]) -> grpc.aio.Channel:
        if self.tls.enabled:
            return grpc.aio.secure_channel(address, self.tls.channel_credentials(), options=options)
        return grpc.aio.insecure_channel(address, options=options)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses every call without one of the shared tokens, except health checks."""

    def __init__(self, tokens: tuple[str, ...]) -> None:
        self._tokens = tokens

        async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong worker token")

        self._refuse_unary = grpc.unary_unary_rpc_method_handler(refuse)
        self._refuse_stream = grpc.unary_stream_rpc_method_handler(refuse)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = details.method or ""
        if method.startswith(HEALTH_PREFIX):
            return await continuation(details)
        header = dict(details.invocation_metadata or ()).get("authorization")
        if bearer_ok(str(header) if header is not None else None, self._tokens):
            return await continuation(details)
        handler = await continuation(details)  # refuse in the same call shape (unary or stream)
        return self._refuse_stream if handler is not None and handler.response_streaming else self._refuse_unary
