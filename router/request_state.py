"""One request's state across its attempts (re-placements and migrations).

The orchestrator's steps pass this object, and only this, along. Its fields are
written by its own methods: an attempt begins, a worker failed, a placement was made.
"""

from __future__ import annotations

import dataclasses
import time
import uuid

from pdserve.engine.base import FinishReason, TokenDelta, TokenLogprobs
from pdserve.types import RequestId, WorkerId
from router.errors import RequestTimeout
from router.placer import Placement, PrefixMatch
from router.pool import ModelPool
from router.request import Chunk, Generation
from router.tokenizer import StopMatcher


class Output:
    """Generated ids → text chunks, across every decode stream of one request: a
    migrated request continues the same detokenizer, stop matcher and count."""

    def __init__(self, pool: ModelPool, gen: Generation) -> None:
        self._decoder = pool.tokenizer.stream_decoder(gen.prompt_ids, gen.skip_special_tokens)
        self._stops = StopMatcher(gen.stops, gen.include_stop)
        self._eos = frozenset(pool.tokenizer.eos_token_ids)
        self._min_tokens = gen.spec.min_tokens
        self.produced: list[int] = []
        self.cached: int | None = None  # the first placement's prefill-side count
        # The prompt's logprobs once an engine computed them (asked for: the first chunk has them).
        self.prompt_logprobs: tuple[TokenLogprobs, ...] | None = None
        self._prompt_logprobs_due = gen.spec.prompt_logprobs is not None

    def prompt_scored(self, logprobs: tuple[TokenLogprobs, ...]) -> None:
        """The prompt's logprobs, from the prefill (or the first delta of a local prefill)."""
        if self.prompt_logprobs is None:
            self.prompt_logprobs = logprobs

    def feed(self, delta: TokenDelta, cached: int) -> Chunk | None:
        chunk = self._feed(delta, cached)
        if chunk is not None and self._prompt_logprobs_due:
            self._prompt_logprobs_due = False
            return dataclasses.replace(chunk, prompt_logprobs=self.prompt_logprobs or ())
        return chunk

    def _feed(self, delta: TokenDelta, cached: int) -> Chunk | None:
        if delta.prompt_logprobs:
            self.prompt_scored(delta.prompt_logprobs)
        if self.cached is None:
            self.cached = cached
        text: list[str] = []
        ids, lps = delta.token_ids, delta.logprobs
        # The token that stopped the engine (EOS or a stop token id) is counted and its id
        # returned, but its text is not in the output, as in vLLM.
        stop_token = ids[-1] if ids and delta.finish_reason is FinishReason.STOP else None
        for i, token_id in enumerate(ids):
            self.produced.append(token_id)
            if i == len(ids) - 1 and stop_token is not None:
                break
            # stop strings count only once min_tokens are out, as in vLLM's detokenizer
            piece, stop = self._stops.feed(self._decoder.step(token_id), len(self.produced) > self._min_tokens)
            text.append(piece)
            if stop is not None:  # the tokens after the stop string, and their logprobs, are dropped
                return Chunk(
                    "".join(text), len(self.produced), "stop", self.cached, ids[: i + 1], lps[: i + 1], stop_reason=stop
                )
        if delta.finish_reason is not None:
            reason = "length" if delta.finish_reason is FinishReason.LENGTH else "stop"
            why = stop_token if stop_token not in self._eos else None  # vLLM names a stop token id, not EOS
            text.append(self._stops.flush())
            return Chunk("".join(text), len(self.produced), reason, self.cached, ids, lps, stop_reason=why)
        return Chunk("".join(text), len(self.produced), None, self.cached, ids, lps) if ids else None


class RequestState:
    """``pool`` and ``gen``: what was asked; ``output``: what was streamed so far;
    per attempt (``begin``): its request id, prompt (a migration replays what was
    streamed), sampling (what is left of the token budget) and placement."""

    def __init__(self, pool: ModelPool, gen: Generation, request_s: float, pin: WorkerId | None = None) -> None:
        self.pool = pool
        self.gen = gen
        # A later choice of an n > 1 request: decode on the first choice's worker, whose
        # prefix cache holds the prompt's pulled KV (router/orchestrator.py, generate_choices).
        self.pin = pin
        self.output = Output(pool, gen)
        self.deadline = gen.arrival + request_s  # gRPC deadlines carry it to the workers too
        self.restarts = 0  # placed again before the first token
        self.migrations = 0  # moved after tokens were streamed
        # The client's id (X-Request-Id or request_id) names the request in every log line and,
        # prefixed with the role, in each engine; a suffix keeps two clients' equal ids apart.
        self._base_id = f"{gen.request_id}-{uuid.uuid4().hex[:8]}" if gen.request_id else f"cmpl-{uuid.uuid4().hex}"
        self._failed: set[WorkerId] = set()
        self._match: tuple[int, PrefixMatch] | None = None  # (prompt length, its lookup)
        self.request_id = RequestId(self._base_id)
        self.prompt = list(gen.prompt_ids)
        self.spec = gen.spec
        self._where: Placement | None = None

    @property
    def first(self) -> bool:
        """The request's first attempt."""
        return not self.restarts + self.migrations

    @property
    def failed(self) -> frozenset[WorkerId]:
        """Workers that failed this request: not tried again for it."""
        return frozenset(self._failed)

    @property
    def placement(self) -> Placement:
        assert self._where is not None, "placed() comes first in an attempt"
        return self._where

    @property
    def uncached(self) -> int:
        """Prompt tokens of this attempt the first worker does not hold (block index)."""
        return len(self.prompt) - self.placement.matched_tokens

    def begin(self) -> None:
        """A new attempt: its id, and the prompt and budget that are left."""
        n = self.restarts + self.migrations
        self.request_id = RequestId(self._base_id if not n else f"{self._base_id}-{n}")
        produced = len(self.output.produced)
        self.prompt = self.gen.prompt_ids + self.output.produced
        self.spec = dataclasses.replace(
            self.gen.spec,
            max_tokens=self.gen.spec.max_tokens - produced,
            min_tokens=max(0, self.gen.spec.min_tokens - produced),
            # computed once: an attempt after the prefill that scored the prompt needs none
            prompt_logprobs=self.gen.spec.prompt_logprobs if self.output.prompt_logprobs is None else None,
        )
        self._where = None

    def placed(self, where: Placement) -> None:
        """This attempt's placement; its prefix lookup serves the attempts with the same prompt."""
        self._where = where
        self._match = (len(self.prompt), where.match)

    def pinned(self) -> Placement | None:
        """This attempt on the pinned worker, prefilling locally, while it has not failed."""
        if self.pin is None or self.pin in self._failed or self.pin not in self.pool.live("decode", self.failed):
            return None
        return Placement(self.pin, None, "choice", 0)

    def engine_id(self, role: str) -> RequestId:
        """This attempt's request id in the engine of ``role`` ("prefill" or "decode")."""
        return RequestId(f"{role}-{self.request_id}")

    def fail(self, worker: WorkerId) -> None:
        self._failed.add(worker)

    def restarted(self) -> None:
        self.restarts += 1

    def migrated(self) -> None:
        self.migrations += 1

    def left(self) -> float:
        """Seconds to the request's deadline; ``RequestTimeout`` once it has passed."""
        left = self.deadline - time.perf_counter()
        if left <= 0:
            raise RequestTimeout
        return left

    def match(self) -> PrefixMatch | None:
        """The block index lookup of this attempt's prompt, if an earlier placement of the
        same prompt made it (a migration's longer prompt needs its own). A salted request
        matches nothing: the index holds unsalted hashes, and the engines' salted blocks
        are not shared with any other request's."""
        if self.gen.spec.cache_salt:
            return PrefixMatch()
        if self._match is not None and self._match[0] == len(self.prompt):
            return self._match[1]
        return None
