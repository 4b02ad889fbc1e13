"""A router over scripted workers (no engines, no network): the one harness the router's
unit tests share. ``scripted_router`` wires pool, placer, orchestrator, admission and
metrics the way router/__main__.py does, behind FastAPI's TestClient."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from fastapi.testclient import TestClient
from prometheus_client import generate_latest

from pdserve.engine.base import FinishReason, PrefillResult, SamplingSpec, TokenDelta, TokenLogprobs
from pdserve.state import StateStore
from pdserve.state.memory import MemoryStore
from pdserve.types import RequestId, WorkerId
from router.admission import Admission, AdmissionLimits
from router.api.app import create_app
from router.chat import ChatOptions
from router.config import MAX_BODY_BYTES
from router.errors import WorkerError
from router.metrics import RouterMetrics
from router.orchestrator import Orchestrator
from router.placement import make_policy
from router.placement.decider import ThresholdDecider
from router.placer import Placer
from router.pool import ModelPool
from router.recovery import Recovery
from router.request import Timeouts
from router.service import Background, RouterService
from router.tokenizer import TokenIdsOnly, Tokenizer
from tests.factories import make_tiny_tokenizer, metric_samples


def tiny_tokenizer(tmp: Path) -> Tokenizer:
    """The tiny Llama's tokenizer, written to ``tmp`` (no weights)."""
    return Tokenizer(make_tiny_tokenizer(tmp))


def scripted_logprobs(token: int, k: int) -> TokenLogprobs:
    """vLLM's shape: the sampled token first (logprob -token/100, rank 1), then k - 1
    other tokens (token + i, rank i + 1)."""
    entries = [(token, -token / 100, 1)] + [(token + i, -token / 100 - i, i + 1) for i in range(1, k)]
    return TokenLogprobs(tuple(entries))


def scripted_prompt_logprobs(prompt: Sequence[int], k: int | None) -> tuple[TokenLogprobs, ...]:
    """Positions 1.. of the prompt, each as ``scripted_logprobs`` of its token (k + 1
    entries: the prompt's token and k others); () when not asked for."""
    return () if k is None else tuple(scripted_logprobs(t, k + 1) for t in prompt[1:])


class ScriptedDecode:
    """Streams ``output``, two tokens a step, then a stop token (EOS) if the budget leaves
    room, and records what it was sent (``calls``).

    ``resume``: start where the request's budget says it is (it asks for exactly
    ``len(output)`` tokens), so a migrated request, whose max_tokens is what is left,
    continues the same text; else stream from the start, cut to max_tokens.
    ``fail_after`` steps, then it fails with ``code`` (None = never); ``hang``: no token
    ever, the call ends at its deadline; ``stall_after`` steps, then no token more until
    the deadline (a wedged engine mid-stream). ``releases``: the Release calls it answered.
    ``closed_early``: the router closed the stream before it ended."""

    def __init__(
        self,
        output: list[int],
        name: str = "decode:1",
        *,
        cached_tokens: int = 32,
        resume: bool = False,
        fail_after: int | None = None,
        code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE,
        hang: bool = False,
        stall_after: int | None = None,
    ) -> None:
        self.worker = WorkerId(name)
        self.stall_after = stall_after
        self.output, self.cached_tokens, self.resume = output, cached_tokens, resume
        self.fail_after, self.code, self.hang = fail_after, code, hang
        self.calls: list[dict[str, Any]] = []
        self.releases: list[tuple[str, dict[str, Any]]] = []
        self.closed_early = False

    async def decode(
        self,
        request_id: RequestId,
        prompt: list[int],
        spec: SamplingSpec,
        kv_transfer_params: dict[str, Any] | None,
        timeout: float,
    ) -> AsyncGenerator[TokenDelta, None]:
        self.calls.append({"prompt": prompt, "spec": spec, "kv": kv_transfer_params, "id": request_id})
        if self.hang:
            await asyncio.sleep(timeout)
            raise WorkerError(self.worker, grpc.StatusCode.DEADLINE_EXCEEDED, "deadline")
        out = (
            self.output[max(0, len(self.output) - spec.max_tokens) :] if self.resume else self.output[: spec.max_tokens]
        )
        if len(out) < spec.max_tokens and spec.stop_token_ids:
            out = [*out, spec.stop_token_ids[-1]]  # the script ends as an engine does: on a stop token (EOS)
        try:
            for step, i in enumerate(range(0, len(out), 2)):
                if self.fail_after is not None and step >= self.fail_after:
                    raise WorkerError(self.worker, self.code, "injected")
                if self.stall_after is not None and step >= self.stall_after:
                    await asyncio.sleep(timeout)
                    raise WorkerError(self.worker, grpc.StatusCode.DEADLINE_EXCEEDED, "deadline")
                done = i + 2 >= len(out)
                reason = (FinishReason.LENGTH if len(out) == spec.max_tokens else FinishReason.STOP) if done else None
                # cached_tokens: the decode engine's own prefix-cache count (what a local prefill found)
                ids = tuple(out[i : i + 2])
                lps = tuple(scripted_logprobs(t, spec.logprobs) for t in ids) if spec.logprobs is not None else ()
                local = kv_transfer_params is None and i == 0  # a local prefill scores the prompt
                plps = scripted_prompt_logprobs(prompt, spec.prompt_logprobs) if local else ()
                yield TokenDelta(
                    ids,
                    min(i + 2, len(out)),
                    reason,
                    cached_tokens=self.cached_tokens,
                    logprobs=lps,
                    prompt_logprobs=plps,
                )
        except GeneratorExit:
            self.closed_early = True
            raise

    async def release(self, request_id: RequestId, kv_transfer_params: dict[str, Any], timeout: float) -> None:
        if self.fail_after is not None and self.code is grpc.StatusCode.UNAVAILABLE:
            raise WorkerError(self.worker, self.code, "injected")  # a worker that is gone answers nothing
        self.releases.append((request_id, kv_transfer_params))


class ScriptedPrefill:
    """Answers every prefill with ``cached_tokens`` and kv_transfer_params ``{"from": name,
    **kv}``, or fails with ``code``; ``calls`` counts them. ``delay_s``: each answer takes
    that long; ``cancelled`` counts the calls cancelled while they waited."""

    def __init__(
        self,
        name: str = "prefill:1",
        *,
        cached_tokens: int = 128,
        code: grpc.StatusCode | None = None,
        kv: dict[str, Any] | None = None,
        delay_s: float = 0.0,
    ) -> None:
        self.worker = WorkerId(name)
        self.cached_tokens, self.code, self.kv = cached_tokens, code, kv or {}
        self.delay_s = delay_s
        self.cancelled = 0
        self.calls = 0
        self.specs: list[SamplingSpec] = []
        self.ids: list[str] = []

    async def prefill(
        self, request_id: RequestId, prompt: list[int], spec: SamplingSpec, timeout: float
    ) -> PrefillResult:
        self.calls += 1
        self.specs.append(spec)
        self.ids.append(request_id)
        if self.delay_s:
            try:
                await asyncio.sleep(self.delay_s)
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        if self.code is not None:
            raise WorkerError(self.worker, self.code, "injected")
        plps = scripted_prompt_logprobs(prompt, spec.prompt_logprobs)
        return PrefillResult(prompt[0], self.cached_tokens, {"from": str(self.worker), **self.kv}, plps)


def make_pool(
    tokenizer: Tokenizer | TokenIdsOnly,
    prefill: Sequence[ScriptedPrefill] = (),
    decode: Sequence[ScriptedDecode] = (),
    *,
    name: str = "tiny",
    max_model_len: int = 256,
    block_size: int = 32,
    sampling_defaults: dict[str, float] | None = None,
    scheduling_policy: str = "fcfs",
    max_logprobs: int = 20,
    vllm_version: str = "",
    model_path: str = "",
) -> ModelPool:
    return ModelPool(
        name,
        tokenizer,
        max_model_len=max_model_len,
        block_size=block_size,
        vllm_version=vllm_version,
        prefill={p.worker: p for p in prefill},
        decode={d.worker: d for d in decode},
        sampling_defaults=sampling_defaults,
        scheduling_policy=scheduling_policy,
        max_logprobs=max_logprobs,
        model_path=model_path,
    )


@dataclass
class ScriptedRouter:
    client: TestClient
    service: RouterService
    pool: ModelPool
    metrics: RouterMetrics

    def counter(self, name: str, **labels: str) -> float:
        """A sample of the router's metrics; 0 if it was never written."""
        samples = metric_samples(generate_latest(self.metrics.registry).decode())
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def scripted_router(
    tokenizer: Tokenizer | TokenIdsOnly,
    prefill: Sequence[ScriptedPrefill],
    decode: Sequence[ScriptedDecode],
    *,
    policy: str = "round-robin",
    store: StateStore | None = None,
    recovery: Recovery | None = None,
    timeouts: Timeouts | None = None,
    limits: AdmissionLimits | None = None,
    api_keys: tuple[str, ...] = (),
    max_body_bytes: int = MAX_BODY_BYTES,
    sampling_defaults: dict[str, float] | None = None,
    scheduling_policy: str = "fcfs",
    max_logprobs: int = 20,
    chat: ChatOptions | None = None,
    max_model_len: int = 256,
    vllm_version: str = "",
    model_path: str = "",
    metrics: RouterMetrics | None = None,
    background: Callable[[], Background] = Background,
    cache_salts: dict[str, str] | None = None,
) -> ScriptedRouter:
    """The model "tiny" (256-token context, 32-token blocks) served by these workers."""
    pool = make_pool(
        tokenizer,
        prefill,
        decode,
        sampling_defaults=sampling_defaults,
        scheduling_policy=scheduling_policy,
        max_logprobs=max_logprobs,
        max_model_len=max_model_len,
        vllm_version=vllm_version,
        model_path=model_path,
    )
    metrics = metrics or RouterMetrics(policy)
    placer = Placer(make_policy(policy), ThresholdDecider(), store or MemoryStore())
    orchestrator = Orchestrator(placer, timeouts or Timeouts(), metrics, recovery or Recovery(backoff_s=0.0))
    admission = Admission(limits or AdmissionLimits(), MemoryStore())
    service = RouterService({"tiny": pool}, orchestrator, metrics, admission, background)
    app = create_app(
        lambda: service, api_keys=api_keys, max_body_bytes=max_body_bytes, chat=chat, cache_salts=cache_salts
    )
    return ScriptedRouter(TestClient(app), service, pool, metrics)
