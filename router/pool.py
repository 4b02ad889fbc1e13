"""The workers serving one model, discovered from their Info RPC at start-up."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field

import grpc

from pdserve.engine.base import EngineInfo
from pdserve.types import WorkerId
from router.clients import DecodeClient, PrefillClient, WorkerError
from router.tokenizer import TokenIdsOnly, Tokenizer

log = logging.getLogger(__name__)

INFO_WAIT_S = 15.0


@dataclass
class ModelPool:
    """One served model: its tokenizer, limits and workers. Mutated on the event loop only."""

    name: str
    tokenizer: Tokenizer | TokenIdsOnly
    max_model_len: int
    block_size: int
    prefill: dict[WorkerId, PrefillClient] = field(default_factory=dict)
    decode: dict[WorkerId, DecodeClient] = field(default_factory=dict)
    inflight: Counter[WorkerId] = field(default_factory=Counter)

    async def close(self) -> None:
        for client in [*self.prefill.values(), *self.decode.values()]:
            await client.close()


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


def check_agree(infos: list[EngineInfo]) -> EngineInfo:
    """Values that must agree across the P/D pair: model, block size, vLLM version."""
    first = infos[0]
    for info in infos[1:]:
        for attr in ("model", "block_size", "vllm_version"):
            if getattr(info, attr) != getattr(first, attr):
                raise ValueError(f"workers disagree on {attr}: {getattr(first, attr)!r} vs {getattr(info, attr)!r}")
    return first
