"""The app's two per-request wrappers as plain ASGI middleware: API-key authentication and
the response count by route and status.

Starlette's ``@app.middleware("http")`` (``BaseHTTPMiddleware``) runs the rest of the app in
a task group of its own and copies every response body chunk through an in-memory stream;
for a streamed completion that is a task, a cancel scope and a queue hop per SSE event, and
profiling the router put it at about a tenth of its CPU per request (docs/BENCHMARKS.md §10).
These do the same work on the messages as they pass."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from starlette.datastructures import URL, Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pdserve.security import bearer_ok, bearer_token
from router.admission import client_id
from router.api import errors


class CountResponses:
    """Calls ``count(route, status)`` as each response's status goes out; ``route`` is the
    matched route's template (bounded labels), ``"other"`` when none matched (a 404, or a
    refusal before routing)."""

    def __init__(self, app: ASGIApp, count: Callable[[str, int], None]) -> None:
        self.app = app
        self.count = count

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.count(getattr(scope.get("route"), "path", "other"), message["status"])
            await send(message)

        await self.app(scope, receive, counted)


class Authenticate:
    """Every /v1/* request needs ``Authorization: Bearer <one of keys>`` (401 otherwise,
    ``rejected("unauthenticated")`` called); the rest stays open, as vLLM guards /v1 only:
    /health and /metrics for probes and Prometheus. Puts the caller's client id and cache
    salt in the request's state (``request.state.client``, ``.cache_salt``)."""

    def __init__(
        self,
        app: ASGIApp,
        keys: tuple[str, ...],
        salts: Mapping[str, str],
        rejected: Callable[[str], None],
    ) -> None:
        self.app = app
        self.keys = keys
        self.salts = salts
        self.rejected = rejected

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = Headers(scope=scope).get("authorization")
        if URL(scope=scope).path.startswith("/v1/") and not bearer_ok(header, self.keys):
            self.rejected("unauthenticated")
            err = errors.APIError(401, "Incorrect or missing API key.", code="invalid_api_key")
            await JSONResponse(errors.error_body(err), status_code=401)(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state["client"] = client_id(bearer_token(header))
        state["cache_salt"] = self.salts.get(state["client"], "")
        await self.app(scope, receive, send)
