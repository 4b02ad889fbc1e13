"""What the router does when a worker fails a request (docs/operations.md).

- prefill fails → the same request on another prefill worker (up to
  ``prefill_retries`` more), then prefilled locally by the decode worker;
- decode fails before its first token → placed again (up to ``decode_retries``);
- decode fails mid-stream → migrated: prompt + the tokens already streamed go to
  another decode worker, which continues the same stream (up to ``migrations``);
- a worker that failed is out of placement until its next successful Load poll
  (router/fleet.py), a circuit breaker with the poll as its half-open probe.
Only failures of the worker are retried (``WorkerFailure.retryable``, router/errors.py):
a request the engine refuses (INVALID_ARGUMENT), the request's own deadline, or a
cancelled client never are.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


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
