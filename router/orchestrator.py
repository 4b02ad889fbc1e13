"""The prefill → decode flow for one request, from token ids to text chunks.

1. place it (router/placement/placer.py): decode worker, whether to prefill
   remotely, prefill worker;
2. Prefill RPC (max_tokens=1, KV kept for the decode side);
3. Decode RPC with the prefill's kv_transfer_params, streamed;
4. detokenize incrementally and apply stop strings.
A worker that fails is worked around as router/recovery.py says (retry, local
prefill, re-place, migrate mid-stream); the client sees one stream. Cancelling
the consumer (client gone, deadline) cancels the in-flight RPC, and the worker
aborts the engine request. A remote prefill's KV that no decode token shows was
read is released (router/release.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from pdserve.engine.base import FinishReason, SamplingSpec, TokenDelta
from pdserve.types import RequestId, WorkerId
from router.clients import WorkerError
from router.placement.placer import NoWorkersError, Placement, Placer
from router.pool import ModelPool
from router.recovery import BrokenStreamError, Recovery, retryable
from router.release import KvReleaser
from router.tokenizer import StopMatcher

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Generation:
    """A validated request in token space."""

    prompt_ids: list[int]
    spec: SamplingSpec
    stops: tuple[str, ...] = ()
    arrival: float = field(default_factory=time.perf_counter)  # when the HTTP request came in


@dataclass(frozen=True)
class Chunk:
    """Text to send now. The last chunk has ``finish_reason`` and final counts."""

    text: str
    completion_tokens: int
    finish_reason: str | None = None
    cached_tokens: int = 0
    token_ids: tuple[int, ...] = ()  # tokens consumed since the previous chunk


@dataclass(frozen=True)
class Timeouts:
    prefill_s: float = 300.0  # one prefill RPC
    request_s: float = 600.0  # the whole request from its arrival: queue, retries, migrations, stream
    release_s: float = 3.0  # one Release RPC; off the request's path (router/release.py)


class RequestTimeout(Exception):
    """The request's deadline passed before it finished: the router saw it, or a worker
    RPC carrying what was left of it ended with DEADLINE_EXCEEDED."""

    def __init__(self) -> None:
        super().__init__("the request did not finish within its deadline")


__all__ = ["BrokenStreamError", "NoWorkersError", "Orchestrator", "RequestTimeout"]


class Observer(Protocol):
    """Told about each placement and recovery (metrics). Called on the event loop; must not block."""

    def placed(self, role: str, worker: WorkerId) -> None: ...

    def disaggregated(self, reason: str) -> None: ...

    def prefix(self, matched_tokens: int, prompt_tokens: int) -> None: ...

    def dispatched(self, queued_s: float) -> None: ...

    def retried(self, kind: str) -> None:
        """kind: prefill (another prefill worker), local_prefill (the decode worker
        prefills after prefill failures), decode (placed again before the first token)."""
        ...

    def migrated(self) -> None: ...

    def kv_released(self) -> None:
        """A decode worker freed a remote prefill's KV that no decode read."""
        ...


class _Text:
    """Generated ids → text chunks, across every decode stream of one request: a
    migrated request continues the same detokenizer, stop matcher and count."""

    def __init__(self, pool: ModelPool, gen: Generation) -> None:
        self._decoder = pool.tokenizer.stream_decoder(gen.prompt_ids)
        self._stops = StopMatcher(gen.stops)
        self.produced: list[int] = []
        self.cached: int | None = None  # the first placement's prefill-side count

    def feed(self, delta: TokenDelta, cached: int) -> Chunk | None:
        if self.cached is None:
            self.cached = cached
        text: list[str] = []
        for i, token_id in enumerate(delta.token_ids):
            self.produced.append(token_id)
            piece, stopped = self._stops.feed(self._decoder.step(token_id))
            text.append(piece)
            if stopped:
                return Chunk("".join(text), len(self.produced), "stop", self.cached, delta.token_ids[: i + 1])
        if delta.finish_reason is not None:
            reason = "length" if delta.finish_reason is FinishReason.LENGTH else "stop"
            return Chunk("".join(text) + self._stops.flush(), len(self.produced), reason, self.cached, delta.token_ids)
        return Chunk("".join(text), len(self.produced), None, self.cached, delta.token_ids) if delta.token_ids else None


def _left(deadline: float) -> float:
    """Seconds to the request's deadline; ``RequestTimeout`` once it has passed."""
    left = deadline - time.perf_counter()
    if left <= 0:
        raise RequestTimeout
    return left


def _remaining(spec: SamplingSpec, produced: int) -> SamplingSpec:
    """The sampling of a migrated request: what is left of its token budget."""
    return dataclasses.replace(
        spec, max_tokens=spec.max_tokens - produced, min_tokens=max(0, spec.min_tokens - produced)
    )


class Orchestrator:
    def __init__(
        self, placer: Placer, timeouts: Timeouts, observer: Observer | None = None, recovery: Recovery | None = None
    ) -> None:
        self._placer = placer
        self._timeouts = timeouts
        self._observer = observer
        self._recovery = recovery or Recovery()
        self._releaser = KvReleaser(timeouts.release_s, lambda: self._tell("kv_released"))

    async def generate(self, pool: ModelPool, gen: Generation) -> AsyncIterator[Chunk]:
        base_id = f"cmpl-{uuid.uuid4().hex}"
        text = _Text(pool, gen)
        failed: set[WorkerId] = set()
        restarts = migrations = 0
        deadline = gen.arrival + self._timeouts.request_s  # gRPC deadlines below end it on the workers too
        while True:
            attempt = RequestId(base_id if not restarts + migrations else f"{base_id}-{restarts + migrations}")
            prompt = gen.prompt_ids + text.produced  # a migration replays what was streamed
            try:
                first = not restarts + migrations
                async for chunk in self._attempt(pool, gen, attempt, prompt, text, failed, first, deadline):
                    yield chunk
                return  # _attempt ends with a finish chunk, or raises
            except (WorkerError, BrokenStreamError) as exc:
                if not retryable(exc):
                    raise
                self._out(pool, exc.worker, failed, exc)
                if text.produced:
                    migrations += 1
                    if migrations > self._recovery.migrations:
                        raise
                    self._tell("migrated")
                else:
                    restarts += 1
                    if restarts > self._recovery.decode_retries:
                        raise
                    self._tell("retried", "decode")
                await self._recovery.backoff(restarts + migrations - 1)

    async def _attempt(
        self,
        pool: ModelPool,
        gen: Generation,
        request_id: RequestId,
        prompt: list[int],
        text: _Text,
        failed: set[WorkerId],
        first: bool,
        deadline: float,
    ) -> AsyncIterator[Chunk]:
        where = await self._placer.place(pool, prompt, exclude=frozenset(failed))
        self._notify(where, len(prompt), gen.arrival if first else None)
        uncached = len(prompt) - where.matched_tokens
        spec = _remaining(gen.spec, len(text.produced))
        with pool.counted(where.decode, 0 if where.prefill else uncached):
            kv_params, cached = await self._prefill(pool, where, request_id, prompt, spec, failed, uncached, deadline)
            log.info(
                "%s: %d prompt tokens, prefill on %s (%s cached), decode on %s (%s)",
                request_id,
                len(prompt),
                where.prefill if kv_params is not None else where.decode,
                "?" if cached is None else cached,
                where.decode,
                where.reason,
            )
            unread = kv_params  # the prefill's KV, until a token shows the decode engine has it
            try:
                client = pool.decode_client(where.decode)
                deltas = client.decode(request_id, prompt, spec, kv_params, timeout=_left(deadline))
                async with contextlib.aclosing(deltas):
                    async for delta in deltas:
                        if delta.finish_reason in (FinishReason.ABORT, FinishReason.ERROR):
                            raise BrokenStreamError(
                                where.decode, f"the decode worker ended the request ({delta.finish_reason.value})"
                            )
                        if delta.token_ids:
                            unread = None
                        # cached_tokens: what the prefilling engine found in its prefix cache — the
                        # prefill worker's count, or (local prefill) the decode worker's own.
                        chunk = text.feed(delta, delta.cached_tokens if cached is None else cached)
                        if chunk is not None:
                            yield chunk
                            if chunk.finish_reason is not None:
                                return  # a stop string ended it: closing `deltas` aborts the decode
            finally:
                # Failed, cancelled or past its deadline before the first token: the
                # decode may never read the KV, which the prefill worker would hold to its lease.
                if unread is not None:
                    self._releaser.release(pool, request_id, unread, where.decode)
        raise BrokenStreamError(where.decode, "the decode stream ended without a finish reason")

    async def _prefill(
        self,
        pool: ModelPool,
        where: Placement,
        request_id: RequestId,
        prompt: list[int],
        spec: SamplingSpec,
        failed: set[WorkerId],
        uncached: int,
        deadline: float,
    ) -> tuple[dict[str, Any] | None, int | None]:
        """(kv_transfer_params, cached tokens) of a remote prefill, retried on other prefill
        workers; (None, None) when the decode worker is to prefill itself."""
        worker, tries = where.prefill, 0
        while worker is not None:
            try:
                with pool.counted(worker, uncached):
                    result = await pool.prefill_client(worker).prefill(
                        request_id, prompt, spec, timeout=min(self._timeouts.prefill_s, _left(deadline))
                    )
                return result.kv_transfer_params, result.cached_tokens
            except WorkerError as exc:
                if not retryable(exc):
                    raise
                self._out(pool, worker, failed, exc)
                tries += 1
                if tries > self._recovery.prefill_retries:
                    break
                self._tell("retried", "prefill")
                await self._recovery.backoff(tries - 1)
                worker = await self._placer.pick_prefill(pool, prompt, exclude=frozenset(failed))
        if where.prefill is not None:
            log.warning("%s: no prefill worker succeeded; the decode worker %s prefills it", request_id, where.decode)
            self._tell("retried", "local_prefill")
        return None, None

    def _out(self, pool: ModelPool, worker: WorkerId, failed: set[WorkerId], exc: BaseException) -> None:
        """A worker that failed a request: not tried again for it, and out of placement
        until its next successful Load poll (the circuit breaker's probe)."""
        log.warning("worker %s failed a request: %s", worker, exc)
        failed.add(worker)
        pool.down.add(worker)

    def _tell(self, event: str, *args: str) -> None:
        if self._observer is not None:
            getattr(self._observer, event)(*args)

    def _notify(self, where: Placement, prompt_tokens: int, arrival: float | None) -> None:
        if self._observer is None:
            return
        self._observer.placed("decode", where.decode)
        if where.prefill is not None:
            self._observer.placed("prefill", where.prefill)
        self._observer.disaggregated(where.reason)
        self._observer.prefix(where.matched_tokens, prompt_tokens)
        if arrival is not None:  # the first placement only
            self._observer.dispatched(time.perf_counter() - arrival)
