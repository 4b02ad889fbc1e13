"""Wire ⇄ domain conversions shared by the servicers and the router's clients."""

from __future__ import annotations

import json
from typing import Any

from pdserve.engine.base import (
    EngineInfo,
    EngineLoad,
    FinishReason,
    KvTransferTotals,
    PrefillResult,
    SamplingSpec,
    TokenDelta,
    TokenLogprobs,
)
from pdserve.kv.path import KvPathState
from pdserve.v1 import worker_pb2 as pb

_FINISH_TO_PB = {
    None: pb.FINISH_REASON_UNSPECIFIED,
    FinishReason.STOP: pb.FINISH_REASON_STOP,
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.ABORT: pb.FINISH_REASON_ABORT,
    FinishReason.ERROR: pb.FINISH_REASON_ERROR,
}
_FINISH_FROM_PB = {v: k for k, v in _FINISH_TO_PB.items()}


def sampling_to_pb(spec: SamplingSpec) -> pb.SamplingParams:
    msg = pb.SamplingParams(
        max_tokens=spec.max_tokens,
        temperature=spec.temperature,
        top_p=spec.top_p,
        top_k=spec.top_k,
        stop_token_ids=list(spec.stop_token_ids),
        ignore_eos=spec.ignore_eos,
        min_tokens=spec.min_tokens,
        presence_penalty=spec.presence_penalty,
        frequency_penalty=spec.frequency_penalty,
        repetition_penalty=spec.repetition_penalty,
        min_p=spec.min_p,
        logit_bias=dict(spec.logit_bias),
        allowed_token_ids=list(spec.allowed_token_ids),
        bad_words=[pb.TokenIds(ids=list(seq)) for seq in spec.bad_words],
        priority=spec.priority,
        cache_salt=spec.cache_salt,
        structured_outputs_json=spec.structured_outputs,
    )
    if spec.seed is not None:
        msg.seed = spec.seed
    if spec.logprobs is not None:
        msg.logprobs = spec.logprobs
    if spec.prompt_logprobs is not None:
        msg.prompt_logprobs = spec.prompt_logprobs
    if spec.reasoning_ended is not None:
        msg.reasoning_ended = spec.reasoning_ended
    return msg


def sampling_from_pb(msg: pb.SamplingParams) -> SamplingSpec:
    """Raises ValueError (→ INVALID_ARGUMENT) on out-of-range values."""
    return SamplingSpec(
        max_tokens=msg.max_tokens,
        temperature=msg.temperature,
        top_p=msg.top_p,
        top_k=msg.top_k,
        seed=msg.seed if msg.HasField("seed") else None,
        stop_token_ids=tuple(msg.stop_token_ids),
        ignore_eos=msg.ignore_eos,
        min_tokens=msg.min_tokens,
        presence_penalty=msg.presence_penalty,
        frequency_penalty=msg.frequency_penalty,
        repetition_penalty=msg.repetition_penalty if msg.HasField("repetition_penalty") else 1.0,
        min_p=msg.min_p,
        logit_bias=tuple(sorted(msg.logit_bias.items())),
        allowed_token_ids=tuple(msg.allowed_token_ids),
        bad_words=tuple(tuple(seq.ids) for seq in msg.bad_words),
        priority=msg.priority,
        cache_salt=msg.cache_salt,
        logprobs=msg.logprobs if msg.HasField("logprobs") else None,
        structured_outputs=msg.structured_outputs_json,
        prompt_logprobs=msg.prompt_logprobs if msg.HasField("prompt_logprobs") else None,
        reasoning_ended=msg.reasoning_ended if msg.HasField("reasoning_ended") else None,
    )


def kv_params_to_json(params: dict[str, Any] | None) -> str:
    return "" if params is None else json.dumps(params, separators=(",", ":"))


def kv_params_from_json(text: str) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"kv_transfer_params_json is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError("kv_transfer_params_json must be a JSON object")
    return value


def prefill_to_pb(result: PrefillResult) -> pb.PrefillResponse:
    return pb.PrefillResponse(
        first_token_id=result.first_token_id,
        cached_tokens=result.cached_tokens,
        kv_transfer_params_json=kv_params_to_json(result.kv_transfer_params),
        prompt_logprobs=[_logprobs_to_pb(lp) for lp in result.prompt_logprobs],
    )


def prefill_from_pb(msg: pb.PrefillResponse) -> PrefillResult:
    """Raises ValueError on a malformed KV handle or logprobs."""
    return PrefillResult(
        msg.first_token_id,
        msg.cached_tokens,
        kv_params_from_json(msg.kv_transfer_params_json) or {},
        tuple(_logprobs_from_pb(lp) for lp in msg.prompt_logprobs),
    )


def delta_to_pb(delta: TokenDelta) -> pb.DecodeChunk:
    return pb.DecodeChunk(
        token_ids=list(delta.token_ids),
        finish_reason=_FINISH_TO_PB[delta.finish_reason],
        completion_tokens=delta.completion_tokens,
        cached_tokens=delta.cached_tokens,
        logprobs=[_logprobs_to_pb(lp) for lp in delta.logprobs],
        prompt_logprobs=[_logprobs_to_pb(lp) for lp in delta.prompt_logprobs],
    )


def _logprobs_to_pb(lp: TokenLogprobs) -> pb.TokenLogprobs:
    ids, logprobs, ranks = zip(*lp.entries, strict=True) if lp.entries else ((), (), ())
    return pb.TokenLogprobs(ids=ids, logprobs=logprobs, ranks=ranks)


def _logprobs_from_pb(msg: pb.TokenLogprobs) -> TokenLogprobs:
    return TokenLogprobs(tuple(zip(msg.ids, msg.logprobs, msg.ranks, strict=True)))


def delta_from_pb(msg: pb.DecodeChunk) -> TokenDelta:
    return TokenDelta(
        token_ids=tuple(msg.token_ids),
        completion_tokens=msg.completion_tokens,
        finish_reason=_FINISH_FROM_PB[msg.finish_reason],
        cached_tokens=msg.cached_tokens,
        logprobs=tuple(_logprobs_from_pb(lp) for lp in msg.logprobs),
        prompt_logprobs=tuple(_logprobs_from_pb(lp) for lp in msg.prompt_logprobs),
        worker_first_token_s=msg.first_token_s,
    )


def info_to_pb(info: EngineInfo) -> pb.WorkerInfo:
    return pb.WorkerInfo(
        role=info.role,
        model=info.model,
        block_size=info.block_size,
        vllm_version=info.vllm_version,
        kv_capacity_tokens=info.kv_capacity_tokens,
        max_model_len=info.max_model_len,
        engine=info.engine,
        kv_events=info.kv_events,
        kv_replay=info.kv_replay,
        model_path=info.model_path,
        scheduling_policy=info.scheduling_policy,
        max_logprobs=info.max_logprobs,
        system_fingerprint=info.system_fingerprint,
        reasoning_parser=info.reasoning_parser,
    )


def info_from_pb(msg: pb.WorkerInfo) -> EngineInfo:
    return EngineInfo(
        role=msg.role,
        model=msg.model,
        block_size=msg.block_size,
        vllm_version=msg.vllm_version,
        kv_capacity_tokens=msg.kv_capacity_tokens,
        max_model_len=msg.max_model_len,
        engine=msg.engine,
        kv_events=msg.kv_events,
        kv_replay=msg.kv_replay,
        model_path=msg.model_path,
        scheduling_policy=msg.scheduling_policy or "fcfs",
        max_logprobs=msg.max_logprobs or 20,
        system_fingerprint=msg.system_fingerprint,
        reasoning_parser=msg.reasoning_parser,
    )


def load_to_pb(load: EngineLoad, inflight: int) -> pb.WorkerLoad:
    return pb.WorkerLoad(
        num_running=load.num_running,
        num_waiting=load.num_waiting,
        kv_cache_usage=load.kv_cache_usage,
        num_inflight=max(load.num_inflight, inflight),
        kv_transfers=load.kv.transfers,
        kv_transfer_failures=load.kv.failures,
        kv_bytes_transferred=load.kv.bytes,
        kv_transfer_seconds=load.kv.seconds,
        kv_path=load.kv_path.path,
        kv_bandwidth_bps=load.kv_path.bandwidth_bps,
        kv_path_slow=load.kv_path.slow,
        kv_bandwidth_floor_bps=load.kv_path.floor_bps,
    )


def load_from_pb(msg: pb.WorkerLoad) -> EngineLoad:
    return EngineLoad(
        num_running=msg.num_running,
        num_waiting=msg.num_waiting,
        kv_cache_usage=msg.kv_cache_usage,
        num_inflight=msg.num_inflight,
        kv=KvTransferTotals(
            msg.kv_transfers, msg.kv_transfer_failures, msg.kv_bytes_transferred, msg.kv_transfer_seconds
        ),
        kv_path=KvPathState(msg.kv_path, msg.kv_bandwidth_floor_bps, msg.kv_bandwidth_bps, msg.kv_path_slow),
    )
