"""A request as the router's domain sees it: in token space, answered in chunks.

Shared by admission, orchestration, metrics and rendering; imports nothing of theirs.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from pdserve.engine.base import SamplingSpec, TokenLogprobs


@dataclass(frozen=True)
class Generation:
    """A validated request in token space."""

    prompt_ids: list[int]
    spec: SamplingSpec
    stops: tuple[str, ...] = ()
    arrival: float = field(default_factory=time.perf_counter)  # when the HTTP request came in
    include_stop: bool = False  # the matched stop string stays in the text
    skip_special_tokens: bool = True  # special tokens are left out of the text
    n: int = 1  # choices, each sampled on its own from one prefill
    request_id: str = ""  # the client's (X-Request-Id, else the body's request_id): logs and engine ids

    def choices(self) -> list[Generation]:
        """One Generation per choice; choice i samples with ``seed + i``, as vLLM's
        parallel sampling does."""
        seed = self.spec.seed
        return [
            dataclasses.replace(
                self,
                n=1,
                # the prompt's logprobs are the request's, computed once (with choice 0's prefill)
                spec=dataclasses.replace(
                    self.spec,
                    seed=None if seed is None else seed + i,
                    prompt_logprobs=self.spec.prompt_logprobs if i == 0 else None,
                ),
            )
            for i in range(self.n)
        ]


@dataclass(frozen=True)
class Chunk:
    """Text to send now. The last chunk has ``finish_reason`` and final counts."""

    text: str
    completion_tokens: int
    finish_reason: str | None = None
    cached_tokens: int = 0
    token_ids: tuple[int, ...] = ()  # tokens consumed since the previous chunk
    logprobs: tuple[TokenLogprobs, ...] = ()  # one per token id, when asked for
    index: int = 0  # the choice it belongs to: prompt index * n + choice (n > 1, completions batches)
    stop_reason: str | int | None = None  # the stop string, or stop token id, that ended it (vLLM's)
    # On the request's first chunk, when asked for: the prompt's logprobs, positions 1..
    # (position 0 has none); None: not asked for, or not this chunk.
    prompt_logprobs: tuple[TokenLogprobs, ...] | None = None


@dataclass(frozen=True)
class Timeouts:
    """Deadlines. The per-attempt ones (prefill, first token, stall) are well inside the
    request's: an attempt past one fails like a worker error, and is retried elsewhere
    while the request has time left (router/recovery.py)."""

    prefill_s: float = 60.0  # one prefill RPC
    request_s: float = 600.0  # the whole request from its arrival: queue, retries, migrations, stream
    release_s: float = 3.0  # one Release RPC; off the request's path (router/release.py)
    # A prefill RPC whose caller left: how long it may still answer, so that its KV is
    # released rather than held to the lease (router/release.py); off the request's path.
    settle_s: float = 2.0
    first_token_s: float = 60.0  # a decode attempt's first token (its KV pull or local prefill included)
    stall_s: float = 30.0  # between two tokens of a decode stream

    def __post_init__(self) -> None:
        for name in ("prefill_s", "request_s", "release_s", "settle_s", "first_token_s", "stall_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")


@dataclass(frozen=True)
class Answer:
    """What a route renders: the request's first chunk (pulled before the response starts,
    so errors before the first token keep their HTTP status) and the rest, admitted,
    generated and timed. Closing ``rest`` ends the request on its workers."""

    model: str
    prompts: tuple[tuple[int, ...], ...]  # each prompt's ids: one, or a completions batch's
    n: int  # choices per prompt; a chunk's ``index`` is prompt index * n + choice (vLLM's)
    first: Chunk
    rest: AsyncIterator[Chunk]
    token_texts: Callable[[Sequence[int]], list[str]]  # each token on its own, as logprobs show it
    decode: Callable[[Sequence[int]], str]  # tokens as one text, special tokens kept (an echoed prompt)
    system_fingerprint: str | None = None  # the model's decode workers' (vLLM's), if they agree

    async def chunks(self) -> AsyncIterator[Chunk]:
        """Every chunk, the first included."""
        yield self.first
        async for chunk in self.rest:
            yield chunk
