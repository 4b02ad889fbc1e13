"""The one place where worker-side exceptions become gRPC status codes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from pdserve.engine.base import EngineDeadError, InvalidRequestError

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
    return grpc.StatusCode.INTERNAL, "internal error"


async def _abort(context: grpc.aio.ServicerContext, exc: Exception) -> None:
    code, message = status_for(exc)
    if code is grpc.StatusCode.INTERNAL:
        log.exception("unexpected error in RPC")  # details stay in the worker log
    await context.abort(code, message)


async def unary(context: grpc.aio.ServicerContext, call: Callable[[], Awaitable[T]]) -> T:
    try:
        return await call()
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        await _abort(context, exc)
        raise  # unreachable: abort raises


async def stream(context: grpc.aio.ServicerContext, items: AsyncIterator[Any]) -> AsyncIterator[Any]:
    try:
        async for item in items:
            yield item
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - mapped to a status, never leaked
        await _abort(context, exc)
