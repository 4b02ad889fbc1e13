"""Admission control: what the router takes on before it asks any worker.

- ``Gate``: at most ``max_inflight`` requests generate at once; up to
  ``max_queued`` more wait, first come first served, at most ``queue_timeout_s``
  for a slot. Past that → ``Overloaded`` (HTTP 503 with ``Retry-After``). A slot
  is held until the response's last chunk is sent, or the client leaves.
- ``RateLimiter``: per client (API key), requests and tokens per minute, counted
  in the StateStore — in Redis, one count shared by every router replica. A
  request is charged its prompt tokens + ``max_tokens`` up front (OpenAI's
  estimate) and refunded what it did not generate. Over a limit →
  ``RateLimited`` (HTTP 429 with ``Retry-After``: the end of the window).
  Windows are fixed minutes; a client may burst up to twice a limit across a
  window boundary. While Redis is unreachable each router counts on its own
  (``FallbackStore.count``).
- ``Admission.admitted`` wraps a request's chunk stream with both.

Clients are named by a digest of their key (``client_id``): keys never reach
Redis, logs or metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass

from pdserve.state import StateStore, StoreUnavailable
from router.errors import Overloaded, RateLimited
from router.request import Chunk

ANONYMOUS = "anonymous"  # every client of a router without API keys
WINDOW_S = 60.0


def client_id(api_key: str | None) -> str:
    """The name a client is counted under: a digest of its key, never the key."""
    if not api_key:
        return ANONYMOUS
    return hashlib.sha256(api_key.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class AdmissionLimits:
    max_inflight: int = 512  # requests generating at once; 0 = no limit
    max_queued: int = 1024  # requests waiting for a slot
    queue_timeout_s: float = 30.0
    requests_per_minute: int = 0  # per client; 0 = no limit
    tokens_per_minute: int = 0  # prompt + max_tokens, refunded to what was generated; 0 = no limit

    def __post_init__(self) -> None:
        for name in ("max_inflight", "max_queued", "requests_per_minute", "tokens_per_minute"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be ≥ 0")
        if self.queue_timeout_s <= 0:
            raise ValueError("queue_timeout_s must be > 0")


class Gate:
    """Bounded concurrency with a bounded wait. Single event loop."""

    def __init__(self, max_inflight: int, max_queued: int, queue_timeout_s: float) -> None:
        self._slots = asyncio.Semaphore(max_inflight) if max_inflight else None
        self._max_queued = max_queued
        self._timeout_s = queue_timeout_s
        self.inflight = 0
        self.queued = 0

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self._slots is not None:
            if self._slots.locked():
                if self.queued >= self._max_queued:
                    raise Overloaded("the router is at capacity; retry shortly", 1)
                self.queued += 1
                try:
                    await asyncio.wait_for(self._slots.acquire(), self._timeout_s)
                except TimeoutError:
                    raise Overloaded(f"no capacity within {self._timeout_s:g} s; retry shortly", 1) from None
                finally:
                    self.queued -= 1
            else:
                await self._slots.acquire()
        self.inflight += 1
        try:
            yield
        finally:
            self.inflight -= 1
            if self._slots is not None:
                self._slots.release()


@dataclass(frozen=True)
class Charge:
    """Where one admitted request was counted (its refund goes to the same window)."""

    requests_key: str
    tokens_key: str


class RateLimiter:
    def __init__(
        self,
        store: StateStore,
        requests_per_minute: int,
        tokens_per_minute: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._rpm = requests_per_minute
        self._tpm = tokens_per_minute
        self._clock = clock

    @property
    def enabled(self) -> bool:
        return bool(self._rpm or self._tpm)

    async def charge(self, client: str, tokens: int) -> Charge | None:
        """Count one request of ``tokens`` for ``client``; ``RateLimited`` (nothing counted) if over."""
        if not self.enabled:
            return None
        if self._tpm and tokens > self._tpm:
            raise RateLimited(
                f"this request needs {tokens} tokens (prompt + max_tokens); the limit is {self._tpm} per minute",
                int(WINDOW_S),
            )
        now = self._clock()
        window = int(now // WINDOW_S)
        charge = Charge(f"rl:{client}:{window}:r", f"rl:{client}:{window}:t")
        requests = await self._store.count(charge.requests_key, 1, WINDOW_S) if self._rpm else 0
        used = await self._store.count(charge.tokens_key, tokens, WINDOW_S) if self._tpm else 0
        over = []
        if self._rpm and requests > self._rpm:
            over.append(f"{self._rpm} requests")
        if self._tpm and used > self._tpm:
            over.append(f"{self._tpm} tokens")
        if over:
            await self.refund(charge, tokens, requests=1)
            retry = max(1, math.ceil((window + 1) * WINDOW_S - now))
            raise RateLimited(f"rate limit reached: {' and '.join(over)} per minute", retry)
        return charge

    async def refund(self, charge: Charge | None, tokens: int, requests: int = 0) -> None:
        if charge is None or not (tokens or requests):
            return
        with contextlib.suppress(StoreUnavailable):  # a lost refund only errs on the strict side
            if self._rpm and requests:
                await self._store.count(charge.requests_key, -requests, WINDOW_S)
            if self._tpm and tokens:
                await self._store.count(charge.tokens_key, -tokens, WINDOW_S)


class Admission:
    def __init__(self, limits: AdmissionLimits, store: StateStore) -> None:
        self.limits = limits
        self.gate = Gate(limits.max_inflight, limits.max_queued, limits.queue_timeout_s)
        self.limiter = RateLimiter(store, limits.requests_per_minute, limits.tokens_per_minute)

    async def admitted(
        self, client: str, prompt_tokens: int, max_tokens: int, chunks: AsyncGenerator[Chunk, None]
    ) -> AsyncGenerator[Chunk, None]:
        """``chunks`` once the client's rate limit and a slot allow (``max_tokens``: of every
        choice together); raises ``RateLimited``
        or ``Overloaded`` before the first chunk. Closing this closes ``chunks``."""
        async with contextlib.aclosing(chunks):
            charge = await self.limiter.charge(client, prompt_tokens + max_tokens)
            generated: dict[int, int] = {}  # choice → tokens so far
            served = False
            try:
                async with self.gate.slot():
                    served = True
                    async for chunk in chunks:
                        generated[chunk.index] = chunk.completion_tokens
                        yield chunk
            finally:
                # served: what it did not generate; turned away: everything it was charged
                unused = max(0, max_tokens - sum(generated.values())) if served else prompt_tokens + max_tokens
                await self.limiter.refund(charge, unused, requests=0 if served else 1)
