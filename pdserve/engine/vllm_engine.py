"""vLLM engines: ``AsyncLLM`` in-process with NixlConnector, one class per role.

Prefill runs as ``kv_producer``: it computes the prompt, samples one token and
keeps the KV blocks until the decode side pulls them (or NIXL's lease,
``EngineConfig.kv_lease_s``, runs out and frees them). Decode runs as
``kv_consumer``: given the prefill's kv_transfer_params it pulls those blocks,
then generates.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

import psutil

from pdserve.engine import vllm_compat as compat
from pdserve.engine.base import (
    EngineDeadError,
    EngineInfo,
    EngineLoad,
    FinishReason,
    InvalidRequestError,
    KvTransferTotals,
    PrefillResult,
    SamplingSpec,
    TokenDelta,
    TokenLogprobs,
)
from pdserve.engine.config import EngineConfig
from pdserve.kv.path import KvPath, default_floor
from pdserve.types import RequestId

log = logging.getLogger(__name__)

_FINISH = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "abort": FinishReason.ABORT,
    "error": FinishReason.ERROR,
    "repetition": FinishReason.STOP,
}


class _VllmRuntime:
    """Owns one AsyncLLM: start/stop, stats, and the error ladder of ``generate``."""

    role = ""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self._llm: compat.AsyncLLM | None = None
        self._stats: Any = None  # latest vLLM SchedulerStats
        self._kv = KvTransferTotals()
        self._prefix = (0, 0)  # cumulative (queries, hits) in tokens
        self._inflight = 0
        self._kv_path = KvPath("", 0.0)  # set once the engine exists (its connector's config)

    async def start(self) -> None:
        compat.export_env(self.config)
        allowed = os.sched_getaffinity(0)
        self._llm = compat.AsyncLLM.from_engine_args(
            compat.engine_args(self.config, self.role),
            stat_loggers=[compat.stat_logger_factory(self._record)],
        )
        restore_affinity(allowed)
        path, device = compat.kv_path(self._llm)
        self._kv_path = KvPath(path, self.config.kv_bandwidth_floor * 1e9 or default_floor(device))

    async def shutdown(self) -> None:
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None

    def _record(self, stats: Any) -> None:
        """Called by vLLM's output handler once per engine step."""
        self._stats = stats
        prefix = stats.prefix_cache_stats
        if prefix is not None:
            queries, hits = self._prefix
            self._prefix = (queries + int(getattr(prefix, "queries", 0)), hits + int(getattr(prefix, "hits", 0)))
        for size, duration in compat.kv_transfer_list(stats.kv_connector_stats):
            self._kv_path.record(size, duration)
        transfers, failures, nbytes, seconds = compat.kv_transfer_totals(stats.kv_connector_stats)
        if transfers or failures:
            kv = self._kv
            self._kv = KvTransferTotals(
                kv.transfers + transfers, kv.failures + failures, kv.bytes + nbytes, kv.seconds + seconds
            )

    @property
    def llm(self) -> compat.AsyncLLM:
        if self._llm is None:
            raise EngineDeadError("engine not started")
        return self._llm

    def is_dead(self) -> bool:
        return self._llm is not None and self._llm.errored

    def info(self) -> EngineInfo:
        return EngineInfo(
            role=self.role,
            model=self.config.served_model_name,
            block_size=self.config.block_size,
            vllm_version=compat.VLLM_VERSION,
            kv_capacity_tokens=compat.num_kv_blocks(self.llm) * self.config.block_size,
            max_model_len=self.config.max_model_len,
            engine="vllm",
            kv_events=self.config.kv_events_endpoints[0],
            kv_replay=self.config.kv_events_endpoints[1],
            model_path=self.config.model,
            scheduling_policy=compat.scheduling_policy(self.llm),
            max_logprobs=compat.max_logprobs(self.llm),
            system_fingerprint=compat.system_fingerprint(self.llm),
            reasoning_parser=self.config.reasoning_parser,
        )

    async def load(self) -> EngineLoad:
        stats = self._stats
        busy = await compat.engine_core_has_work(self.llm)
        return EngineLoad(
            num_running=stats.num_running_reqs if stats and busy else 0,
            num_waiting=stats.num_waiting_reqs if stats and busy else 0,
            kv_cache_usage=float(stats.kv_cache_usage) if stats else 0.0,
            num_inflight=self._inflight,
            kv=self._kv,
            prefix_queries=self._prefix[0],
            prefix_hits=self._prefix[1],
            kv_path=self._kv_path.state(),
        )

    def _check_prompt(self, prompt_token_ids: Sequence[int]) -> None:
        if not prompt_token_ids:
            raise InvalidRequestError("prompt is empty")
        if len(prompt_token_ids) >= self.config.max_model_len:
            raise InvalidRequestError(
                f"prompt has {len(prompt_token_ids)} tokens; the context is {self.config.max_model_len}"
            )

    async def _generate(
        self,
        request_id: RequestId,
        prompt_token_ids: Sequence[int],
        sampling: SamplingSpec,
        max_tokens: int,
        kv_transfer_params: dict[str, Any] | None,
    ) -> AsyncGenerator[Any, None]:
        """vLLM's stream with its errors mapped to ours. Closing it aborts the request
        (vLLM's ``generate`` aborts on GeneratorExit / CancelledError)."""
        self._check_prompt(prompt_token_ids)
        try:
            params = compat.sampling_params(sampling, max_tokens=max_tokens, kv_transfer_params=kv_transfer_params)
        except compat.CLIENT_ERRORS as exc:  # e.g. a constraint vLLM refuses
            raise InvalidRequestError(str(exc)) from exc
        prompt = compat.tokens_prompt(prompt_token_ids, sampling.cache_salt)
        stream = self.llm.generate(prompt, params, request_id, priority=sampling.priority, **compat.reasoning(sampling))
        self._inflight += 1
        try:
            async with contextlib.aclosing(stream):
                async for output in stream:
                    yield output
        except compat.VllmEngineDeadError as exc:
            raise EngineDeadError(str(exc)) from exc
        except compat.CLIENT_ERRORS as exc:
            raise InvalidRequestError(str(exc)) from exc
        finally:
            self._inflight -= 1


class VllmPrefillEngine(_VllmRuntime):
    role = "prefill"

    async def prefill(
        self, request_id: RequestId, prompt_token_ids: Sequence[int], sampling: SamplingSpec
    ) -> PrefillResult:
        last: Any = None
        token_ids: list[int] = []
        prompt_logprobs: tuple[TokenLogprobs, ...] = ()
        params = {"do_remote_decode": True}
        async for output in self._generate(request_id, prompt_token_ids, sampling, 1, params):
            last = output
            token_ids.extend(output.outputs[0].token_ids)
            prompt_logprobs = prompt_logprobs or compat.prompt_logprobs(output)
        if last is None or not token_ids or last.kv_transfer_params is None:
            raise InvalidRequestError("prefill produced no KV transfer handle")
        return PrefillResult(
            first_token_id=token_ids[0],
            cached_tokens=int(last.num_cached_tokens or 0),
            kv_transfer_params=dict(last.kv_transfer_params),
            prompt_logprobs=prompt_logprobs,
        )


class VllmDecodeEngine(_VllmRuntime):
    role = "decode"

    async def decode(
        self,
        request_id: RequestId,
        prompt_token_ids: Sequence[int],
        sampling: SamplingSpec,
        kv_transfer_params: dict[str, Any] | None,
    ) -> AsyncIterator[TokenDelta]:
        count = 0
        if kv_transfer_params is not None and sampling.prompt_logprobs is not None:
            # The prefill engine computed them; here they would cost a full recompute of
            # the prompt (vLLM reads no cached prefix for a request that asks for them).
            sampling = dataclasses.replace(sampling, prompt_logprobs=None)
        stream = self._generate(request_id, prompt_token_ids, sampling, sampling.max_tokens, kv_transfer_params)
        async with contextlib.aclosing(stream):
            async for output in stream:
                completion = output.outputs[0]
                count += len(completion.token_ids)
                reason = _FINISH.get(completion.finish_reason, FinishReason.ERROR) if output.finished else None
                yield TokenDelta(
                    token_ids=tuple(completion.token_ids),
                    completion_tokens=count,
                    finish_reason=reason,
                    cached_tokens=int(output.num_cached_tokens or 0),
                    logprobs=compat.token_logprobs(completion) if sampling.logprobs is not None else (),
                    prompt_logprobs=compat.prompt_logprobs(output) if sampling.prompt_logprobs is not None else (),
                )

    async def release(self, request_id: RequestId, kv_transfer_params: dict[str, Any]) -> None:
        # The notice is a request of its own in the engine core: an id of its own keeps
        # it clear of a live request (e.g. the decode it replaces) and of a repeat.
        notice = f"{request_id}-release-{uuid.uuid4().hex[:8]}"
        try:
            released = await compat.release_remote_kv(self.llm, notice, kv_transfer_params)
        except compat.VllmEngineDeadError as exc:
            raise EngineDeadError(str(exc)) from exc
        if not released:
            log.warning("%s: vLLM %s cannot release remote KV; the lease frees it", request_id, compat.VLLM_VERSION)


def restore_affinity(allowed: set[int]) -> None:
    """Give every thread of our engine processes back the CPUs we started with.

    On CPU hosts NIXL pins the engine-core thread that runs the model to the last
    core of each NUMA node (``os.sched_setaffinity`` in vLLM's nixl worker), so two
    engines on one box end up computing on the same core.
    """
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            for thread in child.threads():
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(thread.id, allowed)
