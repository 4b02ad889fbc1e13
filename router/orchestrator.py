"""The prefill → decode flow for one request, from token ids to text chunks.

1. pick a decode worker, then a prefill worker (none configured → the decode
   worker prefills locally);
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
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from pdserve.engine.base import FinishReason, SamplingSpec, TokenDelta
from pdserve.types import RequestId, WorkerId
from router.placement import Picker
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


class NoWorkersError(Exception):
    """No decode worker is available for the model."""


class BrokenStreamError(Exception):
    """The decode stream ended without finishing (worker aborted or vanished)."""


class Observer(Protocol):
    """Told about each placement (metrics). Called on the event loop; must not block."""

    def placed(self, role: str, worker: WorkerId) -> None: ...

    def disaggregated(self, remote: bool) -> None: ...

    def dispatched(self, queued_s: float) -> None: ...


class Orchestrator:
    def __init__(
        self, prefill_picker: Picker, decode_picker: Picker, timeouts: Timeouts, observer: Observer | None = None
    ) -> None:
        self._prefill_picker = prefill_picker
        self._decode_picker = decode_picker
        self._timeouts = timeouts
        self._observer = observer

    async def generate(self, pool: ModelPool, gen: Generation) -> AsyncIterator[Chunk]:
        if not pool.decode:
            raise NoWorkersError(f"no decode worker serves {pool.name!r}")
        request_id = RequestId(f"cmpl-{uuid.uuid4().hex}")
        decode_id = self._decode_picker.pick(list(pool.decode), pool.inflight)
        prefill_id = self._prefill_picker.pick(list(pool.prefill), pool.inflight) if pool.prefill else None
        self._notify(decode_id, prefill_id, gen.arrival)
        with _counted(pool, decode_id):
            kv_params, cached = None, 0
            if prefill_id is not None:
                with _counted(pool, prefill_id):
                    result = await pool.prefill[prefill_id].prefill(
                        request_id, gen.prompt_ids, gen.spec, timeout=self._timeouts.prefill_s
                    )
                kv_params, cached = result.kv_transfer_params, result.cached_tokens
                log.info(
                    "%s: %d prompt tokens, prefill on %s (%d cached) -> decode on %s",
                    request_id,
                    len(gen.prompt_ids),
                    prefill_id,
                    cached,
                    decode_id,
                )
            else:
                log.info("%s: %d prompt tokens, prefill and decode on %s", request_id, len(gen.prompt_ids), decode_id)
            deltas = pool.decode[decode_id].decode(
                request_id, gen.prompt_ids, gen.spec, kv_params, timeout=self._timeouts.request_s
            )
            async with contextlib.aclosing(deltas):
                async for chunk in _to_text(pool, gen, deltas, cached):
                    yield chunk
                    if chunk.finish_reason is not None:
                        return  # a stop string ended it: closing `deltas` aborts the decode

    def _notify(self, decode_id: WorkerId, prefill_id: WorkerId | None, arrival: float) -> None:
        if self._observer is None:
            return
        self._observer.placed("decode", decode_id)
        if prefill_id is not None:
            self._observer.placed("prefill", prefill_id)
        self._observer.disaggregated(prefill_id is not None)
        self._observer.dispatched(time.perf_counter() - arrival)


async def _to_text(
    pool: ModelPool, gen: Generation, deltas: AsyncIterator[TokenDelta], cached: int
) -> AsyncIterator[Chunk]:
    """One chunk per engine step (as vLLM streams), cut short by a stop string."""
    decoder = pool.tokenizer.stream_decoder(gen.prompt_ids)
    stops = StopMatcher(gen.stops)
    count = 0
    async for delta in deltas:
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


@contextlib.contextmanager
def _counted(pool: ModelPool, worker: WorkerId) -> Iterator[None]:
    pool.inflight[worker] += 1
    try:
        yield
    finally:
        pool.inflight[worker] -= 1
