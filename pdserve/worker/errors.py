"""The one place where worker-side exceptions become gRPC status codes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from pdserve.engine.base import EngineDeadError, EngineOverloadedError, InvalidRequestError

log = logging.getLogger(__name__)

T = TypeVar("T")


class DrainingError(Exception):
    """The worker is shutting down and takes no new requests."""


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, InvalidRequestError | ValueError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, DrainingError):
        return grpc.StatusCode.UNAVAILABLE, "worker is draining"
    if isinstance(exc, EngineDeadError):
        return grpc.StatusCode.UNAVAILABLE, "engine is dead"
    if isinstance(exc, EngineOverloadedError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc) or "engine overloaded"
    return grpc.StatusCode.INTERNAL, "internal error"


ErrorHook = Callable[[grpc.StatusCode], None]


async def _abort(context: grpc.aio.ServicerContext, exc: Exception, on_error: ErrorHook | None) -> None:
    code, message = status_for(exc)
    if on_error is not None:
        on_error(code)
    if code is grpc.StatusCode.INTERNAL:
        log.error("unexpected error in RPC", exc_info=exc)  # details stay in the worker log
    await context.abort(code, message)


async def unary(
    context: grpc.aio.ServicerContext, call: Callable[[], Awaitable[T]], on_error: ErrorHook | None = None
) -> T:
    try:
        return await call()
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        await _abort(context, exc, on_error)
        raise  # unreachable: abort raises


async def stream(
    context: grpc.aio.ServicerContext, items: AsyncIterator[Any], on_error: ErrorHook | None = None
) -> AsyncIterator[Any]:
    try:
        async for item in items:
            yield item
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - mapped to a status, never leaked
        await _abort(context, exc, on_error)
