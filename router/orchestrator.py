"""The prefill → decode flow for one request, from token ids to text chunks.

1. place it (router/placement/placer.py): decode worker, whether to prefill
   remotely, prefill worker;
2. Prefill RPC (max_tokens=1, KV kept for the decode side);
3. Decode RPC with the prefill's kv_transfer_params, streamed;
4. detokenize incrementally and apply stop strings.
Cancelling the consumer (client gone, deadline) cancels the in-flight RPC, and
the worker aborts the engine request.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from pdserve.engine.base import FinishReason, SamplingSpec, TokenDelta
from pdserve.types import RequestId, WorkerId
from router.placement.placer import NoWorkersError, Placement, Placer
from router.pool import ModelPool
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
    prefill_s: float = 300.0
    request_s: float = 600.0


__all__ = ["NoWorkersError", "Orchestrator"]


class BrokenStreamError(Exception):
    """The decode stream ended without finishing (worker aborted or vanished)."""


class Observer(Protocol):
    """Told about each placement (metrics). Called on the event loop; must not block."""

    def placed(self, role: str, worker: WorkerId) -> None: ...

    def disaggregated(self, reason: str) -> None: ...

    def prefix(self, matched_tokens: int, prompt_tokens: int) -> None: ...

    def dispatched(self, queued_s: float) -> None: ...


class Orchestrator:
    def __init__(self, placer: Placer, timeouts: Timeouts, observer: Observer | None = None) -> None:
        self._placer = placer
        self._timeouts = timeouts
        self._observer = observer

    async def generate(self, pool: ModelPool, gen: Generation) -> AsyncIterator[Chunk]:
        request_id = RequestId(f"cmpl-{uuid.uuid4().hex}")
        where = await self._placer.place(pool, gen.prompt_ids)
        self._notify(where, len(gen.prompt_ids), gen.arrival)
        uncached = len(gen.prompt_ids) - where.matched_tokens
        with pool.counted(where.decode, 0 if where.prefill else uncached):
            # cached_tokens: what the prefilling engine found in its prefix cache — the prefill
            # worker's count, or (local prefill) the decode worker's own, from its stream.
            kv_params, cached = None, None
            if where.prefill is not None:
                with pool.counted(where.prefill, uncached):
                    result = await pool.prefill[where.prefill].prefill(
                        request_id, gen.prompt_ids, gen.spec, timeout=self._timeouts.prefill_s
                    )
                kv_params, cached = result.kv_transfer_params, result.cached_tokens
            log.info(
                "%s: %d prompt tokens, prefill on %s (%s cached), decode on %s (%s)",
                request_id,
                len(gen.prompt_ids),
                where.prefill or where.decode,
                "?" if cached is None else cached,
                where.decode,
                where.reason,
            )
            deltas = pool.decode[where.decode].decode(
                request_id, gen.prompt_ids, gen.spec, kv_params, timeout=self._timeouts.request_s
            )
            async with contextlib.aclosing(deltas):
                async for chunk in _to_text(pool, gen, deltas, cached):
                    yield chunk
                    if chunk.finish_reason is not None:
                        return  # a stop string ended it: closing `deltas` aborts the decode

    def _notify(self, where: Placement, prompt_tokens: int, arrival: float) -> None:
        if self._observer is None:
            return
        self._observer.placed("decode", where.decode)
        if where.prefill is not None:
            self._observer.placed("prefill", where.prefill)
        self._observer.disaggregated(where.reason)
        self._observer.prefix(where.matched_tokens, prompt_tokens)
        self._observer.dispatched(time.perf_counter() - arrival)


async def _to_text(
    pool: ModelPool, gen: Generation, deltas: AsyncIterator[TokenDelta], prefill_cached: int | None
) -> AsyncIterator[Chunk]:
    """One chunk per engine step (as vLLM streams), cut short by a stop string."""
    decoder = pool.tokenizer.stream_decoder(gen.prompt_ids)
    stops = StopMatcher(gen.stops)
    count = 0
    async for delta in deltas:
        cached = delta.cached_tokens if prefill_cached is None else prefill_cached
        if delta.finish_reason in (FinishReason.ABORT, FinishReason.ERROR):
            raise BrokenStreamError(f"the decode worker ended the request ({delta.finish_reason.value})")
        text: list[str] = []
        for i, token_id in enumerate(delta.token_ids):
            count += 1
            piece, stopped = stops.feed(decoder.step(token_id))
            text.append(piece)
            if stopped:
                yield Chunk("".join(text), count, "stop", cached, delta.token_ids[: i + 1])
                return
        if delta.finish_reason is not None:
            reason = "length" if delta.finish_reason is FinishReason.LENGTH else "stop"
            yield Chunk("".join(text) + stops.flush(), delta.completion_tokens, reason, cached, delta.token_ids)
            return
        if delta.token_ids:
            yield Chunk("".join(text), count, None, cached, delta.token_ids)
    raise BrokenStreamError("the decode stream ended without a finish reason")
