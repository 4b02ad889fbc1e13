"""The engine seam: one interface per role.

Callers: the prefill/decode worker servicers, one call per RPC. Many calls run
concurrently on one event loop; implementations must be safe for that.

Contract shared by both roles:
- ``start()`` is awaited once before any request; ``shutdown()`` once at the end.
- A request id is unique among the engine's live requests. Reusing a live id
  raises ``InvalidRequestError``.
- Cancelling the awaiting task (``asyncio.CancelledError``) aborts the engine
  request before the error propagates: no running request or KV is left behind
  by a cancelled caller (prefill KV held for a remote decode is the exception: the
  decode side's pull or ``DecodeEngine.release`` frees it, else the KV lease).
- ``InvalidRequestError``: the request can never succeed (e.g. prompt longer than
  the context). ``EngineDeadError``: the engine is gone; the process should exit.
"""

from __future__ import annotations

import enum
import math
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pdserve.kv.path import KvPathState
from pdserve.types import RequestId


class EngineError(Exception):
    """Base of all engine errors."""


class InvalidRequestError(EngineError):
    """The request is malformed for this engine; retrying elsewhere will not help."""


class EngineDeadError(EngineError):
    """The engine has died; the worker must stop so its supervisor restarts it."""


class EngineOverloadedError(EngineError):
    """The engine cannot take the request now (RESOURCE_EXHAUSTED); another worker may."""


class FinishReason(enum.Enum):
    STOP = "stop"
    LENGTH = "length"
    ABORT = "abort"
    ERROR = "error"  # the engine failed this request (e.g. the KV pull); safe to retry


LOGIT_BIAS_LIMIT = 100.0  # vLLM clamps every bias into [-100, 100]


@dataclass(frozen=True)
class SamplingSpec:
    """What an engine honours per request. Stop strings are the router's job; the
    router also turns bad words into token sequences (engines have no tokenizer).

    ``priority`` and ``cache_salt`` are not sampling, but they travel with it: both
    engines of a request must see the same salt, or the transferred blocks would not
    match the decode side's prefix cache.
    """

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 disables
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    min_tokens: int = 0
    presence_penalty: float = 0.0  # [-2, 2]
    frequency_penalty: float = 0.0  # [-2, 2]
    repetition_penalty: float = 1.0  # > 0; 1 is off
    min_p: float = 0.0  # [0, 1]; 0 is off
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias in [-100, 100])
    allowed_token_ids: tuple[int, ...] = ()  # empty: every token
    bad_words: tuple[tuple[int, ...], ...] = ()  # token sequences never to generate
    priority: int = 0  # lower is scheduled first (priority scheduling only)
    cache_salt: str = ""  # "": none
    logprobs: int | None = None  # top logprobs per generated token (0: the sampled token's only)
    # vLLM's StructuredOutputsParams fields (one constraint: json, regex, choice, grammar,
    # json_object), as JSON; "" = unconstrained. The engine needs the model's tokenizer.
    structured_outputs: str = ""
    # Top logprobs per prompt position (0: the prompt token's only). Honoured by the engine
    # that computes the prompt: the prefill engine, or a decode engine prefilling locally.
    prompt_logprobs: int | None = None
    # vLLM's per-request ``reasoning_ended``: whether grammars may constrain from the first
    # token (True) or wait for the end of reasoning (False); None: the engine's parser decides.
    reasoning_ended: bool | None = None

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0")
        if not (-2 <= self.presence_penalty <= 2 and -2 <= self.frequency_penalty <= 2):
            raise ValueError("presence_penalty and frequency_penalty must be in [-2, 2]")
        if not (math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0):
            raise ValueError("repetition_penalty must be a finite number above 0")
        if not 0 <= self.min_p <= 1:
            raise ValueError("min_p must be in [0, 1]")
        if any(abs(bias) > LOGIT_BIAS_LIMIT for _, bias in self.logit_bias):
            raise ValueError(f"logit_bias values must be in [-{LOGIT_BIAS_LIMIT:g}, {LOGIT_BIAS_LIMIT:g}]")
        if self.logprobs is not None and self.logprobs < 0:
            raise ValueError("logprobs must be >= 0")
        if self.prompt_logprobs is not None and self.prompt_logprobs < 0:
            raise ValueError("prompt_logprobs must be >= 0")
        if any(not seq for seq in self.bad_words):
            raise ValueError("bad_words entries must be non-empty token sequences")


@dataclass(frozen=True)
class PrefillResult:
    first_token_id: int
    cached_tokens: int  # prompt tokens served from the prefix cache, in [0, len(prompt)]
    kv_transfer_params: dict[str, Any]  # opaque connector handle for the decode side
    # Asked for (``SamplingSpec.prompt_logprobs``): prompt positions 1.. (position 0 has none).
    prompt_logprobs: tuple[TokenLogprobs, ...] = ()


@dataclass(frozen=True)
class TokenLogprobs:
    """One position's logprobs as vLLM reports them: ``(token id, logprob, rank)`` in
    vLLM's order — the sampled (or, for a prompt position, the prompt's) token first, then
    the top ones (that token once if it is among them). The router renders them exactly
    as vLLM's server."""

    entries: tuple[tuple[int, float, int], ...]


@dataclass(frozen=True)
class TokenDelta:
    """New tokens of one engine step. ``finish_reason`` is set on the last one only.
    ``logprobs``: one per token id when the request asked for them, else empty.
    ``prompt_logprobs``: on the first delta of a local prefill that asked for them,
    prompt positions 1.. (as ``PrefillResult.prompt_logprobs``)."""

    token_ids: tuple[int, ...]
    completion_tokens: int  # cumulative, including token_ids
    finish_reason: FinishReason | None = None
    cached_tokens: int = 0
    logprobs: tuple[TokenLogprobs, ...] = ()
    prompt_logprobs: tuple[TokenLogprobs, ...] = ()
    # Set from the wire (DecodeChunk.first_token_s) on the first delta with tokens: the decode
    # worker's own time to it. Engines leave it 0.
    worker_first_token_s: float = 0.0


@dataclass(frozen=True)
class EngineInfo:
    role: str
    model: str
    block_size: int
    vllm_version: str
    kv_capacity_tokens: int
    max_model_len: int
    engine: str
    kv_events: str = ""  # ZMQ endpoint of the engine's KV event publisher ("" = not published)
    kv_replay: str = ""  # its replay endpoint
    model_path: str = ""  # where the worker loaded the model (a router on the same host reads the tokenizer)
    scheduling_policy: str = "fcfs"  # "priority": requests' priority orders the engine's queue
    max_logprobs: int = 20  # top logprobs per position the engine computes at most (vLLM's max_logprobs)
    system_fingerprint: str = ""  # as vLLM's server stamps responses: version, parallelism, config hash
    reasoning_parser: str = ""  # the engine's: its grammars wait for the end of reasoning; "": none


@dataclass(frozen=True)
class KvTransferTotals:
    """KV transfers since the engine started, counted where the pull happens."""

    transfers: int = 0
    failures: int = 0
    bytes: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class EngineLoad:
    num_running: int = 0
    num_waiting: int = 0
    kv_cache_usage: float = 0.0  # fraction in [0, 1]
    num_inflight: int = 0  # calls accepted and not yet returned
    kv: KvTransferTotals = field(default_factory=lambda: KvTransferTotals())
    prefix_queries: int = 0  # prompt tokens looked up in the prefix cache since start
    prefix_hits: int = 0  # of those, tokens found
    kv_path: KvPathState = field(default_factory=KvPathState)  # the pulling side's measured KV path


class _EngineLifecycle(Protocol):
    async def start(self) -> None: ...

    async def shutdown(self) -> None: ...

    def info(self) -> EngineInfo: ...

    async def load(self) -> EngineLoad: ...

    def is_dead(self) -> bool:
        """True once the engine can serve nothing more (checked by health probes)."""
        ...


class PrefillEngine(_EngineLifecycle, Protocol):
    async def prefill(
        self, request_id: RequestId, prompt_token_ids: Sequence[int], sampling: SamplingSpec
    ) -> PrefillResult:
        """Compute the prompt's KV, keep it for a remote decode, return its handle.

        Samples exactly one token. The returned ``kv_transfer_params`` stays valid
        until the decode side pulls it or the engine's KV lease expires. With
        ``sampling.prompt_logprobs`` set, the result carries the prompt's logprobs.
        """
        ...


class DecodeEngine(_EngineLifecycle, Protocol):
    def decode(
        self,
        request_id: RequestId,
        prompt_token_ids: Sequence[int],
        sampling: SamplingSpec,
        kv_transfer_params: dict[str, Any] | None,
    ) -> AsyncIterator[TokenDelta]:
        """Stream the completion. With ``kv_transfer_params`` the prompt's KV is
        pulled from the prefill engine named there; with ``None`` the prompt is
        prefilled locally. Closing the iterator early aborts the request.
        ``sampling.prompt_logprobs`` is honoured only by a local prefill (its first
        delta carries them); with ``kv_transfer_params`` the prefill engine computed them.
        """
        ...

    async def release(self, request_id: RequestId, kv_transfer_params: dict[str, Any]) -> None:
        """Have the prefill engine named in ``kv_transfer_params`` free that KV now,
        without pulling it: for a prefill whose decode will not run (it failed before
        its first token, or its caller left). Any decode engine can do it, not only the
        one the request was placed on. Returns once the notice is queued; the prefill
        side frees the blocks a step or two later. A notice that never arrives leaves
        the blocks to the prefill's KV lease. ``request_id`` names the notice in logs;
        it need not be unique.
        """
        ...
