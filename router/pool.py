"""The workers serving one model, and what the router knows of their load.

Mutated on the event loop only (fleet refresh, load polls, request accounting).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc

from pdserve.engine.base import EngineInfo, EngineLoad
from pdserve.types import WorkerId
from router.clients import DecodeClient, PrefillClient, WorkerError
from router.placement.base import WorkerView
from router.tokenizer import TokenIdsOnly, Tokenizer

log = logging.getLogger(__name__)

INFO_WAIT_S = 15.0


@dataclass
class ModelPool:
    """One served model: its tokenizer, limits and workers."""

    name: str
    tokenizer: Tokenizer | TokenIdsOnly
    max_model_len: int
    block_size: int
    vllm_version: str = ""
    prefill: dict[WorkerId, PrefillClient] = field(default_factory=dict)
    decode: dict[WorkerId, DecodeClient] = field(default_factory=dict)
    inflight: Counter[WorkerId] = field(default_factory=Counter)
    prefill_tokens: Counter[WorkerId] = field(default_factory=Counter)  # uncached prompt tokens in flight
    loads: dict[WorkerId, EngineLoad] = field(default_factory=dict)  # last Load poll
    polled_inflight: Counter[WorkerId] = field(default_factory=Counter)  # ``inflight`` at that poll
    down: set[WorkerId] = field(default_factory=set)  # failed their last Load poll

    def prefill_client(self, worker: WorkerId) -> PrefillClient:
        return _client(self.prefill, worker)

    def decode_client(self, worker: WorkerId) -> DecodeClient:
        return _client(self.decode, worker)

    def live(self, role: str) -> list[WorkerId]:
        workers = self.prefill if role == "prefill" else self.decode
        # Every decode worker failing its poll: try them anyway rather than refuse outright.
        return [w for w in workers if w not in self.down] or (list(workers) if role == "decode" else [])

    def view(self, worker: WorkerId, matched_blocks: int = 0) -> WorkerView:
        load = self.loads.get(worker, EngineLoad())
        return WorkerView(
            worker_id=worker,
            inflight=self.inflight[worker],
            running=load.num_running,
            waiting=load.num_waiting,
            kv_usage=load.kv_cache_usage,
            prefill_tokens=self.prefill_tokens[worker],
            matched_blocks=matched_blocks,
            polled_inflight=self.polled_inflight[worker],
        )

    @contextmanager
    def counted(self, worker: WorkerId, prefill_tokens: int = 0) -> Iterator[None]:
        self.inflight[worker] += 1
        self.prefill_tokens[worker] += prefill_tokens
        try:
            yield
        finally:
            self.inflight[worker] -= 1
            self.prefill_tokens[worker] -= prefill_tokens

    def clients(self) -> list[PrefillClient | DecodeClient]:
        return [*self.prefill.values(), *self.decode.values()]


def _client(clients: dict[WorkerId, PrefillClient] | dict[WorkerId, DecodeClient], worker: WorkerId) -> Any:
    """A worker the fleet removed after placement chose it fails like one that went away."""
    try:
        return clients[worker]
    except KeyError:
        raise WorkerError(worker, grpc.StatusCode.UNAVAILABLE, "left the pool") from None


async def wait_for_info(client: PrefillClient | DecodeClient, deadline_s: float) -> EngineInfo:
    """Ask a worker for its Info, waiting while it starts (engines take ~1 min on CPU)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while True:
        try:
            return await client.info(timeout=min(INFO_WAIT_S, max(0.1, end - loop.time())), wait_for_ready=True)
        except WorkerError as exc:
            if loop.time() >= end or exc.code is not grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
            log.info("still waiting for worker %s", client.worker)


def check_joins(pool: ModelPool, info: EngineInfo, worker: WorkerId) -> None:
    """Values that must agree within a model's pool (the P/D pair shares KV layout)."""
    for attr in ("block_size", "vllm_version"):
        if getattr(info, attr) != getattr(pool, attr):
            raise ValueError(
                f"worker {worker}: {attr} {getattr(info, attr)!r}, pool {pool.name!r} has {getattr(pool, attr)!r}"
            )
