"""Admission control: what the router takes on before it asks any worker.

- ``Gate``: at most ``max_inflight`` requests generate at once, at most
  ``max_inflight_per_key`` of one client; up to ``max_queued`` more wait, at most
  ``queue_timeout_s`` for a slot, queued per client and served round-robin across
  clients (fair queueing: a client flooding the queue delays its own requests, not
  the others'). Past that → ``Overloaded`` (HTTP 503 with ``Retry-After``). A slot is
  taken before the request is tokenized and held until the response's last chunk
  is sent, or the client leaves.
- ``RateLimiter``: per client (API key), requests and tokens per minute, counted
  in the StateStore — in Redis, one count shared by every router replica. A
  request is charged its prompt tokens + ``max_tokens`` up front (OpenAI's
  estimate) and refunded what it did not generate. Over a limit →
  ``RateLimited`` (HTTP 429 with ``Retry-After``: the end of the window).
  Windows are fixed minutes; a client may burst up to twice a limit across a
  window boundary. While Redis is unreachable each router counts on its own
  (``FallbackStore.count``). A request that alone needs more tokens than the whole
  per-minute limit can never pass: a ``BadRequestError`` (400), not a 429.
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
from collections import Counter, deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass

from pdserve.state import StateStore, StoreUnavailable
from router.errors import BadRequestError, Overloaded, RateLimited
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
    max_inflight_per_key: int = 0  # requests of one client generating at once; 0 = no limit

    def __post_init__(self) -> None:
        for name in ("max_inflight", "max_queued", "requests_per_minute", "tokens_per_minute", "max_inflight_per_key"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be ≥ 0")
        if self.queue_timeout_s <= 0:
            raise ValueError("queue_timeout_s must be > 0")


class Ticket:
    """A slot of the gate, held until ``release`` (which may be called more than once)."""

    def __init__(self, gate: Gate, client: str) -> None:
        self._gate = gate
        self._client = client
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._gate._release(self._client)


class Gate:
    """Bounded concurrency with a bounded, fair wait. Single event loop.

    Waiting requests queue per client; a freed slot goes to the next client in
    round-robin order that is under ``per_client``, and within a client first come first
    served. When the queue is full, an arrival whose client has fewer waiting than the
    longest queue takes the place of that queue's newest request, which gets
    ``Overloaded`` (longest-queue drop): a flood fills the queue with its own requests only.
    """

    def __init__(self, max_inflight: int, max_queued: int, queue_timeout_s: float, per_client: int = 0) -> None:
        self._max = max_inflight
        self._max_queued = max_queued
        self._timeout_s = queue_timeout_s
        self._per_client = per_client
        self.inflight = 0
        self.queued = 0
        self._running: Counter[str] = Counter()  # only clients with a slot
        # only clients with a request waiting; insertion order is the round-robin order
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}

    def tracked(self) -> int:
        """Clients the gate keeps state for (bounded by the requests in it)."""
        return len(self._running) + len(self._waiting)

    @contextlib.asynccontextmanager
    async def slot(self, client: str = ANONYMOUS) -> AsyncIterator[None]:
        ticket = await self.acquire(client)
        try:
            yield
        finally:
            ticket.release()

    async def acquire(self, client: str = ANONYMOUS) -> Ticket:
        """A slot for ``client``, once one is free and its turn comes; ``Overloaded`` if
        the queue is full or no slot comes within the queue timeout."""
        if client not in self._waiting and self._free(client):
            self._take(client)
            return Ticket(self, client)
        if self.queued >= self._max_queued and not self._drop_for(client):
            raise Overloaded("the router is at capacity; retry shortly", 1)
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(client, deque()).append(turn)
        self.queued += 1
        try:
            async with asyncio.timeout(self._timeout_s):
                await turn
        except BaseException as exc:
            granted = turn.done() and not turn.cancelled() and turn.exception() is None
            if not self._unqueue(client, turn) and granted:
                self._release(client)  # the slot came as the wait ended
            if isinstance(exc, TimeoutError):
                raise Overloaded(f"no capacity within {self._timeout_s:g} s; retry shortly", 1) from None
            raise
        return Ticket(self, client)

    def _free(self, client: str) -> bool:
        room = not self._max or self.inflight < self._max
        return room and (not self._per_client or self._running[client] < self._per_client)

    def _take(self, client: str) -> None:
        self.inflight += 1
        self._running[client] += 1

    def _release(self, client: str) -> None:
        self.inflight -= 1
        self._running[client] -= 1
        if self._running[client] <= 0:
            del self._running[client]
        self._dispatch()

    def _dispatch(self) -> None:
        while self._waiting and (not self._max or self.inflight < self._max):
            client = next((c for c in self._waiting if self._free(c)), None)
            if client is None:
                return
            queue = self._waiting.pop(client)
            turn = queue.popleft()
            self.queued -= 1
            if queue:
                self._waiting[client] = queue  # to the back of the round
            if not turn.done():  # a waiter cancelled before it ran its clean-up
                self._take(client)
                turn.set_result(None)

    def _unqueue(self, client: str, turn: asyncio.Future[None]) -> bool:
        """Take ``turn`` out of the queue; False if it was no longer there."""
        queue = self._waiting.get(client)
        if queue is None or turn not in queue:
            return False
        queue.remove(turn)
        self.queued -= 1
        if not queue:
            del self._waiting[client]
        return True

    def _drop_for(self, client: str) -> bool:
        mine = len(self._waiting.get(client, ()))
        longest = max(self._waiting, key=lambda c: len(self._waiting[c]), default=None)
        if longest is None or len(self._waiting[longest]) <= mine + 1:
            return False
        victim = self._waiting[longest][-1]
        self._unqueue(longest, victim)
        if not victim.done():
            victim.set_exception(Overloaded("the router is at capacity; retry shortly", 1))
        return True


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
        if self._tpm and tokens > self._tpm:  # would be refused in every window: no retry helps
            raise BadRequestError(
                f"this request needs {tokens} tokens (prompt + max_tokens); the limit is {self._tpm} per minute",
                "max_tokens",
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
        self.gate = Gate(limits.max_inflight, limits.max_queued, limits.queue_timeout_s, limits.max_inflight_per_key)
        self.limiter = RateLimiter(store, limits.requests_per_minute, limits.tokens_per_minute)

    async def admitted(
        self,
        client: str,
        prompt_tokens: int,
        max_tokens: int,
        chunks: AsyncGenerator[Chunk, None],
        ticket: Ticket | None = None,
    ) -> AsyncGenerator[Chunk, None]:
        """``chunks`` once the client's rate limit and a slot allow (``max_tokens``: of every
        choice together); raises ``RateLimited`` or ``Overloaded`` before the first chunk.
        ``ticket``: the slot the request took before it was tokenized (``gate.acquire``),
        released with this stream; without one a slot is taken here. Closing this closes
        ``chunks``."""
        async with contextlib.aclosing(chunks):
            generated: dict[int, int] = {}  # choice → tokens so far
            served = False
            charge: Charge | None = None
            try:
                charge = await self.limiter.charge(client, prompt_tokens + max_tokens)
                ticket = ticket or await self.gate.acquire(client)
                served = True
                async for chunk in chunks:
                    generated[chunk.index] = chunk.completion_tokens
                    yield chunk
            finally:
                if ticket is not None:
                    ticket.release()
                # served: what it did not generate; turned away: everything it was charged
                unused = max(0, max_tokens - sum(generated.values())) if served else prompt_tokens + max_tokens
                await self.limiter.refund(charge, unused, requests=0 if served else 1)
