"""The prefill → decode flow for one request, from token ids to text chunks.

1. place it (router/placer.py): decode worker, whether to prefill remotely,
   prefill worker;
2. Prefill RPC (max_tokens=1, KV kept for the decode side);
3. Decode RPC with the prefill's kv_transfer_params, streamed;
4. detokenize incrementally and apply stop strings.
A worker that fails is worked around as router/recovery.py says (retry, local
prefill, re-place, migrate mid-stream); the client sees one stream. Cancelling
the consumer (client gone, deadline) cancels the in-flight RPC, and the worker
aborts the engine request. A remote prefill's KV that no decode token shows was
read is released (router/release.py). Everything about the request travels in
its ``RequestState`` (router/request_state.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import grpc

from pdserve.engine.base import FinishReason, PrefillResult, TokenDelta
from pdserve.types import WorkerId
from router.errors import AttemptTimeout, BrokenStreamError, WorkerError, WorkerFailure
from router.handover import Handover, HandoverClock
from router.observer import NullObserver, Observer
from router.outliers import Failure
from router.placement.base import Stream
from router.placement.decider import Outcome
from router.placer import Placer
from router.pool import ModelPool
from router.recovery import Recovery, RetryBudget
from router.release import KvReleaser
from router.request import Chunk, Generation, Timeouts
from router.request_state import RequestState

log = logging.getLogger(__name__)

__all__ = ["Orchestrator"]


class Orchestrator:
    def __init__(
        self, placer: Placer, timeouts: Timeouts, observer: Observer | None = None, recovery: Recovery | None = None
    ) -> None:
        self._placer = placer
        self._timeouts = timeouts
        self._observer: Observer = observer or NullObserver()
        self._recovery = recovery or Recovery()
        self._budget = RetryBudget(self._recovery.retry_budget, self._recovery.min_retries)
        self._releaser = KvReleaser(timeouts.release_s, self._observer.kv_released)

    async def generate(self, pool: ModelPool, gens: Sequence[Generation]) -> AsyncGenerator[Chunk, None]:
        """One request's chunks: one Generation per prompt (a completions batch has several,
        all with the same ``n``). The prompts are different requests as far as placement
        goes: each is placed on its own, with its own choices. Chunks carry vLLM's choice
        index, prompt index * n + choice, and interleave as their tokens come."""
        streams = [self._prompt(pool, gen) for gen in gens]
        merged = streams[0] if len(streams) == 1 else _merge(streams, width=gens[0].n)
        async with contextlib.aclosing(merged) as chunks:
            async for chunk in chunks:
                yield chunk

    def _prompt(self, pool: ModelPool, gen: Generation) -> AsyncGenerator[Chunk, None]:
        if gen.n > 1:
            return self.generate_choices(pool, gen.choices())
        return self._run(RequestState(pool, gen, self._timeouts.request_s))

    async def generate_choices(self, pool: ModelPool, gens: Sequence[Generation]) -> AsyncGenerator[Chunk, None]:
        """The ``len(gens)`` choices of one request, interleaved, each chunk tagged with its
        ``index``. Choice 0 is placed as any request: one prefill, one KV transfer. Once
        its first chunk is out (the decode engine holds the prompt's KV), the others run on
        the same decode worker, prefilling locally from its prefix cache, so the prompt is
        computed and moved once whatever n is. Each choice is retried or migrated on its
        own (a later choice whose worker fails is placed afresh)."""
        first = RequestState(pool, gens[0], self._timeouts.request_s)
        lead = self._run(first)
        head = await anext(lead)  # errors before the first token keep their HTTP status
        pin = first.placement.decode
        streams = [_prepend(head, lead)]
        streams += [self._run(RequestState(pool, g, self._timeouts.request_s, pin=pin)) for g in gens[1:]]
        async with contextlib.aclosing(_merge(streams, width=1)) as merged:
            async for chunk in merged:
                yield chunk

    async def _run(self, state: RequestState) -> AsyncGenerator[Chunk, None]:
        self._budget.request()
        while True:
            state.begin()
            try:
                # aclosing: a consumer that leaves ends the attempt's RPCs now, not at garbage collection
                async with contextlib.aclosing(self._attempt(state)) as chunks:
                    async for chunk in chunks:
                        yield chunk
                return  # _attempt ends with a finish chunk, or raises
            except WorkerFailure as exc:
                if not exc.retryable:
                    raise
                self._out(state, exc.worker, exc)
                if not self._again(state):
                    raise
                await self._recovery.backoff(state.restarts + state.migrations - 1)

    def _again(self, state: RequestState) -> bool:
        """After a decode failure: count the next attempt; False past the limits."""
        if state.output.produced:
            if state.gen.spec.structured_outputs:
                # A migration replays the output as prompt: the grammar would start a new
                # document mid-way. Retried before the first token only.
                return False
            state.migrated()
            if state.migrations > self._recovery.migrations:
                return False
            self._observer.migrated()
        else:
            state.restarted()
            if state.restarts > self._recovery.decode_retries:
                return False
            self._observer.retried("decode")
        return self._within_budget()

    def _within_budget(self) -> bool:
        if self._budget.try_retry():
            return True
        self._observer.retried("over_budget")
        return False

    async def _attempt(self, state: RequestState) -> AsyncGenerator[Chunk, None]:
        first = state.first
        where = state.pinned() or await self._placer.place(state.pool, state.prompt, state.failed, state.match())
        state.placed(where)
        self._notify(state, first)
        stream = Stream(state.spec.max_tokens)
        counted = state.pool.counted(where.decode, 0 if where.prefill else state.uncached)
        with counted, state.pool.streaming(where.decode, stream):
            started = time.perf_counter()
            kv_params, cached = await self._prefill(state)
            clock = HandoverClock(where, started, kv_params is not None and where.prefill not in state.failed)
            log.info(
                "%s: %d prompt tokens, prefill on %s (%s cached), decode on %s (%s)",
                state.request_id,
                len(state.prompt),
                where.prefill if kv_params is not None else where.decode,
                "?" if cached is None else cached,
                where.decode,
                where.reason,
            )
            finished = False
            async with contextlib.aclosing(self._decode(state, kv_params, cached, clock, stream)) as chunks:
                async for chunk in chunks:
                    finished = chunk.finish_reason is not None
                    if finished:
                        state.pool.succeeded(where.decode)
                    yield chunk
        if finished:
            return
        raise BrokenStreamError(where.decode, "the decode stream ended without a finish reason")

    async def _decode(
        self,
        state: RequestState,
        kv_params: dict[str, Any] | None,
        cached: int | None,
        clock: HandoverClock,
        stream: Stream,
    ) -> AsyncGenerator[Chunk, None]:
        """The attempt's decode stream as chunks; it ends after the finish chunk. ``stream``
        follows its tokens (what the disaggregation decider reads of it)."""
        decode = state.placement.decode
        unread = kv_params  # the prefill's KV, until a token shows the decode engine has it
        pulling = state.placement.transfer_tokens if kv_params is not None else 0
        with state.pool.pulling(decode, pulling) as kv_in:  # what the next placements queue behind
            try:
                client = state.pool.decode_client(decode)
                rpc = client.decode(
                    state.engine_id("decode"), state.prompt, state.spec, kv_params, timeout=state.left()
                )
                deltas = self._paced(state, rpc)
                async with contextlib.aclosing(rpc), contextlib.aclosing(deltas):
                    async for delta in deltas:
                        if delta.finish_reason in (FinishReason.ABORT, FinishReason.ERROR):
                            raise BrokenStreamError(
                                decode, f"the decode worker ended the request ({delta.finish_reason.value})"
                            )
                        if delta.token_ids and (measured := clock.first_token(delta.worker_first_token_s)):
                            self._learn(*measured)
                        if delta.token_ids:
                            unread = None
                            kv_in()
                            stream.tokens = delta.completion_tokens
                            stream.started = stream.started or time.monotonic()
                        # cached_tokens: what the prefilling engine found in its prefix cache — the
                        # prefill worker's count, or (local prefill) the decode worker's own.
                        chunk = state.output.feed(delta, delta.cached_tokens if cached is None else cached)
                        if chunk is not None:
                            yield chunk
                            if chunk.finish_reason is not None:
                                return  # a stop string ended it: closing `deltas` aborts the decode
            finally:
                # Failed, cancelled or past its deadline before the first token: the
                # decode may never read the KV, which the prefill worker would hold to its lease.
                if unread is not None:
                    self._releaser.release(state.pool, state.request_id, unread, decode)

    async def _paced(
        self, state: RequestState, deltas: AsyncGenerator[TokenDelta, None]
    ) -> AsyncGenerator[TokenDelta, None]:
        """``deltas``, or ``AttemptTimeout`` when the first token or the next one takes
        longer than its per-attempt timeout (a wedged engine behind a live server). A
        limit past the request's deadline is left to that deadline (a RequestTimeout)."""
        first = True
        while True:
            what, limit = ("first token", self._timeouts.first_token_s) if first else ("token", self._timeouts.stall_s)
            bounded = limit < state.left()
            try:
                async with asyncio.timeout(limit if bounded else None):
                    delta = await anext(deltas)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise AttemptTimeout(state.placement.decode, what, limit) from None
            first = first and not delta.token_ids
            yield delta

    async def _prefill(self, state: RequestState) -> tuple[dict[str, Any] | None, int | None]:
        """(kv_transfer_params, cached tokens) of a remote prefill, retried on other prefill
        workers; (None, None) when the decode worker is to prefill itself."""
        where = state.placement
        worker, tries = where.prefill, 0
        while worker is not None:
            try:
                result = await self._prefill_once(state, worker)
                state.pool.succeeded(worker)
                if state.spec.prompt_logprobs is not None:
                    state.output.prompt_scored(result.prompt_logprobs)
                return result.kv_transfer_params, result.cached_tokens
            except WorkerFailure as exc:
                if not exc.retryable:
                    raise
                self._out(state, worker, exc)
                tries += 1
                if tries > self._recovery.prefill_retries or not self._within_budget():
                    break
                self._observer.retried("prefill")
                await self._recovery.backoff(tries - 1)
                worker = await self._placer.pick_prefill(state.pool, state.prompt, state.failed, state.match())
        if where.prefill is not None:
            log.warning(
                "%s: no prefill worker succeeded; the decode worker %s prefills it", state.request_id, where.decode
            )
            self._observer.retried("local_prefill")
        return None, None

    async def _prefill_once(self, state: RequestState, worker: WorkerId) -> PrefillResult:
        """One prefill attempt; ``AttemptTimeout`` past the prefill timeout when the
        request still had longer."""
        left = state.left()
        with state.pool.counted(worker, state.uncached):
            call = asyncio.ensure_future(
                state.pool.prefill_client(worker).prefill(
                    state.engine_id("prefill"), state.prompt, state.spec, timeout=min(self._timeouts.prefill_s, left)
                )
            )
            try:
                return await asyncio.shield(call)
            except asyncio.CancelledError:  # the caller left: an answer on its way is released
                decode = state.placement.decode
                self._releaser.settle(state.pool, state.request_id, call, decode, self._timeouts.settle_s)
                raise
            except WorkerError as exc:
                if exc.code is grpc.StatusCode.DEADLINE_EXCEEDED and self._timeouts.prefill_s < left:
                    raise AttemptTimeout(worker, "prefill", self._timeouts.prefill_s) from None
                raise

    def _learn(self, outcome: Outcome, handover: Handover | None) -> None:
        if handover is not None:
            self._observer.handed_over(handover.seconds, handover.worker_s)
        self._placer.observe(outcome)

    def _out(self, state: RequestState, worker: WorkerId, exc: WorkerFailure) -> None:
        """A worker that failed a request: not tried again for it, and counted by the
        pool's outlier ejection (router/outliers.py)."""
        log.warning("worker %s failed a request: %s", worker, exc)
        state.fail(worker)
        state.pool.failed(worker, failure_of(exc))

    def _notify(self, state: RequestState, first: bool) -> None:
        where = state.placement
        self._observer.placed("decode", where.decode)
        if where.prefill is not None:
            self._observer.placed("prefill", where.prefill)
        self._observer.disaggregated(where.prefill is not None, where.reason)
        self._observer.prefix(where.matched_tokens, len(state.prompt))
        if first:  # the first placement only
            self._observer.dispatched(time.perf_counter() - state.gen.arrival)


def failure_of(exc: WorkerFailure) -> Failure:
    """How outlier ejection counts a worker's failure."""
    if isinstance(exc, AttemptTimeout):
        return Failure.TIMEOUT
    if isinstance(exc, WorkerError) and exc.code is grpc.StatusCode.UNAVAILABLE:
        return Failure.GONE
    return Failure.ERROR


async def _prepend(head: Chunk, rest: AsyncGenerator[Chunk, None]) -> AsyncGenerator[Chunk, None]:
    async with contextlib.aclosing(rest):
        yield head
        async for chunk in rest:
            yield chunk


_DONE = object()


async def _merge(streams: Sequence[AsyncGenerator[Chunk, None]], width: int) -> AsyncGenerator[Chunk, None]:
    """Chunks of every stream as they come, stream i's chunk c tagged with index
    i * width + c's own index (``width``: how many indices one stream's chunks use). The
    first error ends the merge; leaving it (or an error) closes every stream, which ends
    their RPCs and aborts their engine requests."""
    queue: asyncio.Queue[tuple[int, Chunk | None, object]] = asyncio.Queue()

    async def pump(index: int, stream: AsyncGenerator[Chunk, None]) -> None:
        try:
            async with contextlib.aclosing(stream):
                async for chunk in stream:
                    await queue.put((index, chunk, None))
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            await queue.put((index, None, exc))
            return
        await queue.put((index, None, _DONE))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        live = len(tasks)
        while live:
            index, chunk, end = await queue.get()
            if end is _DONE:
                live -= 1
            elif isinstance(end, BaseException):
                raise end
            elif chunk is not None:
                yield dataclasses.replace(chunk, index=index * width + chunk.index)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
