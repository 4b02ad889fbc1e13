"""What the router does when a worker fails a request (docs/operations.md).

- prefill fails → the same request on another prefill worker (up to
  ``prefill_retries`` more), then prefilled locally by the decode worker;
- decode fails before its first token → placed again (up to ``decode_retries``);
- decode fails mid-stream → migrated: prompt + the tokens already streamed go to
  another decode worker, which continues the same stream (up to ``migrations``);
- a worker that failed is out of placement until its next successful Load poll
  (router/fleet.py), a circuit breaker with the poll as its half-open probe.
Only failures of the worker are retried: a request the engine refuses
(INVALID_ARGUMENT), the request's own deadline, or a cancelled client never are.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import grpc

from pdserve.types import WorkerId
from router.clients import WorkerError

RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,  # gone, draining, engine dead
        grpc.StatusCode.INTERNAL,  # the engine failed this request
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,  # cancelled by the worker (we cancel by CancelledError)
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)


class BrokenStreamError(Exception):
    """The decode stream ended without finishing (worker aborted or vanished)."""

    def __init__(self, worker: WorkerId, message: str) -> None:
        super().__init__(f"{worker}: {message}")
        self.worker = worker


@dataclass(frozen=True)
class Recovery:
    prefill_retries: int = 1  # other prefill workers tried after the first failure
    decode_retries: int = 1  # re-placements before the first token
    migrations: int = 2  # moves to another decode worker after tokens were streamed
    backoff_s: float = 0.05  # wait backoff_s * 2**n before retry n (at most max_backoff_s)
    max_backoff_s: float = 1.0

    def __post_init__(self) -> None:
        if min(self.prefill_retries, self.decode_retries, self.migrations) < 0 or self.backoff_s < 0:
            raise ValueError("recovery: retries, migrations and backoff must be >= 0")

    async def backoff(self, attempt: int) -> None:
        await asyncio.sleep(min(self.max_backoff_s, self.backoff_s * 2**attempt))


def retryable(exc: BaseException) -> bool:
    if isinstance(exc, WorkerError):
        return exc.code in RETRYABLE
    return isinstance(exc, BrokenStreamError)
