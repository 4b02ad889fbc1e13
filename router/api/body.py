"""Generation bodies, parsed and validated off the event loop when they are large.

FastAPI parses and validates a declared body on the event loop: ~0.25 s for a 3.5 MB,
100k-message chat body on 2 cores, a stall of every stream the router carries. The
generation routes read their body here instead: up to ``INLINE_BYTES`` inline (a thread
hop would cost more than the parse), above it on the service's preparing threads
(``RouterService.prepare``). Errors are FastAPI's own — ``RequestValidationError``
located under ``body``, a 400 for a body that is no text — so clients see no difference;
``describe`` keeps the bodies in the OpenAPI document.
"""

from __future__ import annotations

import email.message
import inspect
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute

INLINE_BYTES = 64 << 10  # ~5 ms of parsing and validating here
# Templating and tokenizing cost more a byte (~0.2-0.4 ms a KiB on 2 cores): a request up to
# this size is prepared on the event loop too (RouterService.serve's ``inline``), for the same
# reason: the hop to a thread and back, and under load the wait there for the GIL, would cost
# more than the work.
PREPARE_INLINE_BYTES = 4 << 10
M = TypeVar("M", bound=BaseModel)
Offload = Callable[..., Awaitable[Any]]  # RouterService.prepare: run a function on a thread


def _none(body: Any) -> None:
    pass


async def read(request: Request, model: type[M], offload: Offload, check: Callable[[M], None] = _none) -> M:
    """``request``'s body as ``model``, then ``check(body)`` (a cheap bound that still walks the
    whole body, api/size.py); over ``INLINE_BYTES`` both run on a thread through ``offload``."""
    raw = await request.body()  # the body limit (api/limits.py) has already bounded it
    content_type = request.headers.get("content-type")
    if len(raw) <= INLINE_BYTES:
        return parse(raw, content_type, model, check)
    parsed: M = await offload(parse, raw, content_type, model, check)
    return parsed


async def small(request: Request) -> bool:
    """Whether ``request``'s body (already read) is small enough to prepare on the loop."""
    return len(await request.body()) <= PREPARE_INLINE_BYTES


def parse(raw: bytes, content_type: str | None, model: type[M], check: Callable[[M], None] = _none) -> M:
    """What FastAPI does with a declared body — JSON (by content type) validated into
    ``model`` — and then ``check``."""
    data = _decoded(raw, content_type)
    try:
        body = model.model_validate(data, from_attributes=True)  # as FastAPI validates (its error texts)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors, body=data) from None
    check(body)
    return body


def _decoded(raw: bytes, content_type: str | None) -> Any:
    if not raw:
        raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}])
    if not _is_json(content_type):
        return raw  # FastAPI validates the bytes, which no request model accepts
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        error = {"type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error", "input": {}}
        raise RequestValidationError([{**error, "ctx": {"error": exc.msg}}]) from None
    except (ValueError, RecursionError):  # not UTF-8; nested past the parser's depth
        raise HTTPException(400, "There was an error parsing the body") from None


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return False  # FastAPI's strict content type: no header, no JSON
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


def describe(app: FastAPI, bodies: Mapping[str, type[BaseModel]]) -> None:
    """``app``'s OpenAPI document as if the routes at ``bodies``' paths declared those bodies:
    FastAPI documents them from stand-ins that do (never served), so the schemas are its own."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            served = app.router.routes
            app.router.routes = [_declaring(r, bodies) for r in served]
            try:  # synchronous: no request sees the stand-ins
                generate()
            finally:
                app.router.routes = served
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]


def _declaring(route: BaseRoute, bodies: Mapping[str, type[BaseModel]]) -> BaseRoute:
    if not isinstance(route, APIRoute) or route.path not in bodies:
        return route
    real = route.endpoint

    async def endpoint(body: Any) -> None:  # only its signature is read
        raise NotImplementedError

    param = inspect.Parameter("body", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=bodies[route.path])
    endpoint.__signature__ = inspect.Signature([param])  # type: ignore[attr-defined]
    endpoint.__name__, endpoint.__doc__ = real.__name__, real.__doc__  # the same operationId and text
    return APIRoute(route.path, endpoint, methods=list(route.methods), response_class=route.response_class)
