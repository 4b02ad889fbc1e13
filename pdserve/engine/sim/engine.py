"""The sim engine: vLLM's scheduling shape with a latency model instead of a model.

A test and benchmark tool (DESIGN.md §2), never an inference engine. One step loop
per engine, like vLLM's scheduler:

- admission is FIFO while fewer than ``max_num_seqs`` run and the block pool can
  reserve the prompt plus ``max_tokens`` (blocks.py: prefix reuse, LRU eviction);
- one step computes up to ``max_num_batched_tokens`` prompt tokens (chunked prefill)
  and one token for every request already decoding; it lasts
  ``prefill_step_s(prompt tokens) + decode_step_s(decoding requests)`` x ``slow_factor``;
- a request whose prompt completes in a step samples its first token in that step;
- tokens are a function of the last 8 tokens of the sequence (temperature 0, or a
  seed) so a request replayed elsewhere with its generated tokens continues the same
  text; otherwise they come from the engine's seeded generator;
- P/D: the prefill engine keeps a finished prompt's blocks for the modelled pull
  (``transfer_s(prompt)``, at most ``kv_lease_s``); the decode engine waits
  ``transfer_s`` of the prompt tokens it does not hold, then decodes without
  computing the prompt, and caches the transferred blocks (as vLLM's NIXL
  consumer does);
- KV events go out in vLLM's ZMQ format after every step that changed the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import os
import random
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pdserve.engine.base import (
    EngineError,
    EngineInfo,
    EngineLoad,
    EngineOverloadedError,
    FinishReason,
    InvalidRequestError,
    KvTransferTotals,
    PrefillResult,
    SamplingSpec,
    TokenDelta,
    TokenLogprobs,
)
from pdserve.engine.config import EngineConfig
from pdserve.engine.sim.blocks import Allocation, BlockPool
from pdserve.engine.sim.profile import SimProfile, load_profile
from pdserve.kv.path import KvPath, default_floor
from pdserve.kv.publisher import EventPublisher
from pdserve.types import RequestId

log = logging.getLogger(__name__)

CRASH_EXIT_CODE = 70
_CONTEXT = 8  # tokens the next token depends on
_LOW_TOKEN = 256  # keep clear of special tokens


class InjectedError(EngineError):
    """A failure the profile's ``error_rate`` asked for."""


def next_token(tokens: Sequence[int], vocab_size: int) -> int:
    """The deterministic token after ``tokens``: depends on the last 8 only."""
    data = b"".join(t.to_bytes(4, "little") for t in tokens[-_CONTEXT:])
    value = int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")
    return _LOW_TOKEN + value % (vocab_size - _LOW_TOKEN)


@dataclass(eq=False)
class _Seq:
    request_id: RequestId
    tokens: list[int]  # prompt, then generated tokens
    prompt_len: int
    sampling: SamplingSpec
    rng: random.Random | None  # None: deterministic tokens
    computed: int = 0  # tokens whose KV exists
    cached: int = 0  # prompt tokens from the prefix cache
    generated: int = 0
    alloc: Allocation | None = None
    first: asyncio.Future[int] | None = None  # prefill role: the first token
    deltas: asyncio.Queue[TokenDelta] = field(default_factory=asyncio.Queue)


class _SimRuntime:
    role = ""

    def __init__(self, config: EngineConfig, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.config = config
        self._sleep = sleep  # tests pass a virtual clock
        self.profile: SimProfile = load_profile(config.engine_args)
        num_blocks = max(1, self.profile.kv_capacity_tokens // config.block_size)
        self.pool = BlockPool(num_blocks, config.block_size)
        self._rng = random.Random(self.profile.seed)
        self._waiting: deque[_Seq] = deque()
        self._running: list[_Seq] = []
        self._live: dict[RequestId, _Seq] = {}
        self._reported: set[str] = set()  # no-op kinds already logged (_report_no_ops)
        self._transferring = 0
        self._pull_lock = asyncio.Lock()  # profile.kv_serial: one pull at a time
        self._kv = KvTransferTotals()  # modelled pulls (decode side), as vLLM's connector counts them
        self._received = 0
        self._pulls = 0  # KV pulls started (decode role): numbers the profile's slow window
        # the sim models GPUs (its profiles' numbers are H200's): CUDA's floor by default
        self._kv_path = KvPath("sim", config.kv_bandwidth_floor * 1e9 or default_floor("cuda"))
        self._prefix = (0, 0)
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._holds: dict[_Seq, asyncio.TimerHandle] = {}  # prefill KV kept for the decode's pull
        self._publisher: EventPublisher | None = None

    async def start(self) -> None:
        port = self.config.kv_events_port
        if port:
            self._publisher = EventPublisher(f"tcp://*:{port}", f"tcp://*:{port + 1}")
            self._publisher.start()
        self._loop_task = asyncio.create_task(self._run())
        log.info("sim engine (%s): %s; %d KV blocks", self.role, self.profile.source, self.pool.num_blocks)

    async def shutdown(self) -> None:
        for handle in self._holds.values():
            handle.cancel()
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        if self._publisher is not None:
            await self._publisher.close()

    def is_dead(self) -> bool:
        return self._loop_task is not None and self._loop_task.done()

    def info(self) -> EngineInfo:
        events, replay = self.config.kv_events_endpoints
        return EngineInfo(
            role=self.role,
            model=self.config.served_model_name,
            block_size=self.config.block_size,
            vllm_version=self.profile.vllm_version,
            kv_capacity_tokens=self.pool.num_blocks * self.config.block_size,
            max_model_len=self.config.max_model_len,
            scheduling_policy=self.profile.scheduling_policy,
            max_logprobs=self.profile.max_logprobs,
            system_fingerprint="pdserve-sim",
            engine="sim",
            kv_events=events,
            kv_replay=replay,
            model_path=self.config.model,
        )

    async def load(self) -> EngineLoad:
        return EngineLoad(
            num_running=len(self._running),
            num_waiting=len(self._waiting) + self._transferring,
            kv_cache_usage=self.pool.usage(),
            num_inflight=len(self._live),
            kv=self._kv,
            prefix_queries=self._prefix[0],
            prefix_hits=self._prefix[1],
            kv_path=self._kv_path.state(),
        )

    # -- requests --------------------------------------------------------------

    def _new_seq(self, request_id: RequestId, prompt: Sequence[int], sampling: SamplingSpec) -> _Seq:
        self._report_no_ops(sampling)
        if not prompt:
            raise InvalidRequestError("prompt is empty")
        if len(prompt) >= self.config.max_model_len:
            raise InvalidRequestError(f"prompt has {len(prompt)} tokens; the context is {self.config.max_model_len}")
        if self.pool.blocks_for(len(prompt) + sampling.max_tokens) > self.pool.num_blocks:
            raise InvalidRequestError("prompt and max_tokens exceed the engine's KV capacity")
        if request_id in self._live:
            raise InvalidRequestError(f"request id {request_id} is already running")
        self._inject_failures()
        deterministic = sampling.temperature == 0 or sampling.seed is not None
        rng = None if deterministic else random.Random(self._rng.getrandbits(64))
        seq = _Seq(request_id, list(prompt), len(prompt), sampling, rng)
        self._live[request_id] = seq
        return seq

    def _inject_failures(self) -> None:
        self._received += 1
        if self.profile.crash_after and self._received >= self.profile.crash_after:
            log.error("sim engine: crash_after=%d reached, exiting", self.profile.crash_after)
            os._exit(CRASH_EXIT_CODE)  # a crash, not a shutdown: nothing is cleaned up
        if self._rng.random() < self.profile.error_rate:
            if self.profile.error_code == "overloaded":
                raise EngineOverloadedError("injected overload (error_rate)")
            raise InjectedError("injected failure (error_rate)")

    def _enqueue(self, seq: _Seq) -> None:
        if self.profile.scheduling_policy == "priority":
            # as vLLM's priority queue: lower priority values first, then arrival
            later = next((i for i, w in enumerate(self._waiting) if w.sampling.priority > seq.sampling.priority), None)
            if later is not None:
                self._waiting.insert(later, seq)
                self._wake.set()
                return
        self._waiting.append(seq)
        self._wake.set()

    def _abort(self, seq: _Seq) -> None:
        if seq in self._waiting:
            self._waiting.remove(seq)
        if seq in self._running:
            self._running.remove(seq)
        self._finish(seq)

    def _finish(self, seq: _Seq) -> None:
        self._live.pop(seq.request_id, None)
        if seq.alloc is not None:
            self.pool.release(seq.alloc)
            seq.alloc = None
            self._wake.set()  # blocks came free: waiting requests may fit now

    # -- the step loop ---------------------------------------------------------

    async def _run(self) -> None:
        while True:
            self._admit()
            prefills, decoding = self._plan()
            if not prefills and not decoding:
                self._publish()
                self._wake.clear()
                await self._wake.wait()
                continue
            tokens = sum(chunk for _, chunk in prefills)
            step_s = self.profile.prefill_step_s(tokens) + self.profile.decode_step_s(len(decoding))
            await self._sleep(step_s * self.profile.slow_factor)
            self._apply(prefills, decoding)
            self._publish()

    def _admit(self) -> None:
        while self._waiting and len(self._running) < self.profile.max_num_seqs:
            seq = self._waiting[0]
            alloc = self.pool.allocate(
                seq.tokens[: seq.prompt_len], seq.prompt_len + seq.sampling.max_tokens, seq.sampling.cache_salt
            )
            if alloc is None:
                return  # FIFO: nothing overtakes the head of the queue
            self._waiting.popleft()
            seq.alloc = alloc
            seq.cached = alloc.cached_tokens
            seq.computed = max(seq.computed, alloc.cached_tokens)
            if seq.computed >= seq.prompt_len:  # KV transferred in: cache it like computed KV
                self.pool.commit(alloc, seq.tokens[: seq.prompt_len])
            queries, hits = self._prefix
            self._prefix = (queries + seq.prompt_len, hits + seq.cached)
            self._running.append(seq)

    def _plan(self) -> tuple[list[tuple[_Seq, int]], list[_Seq]]:
        budget = self.profile.max_num_batched_tokens
        prefills: list[tuple[_Seq, int]] = []
        decoding: list[_Seq] = []
        for seq in self._running:
            if seq.computed >= seq.prompt_len:
                decoding.append(seq)
            elif budget > 0:
                chunk = min(seq.prompt_len - seq.computed, budget)
                budget -= chunk
                prefills.append((seq, chunk))
        return prefills, decoding

    def _apply(self, prefills: list[tuple[_Seq, int]], decoding: list[_Seq]) -> None:
        for seq, chunk in prefills:
            if seq.alloc is None:
                continue  # aborted during the step
            seq.computed += chunk
            self.pool.commit(seq.alloc, seq.tokens[: seq.computed])
            if seq.computed >= seq.prompt_len:
                self._emit(seq)
        for seq in decoding:
            if seq.alloc is not None:
                self._emit(seq)

    def _sample(self, seq: _Seq) -> int:
        """The sim's "model" (a hash of the context, or a random token), then the request's
        constraints as vLLM applies them to logits: ``allowed_token_ids`` confines the
        choice and a single-token bad word is never chosen. Penalties, ``min_p`` and
        ``logit_bias`` shape a distribution the sim does not have: accepted, no effect."""
        spec = seq.sampling
        banned = {words[0] for words in spec.bad_words if len(words) == 1}
        choices = [t for t in spec.allowed_token_ids if t not in banned]
        for attempt in range(64):
            context = [*seq.tokens, attempt] if attempt else seq.tokens
            if seq.rng is None:
                token = next_token(context, self.profile.vocab_size)
            else:
                token = seq.rng.randrange(_LOW_TOKEN, self.profile.vocab_size)
            if choices:
                token = choices[token % len(choices)]
            if token not in banned:
                return token
        return token

    def _report_no_ops(self, spec: SamplingSpec) -> None:
        """Say once per kind which asked-for behaviour the sim accepts without honouring."""
        asked = {
            "structured outputs": bool(spec.structured_outputs),
            "penalties": (spec.presence_penalty, spec.frequency_penalty, spec.repetition_penalty) != (0, 0, 1),
            "min_p": spec.min_p > 0,
            "logit_bias": bool(spec.logit_bias),
            "multi-token bad words": any(len(w) > 1 for w in spec.bad_words),
        }
        for kind in sorted(k for k, on in asked.items() if on and k not in self._reported):
            self._reported.add(kind)
            log.warning("sim engine: %s accepted and ignored (the sim has no logits)", kind)

    def _logprobs(self, seq: _Seq, token: int) -> tuple[TokenLogprobs, ...]:
        """Made-up logprobs in vLLM's shape (the sampled token first, then the top ones):
        the sim has no distribution, so fleet tests and benchmarks carry the right shape."""
        k = seq.sampling.logprobs
        return () if k is None else (self._made_up(token, k),)

    def _prompt_logprobs(self, seq: _Seq) -> tuple[TokenLogprobs, ...]:
        """Made-up prompt logprobs, positions 1.. (as vLLM: position 0 has none)."""
        k = seq.sampling.prompt_logprobs
        return () if k is None else tuple(self._made_up(t, k) for t in seq.tokens[1 : seq.prompt_len])

    def _made_up(self, token: int, k: int) -> TokenLogprobs:
        vocab = self.profile.vocab_size
        top = [(token, -0.25, 1)] + [((token + i) % vocab, -0.25 - i, i + 1) for i in range(1, k)]
        return TokenLogprobs(tuple(top[: max(k, 1)]))

    def _emit(self, seq: _Seq) -> None:
        raise NotImplementedError

    def _publish(self) -> None:
        events = self.pool.drain_events()
        if events and self._publisher is not None:
            self._publisher.publish(events)


class SimPrefillEngine(_SimRuntime):
    role = "prefill"

    async def prefill(
        self, request_id: RequestId, prompt_token_ids: Sequence[int], sampling: SamplingSpec
    ) -> PrefillResult:
        seq = self._new_seq(request_id, prompt_token_ids, sampling)
        seq.first = asyncio.get_running_loop().create_future()
        self._enqueue(seq)
        try:
            token = await seq.first
        except asyncio.CancelledError:
            self._abort(seq)
            raise
        params = {
            "sim_remote_engine": self.config.served_model_name,
            "remote_engine_id": self.profile.engine_id or f"sim-{self.config.kv_events_port}",
            "remote_request_id": request_id,
        }
        return PrefillResult(token, seq.cached, params, self._prompt_logprobs(seq))

    def _emit(self, seq: _Seq) -> None:
        token = self._sample(seq)
        self._running.remove(seq)
        self._live.pop(seq.request_id, None)
        hold_s = min(self.profile.transfer_s(seq.prompt_len), self.profile.kv_lease_s) * self.profile.slow_factor
        self._holds[seq] = asyncio.get_running_loop().call_later(hold_s, self._release_held, seq)
        assert seq.first is not None
        if not seq.first.done():
            seq.first.set_result(token)

    def _release_held(self, seq: _Seq) -> None:
        self._holds.pop(seq, None)
        self._finish(seq)


class SimDecodeEngine(_SimRuntime):
    role = "decode"

    async def decode(
        self,
        request_id: RequestId,
        prompt_token_ids: Sequence[int],
        sampling: SamplingSpec,
        kv_transfer_params: dict[str, Any] | None,
    ) -> AsyncIterator[TokenDelta]:
        if kv_transfer_params is not None:  # the prefill engine computed the prompt's
            sampling = dataclasses.replace(sampling, prompt_logprobs=None)
        seq = self._new_seq(request_id, prompt_token_ids, sampling)
        finished = False
        try:
            if kv_transfer_params is not None:
                await self._pull(seq, str(kv_transfer_params.get("remote_engine_id", "")))
            self._enqueue(seq)
            # vLLM's stream_interval: the first token at once, then every N tokens, and the last
            interval, sent, pending = self.profile.stream_interval, 0, None
            while not finished:
                delta = await seq.deltas.get()
                finished = delta.finish_reason is not None
                pending = delta if pending is None else _joined(pending, delta)
                if finished or not sent or pending.completion_tokens - sent >= interval:
                    sent, out, pending = pending.completion_tokens, pending, None
                    yield out
        finally:
            if not finished:
                self._abort(seq)

    async def _pull(self, seq: _Seq, peer: str) -> None:
        """The modelled KV transfer of the prompt tokens this engine does not hold."""
        held = len(self.pool.prefix_hits(seq.tokens, seq.sampling.cache_salt)) * self.pool.block_size
        tokens = seq.prompt_len - held
        self._pulls += 1
        seconds = self.profile.pull_s(tokens, peer, self._pulls) * self.profile.slow_factor
        self._transferring += 1
        try:
            async with self._pull_lock if self.profile.kv_serial else contextlib.nullcontext():
                await self._sleep(seconds)
        finally:
            self._transferring -= 1
        kv, nbytes = self._kv, tokens * self.profile.kv_bytes_per_token
        self._kv = KvTransferTotals(kv.transfers + 1, kv.failures, kv.bytes + nbytes, kv.seconds + seconds)
        self._kv_path.record(nbytes, seconds)
        seq.computed = seq.prompt_len

    async def release(self, request_id: RequestId, kv_transfer_params: dict[str, Any]) -> None:
        """A no-op: a sim prefill engine frees its held blocks after the modelled pull
        time whether or not a decode comes (SimPrefillEngine._emit), and sim engines
        share no channel a notice could travel on."""

    def _emit(self, seq: _Seq) -> None:
        token = self._sample(seq)
        seq.tokens.append(token)
        seq.generated += 1
        assert seq.alloc is not None
        self.pool.commit(seq.alloc, seq.tokens[:-1])  # the newest token's KV comes next step
        reason: FinishReason | None = None
        if token in seq.sampling.stop_token_ids and seq.generated >= seq.sampling.min_tokens:
            reason = FinishReason.STOP
        elif seq.generated >= seq.sampling.max_tokens:
            reason = FinishReason.LENGTH
        if reason is not None:
            self._running.remove(seq)
            self._finish(seq)
        prompt_logprobs = self._prompt_logprobs(seq) if seq.generated == 1 else ()
        seq.deltas.put_nowait(
            TokenDelta((token,), seq.generated, reason, seq.cached, self._logprobs(seq, token), prompt_logprobs)
        )


def _joined(first: TokenDelta, then: TokenDelta) -> TokenDelta:
    """Two consecutive deltas of one stream as one, as vLLM's output processor sends the
    tokens held back by ``stream_interval``."""
    return dataclasses.replace(
        then,
        token_ids=first.token_ids + then.token_ids,
        logprobs=first.logprobs + then.logprobs,
        prompt_logprobs=first.prompt_logprobs + then.prompt_logprobs,
        worker_first_token_s=first.worker_first_token_s,
    )
