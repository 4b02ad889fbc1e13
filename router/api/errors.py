"""OpenAI-shaped error bodies and the one place exceptions become HTTP statuses."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from router.errors import (
    AttemptTimeout,
    BadRequestError,
    BrokenStreamError,
    NoWorkersError,
    Overloaded,
    RateLimited,
    RequestTimeout,
    RouterError,
    UnknownModelError,
    WorkerError,
)

log = logging.getLogger(__name__)


class APIError(Exception):
    """An error the client should see, with its HTTP status and OpenAI type/code."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = {"Retry-After": str(retry_after_s)} if retry_after_s is not None else None


def error_body(err: APIError) -> dict[str, Any]:
    return {"error": {"message": err.message, "type": err.type, "param": err.param, "code": err.code}}


def to_api_error(exc: BaseException) -> APIError:
    """Map any exception from request handling to what the client may see."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, UnknownModelError):
        return APIError(404, str(exc.args[0]), param="model", code="model_not_found")
    if isinstance(exc, BadRequestError):
        return APIError(400, str(exc), param=exc.param)
    if isinstance(exc, RateLimited):
        return APIError(
            429, str(exc), type_="rate_limit_error", code="rate_limit_exceeded", retry_after_s=exc.retry_after_s
        )
    if isinstance(exc, Overloaded):
        return APIError(503, str(exc), type_="service_unavailable", code="overloaded", retry_after_s=exc.retry_after_s)
    if isinstance(exc, WorkerError) and exc.code is grpc.StatusCode.DEADLINE_EXCEEDED:
        exc = RequestTimeout()  # the RPC carried the request's own deadline
    if isinstance(exc, RequestTimeout):
        return APIError(504, str(exc), type_="timeout", code="request_timeout")
    if isinstance(exc, NoWorkersError):
        return APIError(503, str(exc), type_="service_unavailable", code="no_workers")
    if isinstance(exc, WorkerError):
        if exc.code is grpc.StatusCode.INVALID_ARGUMENT:
            return APIError(400, exc.details)
        if exc.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED):
            return APIError(503, "no worker could take the request", type_="service_unavailable")
    if isinstance(exc, BrokenStreamError | AttemptTimeout):
        return APIError(503, str(exc), type_="service_unavailable")
    log.error("unhandled error: %r", exc, exc_info=exc)  # the traceback stays in the log
    return APIError(500, "internal error", type_="internal_error")


def _response(err: APIError) -> JSONResponse:
    return JSONResponse(error_body(err), status_code=err.status, headers=err.headers)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    first = exc.errors()[0] if exc.errors() else {}
    # The field's name, as vLLM's own checks give it: not pydantic's union-member tags
    # ("function-after[...]", "list[int]") or list indices.
    loc = [str(p) for p in first.get("loc", ()) if p != "body" and isinstance(p, str) and "[" not in p]
    param = ".".join(loc) or None
    msg = str(first.get("msg", "invalid request"))
    if first.get("type") == "json_invalid":
        return "request body is not valid JSON", None
    return (f"{param}: {msg}" if param else msg), param


def install(app: FastAPI, rejected: Callable[[str], None]) -> None:
    """``rejected(reason)``: counts a request refused with a 4xx or 503."""

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        rejected("invalid_request")
        return _response(APIError(400, message, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _response(APIError(exc.status_code, str(exc.detail), code=None))

    async def _mapped(request: Request, exc: Exception) -> JSONResponse:
        err = to_api_error(exc)
        if err.status < 500 or err.status == 503:
            rejected(err.code or err.type)
        return _response(err)

    # Expected errors (the router/errors.py ladder) are handled here; anything else reaches
    # Starlette's ServerErrorMiddleware through the Exception handler: a clean 500, logged.
    for known in (APIError, RouterError, Exception):
        app.add_exception_handler(known, _mapped)
