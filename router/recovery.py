"""What the router does when a worker fails a request (docs/operations.md).

- prefill fails → the same request on another prefill worker (up to
  ``prefill_retries`` more), then prefilled locally by the decode worker;
- decode fails before its first token → placed again (up to ``decode_retries``);
- decode fails mid-stream → migrated: prompt + the tokens already streamed go to
  another decode worker, which continues the same stream (up to ``migrations``);
- an attempt past its own timeout (router/request.py ``Timeouts``) fails like a worker
  error, well before the request's deadline;
- every retry waits a fully jittered exponential backoff and needs the retry budget:
  retries stay within ``retry_budget`` x requests (plus ``min_retries``) over the last
  ``RetryBudget.window_s``, as Envoy's retry budget, so a failing fleet is not sent
  every request twice;
- the worker's failure feeds the pool's outlier ejection (router/outliers.py).
Only failures of the worker are retried (``WorkerFailure.retryable``, router/errors.py):
a request the engine refuses (INVALID_ARGUMENT), the request's own deadline, or a
cancelled client never are.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Recovery:
    prefill_retries: int = 1  # other prefill workers tried after the first failure
    decode_retries: int = 1  # re-placements before the first token
    migrations: int = 2  # moves to another decode worker after tokens were streamed
    backoff_s: float = 0.05  # retry n waits uniform(0, backoff_s * 2**n), at most max_backoff_s
    max_backoff_s: float = 1.0
    retry_budget: float = 0.2  # retries per request, over the budget's window
    min_retries: int = 3  # retries allowed in a window whatever the request count

    def __post_init__(self) -> None:
        if min(self.prefill_retries, self.decode_retries, self.migrations, self.min_retries) < 0:
            raise ValueError("recovery: retries, migrations and min_retries must be ≥ 0")
        if self.backoff_s < 0 or self.retry_budget < 0:
            raise ValueError("recovery: backoff_s and retry_budget must be ≥ 0")

    async def backoff(self, attempt: int, rng: random.Random | None = None) -> None:
        """Full jitter: retries of requests that failed together do not come back together."""
        ceiling = min(self.max_backoff_s, self.backoff_s * 2**attempt)
        await asyncio.sleep((rng or random).uniform(0, ceiling))


class RetryBudget:
    """Retries ≤ ``ratio`` x requests + ``minimum`` over the last ``window_s`` seconds,
    counted in one-second buckets (at most ``window_s`` of them). Event loop only."""

    window_s = 10

    def __init__(self, ratio: float, minimum: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._ratio = ratio
        self._minimum = minimum
        self._clock = clock
        self._buckets: deque[list[int]] = deque()  # [second, requests, retries]

    def request(self) -> None:
        self._bucket()[1] += 1

    def try_retry(self) -> bool:
        """Spend one retry; False (nothing spent) when the budget is used up."""
        bucket = self._bucket()
        requests = sum(b[1] for b in self._buckets)
        retries = sum(b[2] for b in self._buckets)
        if retries + 1 > self._ratio * requests + self._minimum:
            return False
        bucket[2] += 1
        return True

    def _bucket(self) -> list[int]:
        second = int(self._clock())
        while self._buckets and self._buckets[0][0] <= second - self.window_s:
            self._buckets.popleft()
        if not self._buckets or self._buckets[-1][0] != second:
            self._buckets.append([second, 0, 0])
        return self._buckets[-1]
