"""Pools per model, one per (vLLM version, block size): how a rolling upgrade moves traffic.

Workers of another vLLM version or block size cannot exchange KV with the others (NIXL
refuses peers of another version; block layouts differ), so each such set of a model's
workers forms its own pool, and a request is placed within one. The model's *active*
pool — the one ``active[model]`` names, the mapping requests read — is the one with the
most decode workers, the newest on a tie: as new-version workers replace old ones, traffic
moves to the new pool once it has as many decode workers as the old; requests already
running keep the pool they started in. A pool whose workers all left is dropped.

Mutated on the event loop only, by the fleet.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pdserve.engine.base import EngineInfo
from router.pool import ModelPool

log = logging.getLogger(__name__)


def pool_key(pool: ModelPool) -> tuple[str, int]:
    return (pool.vllm_version, pool.block_size)


class Generations:
    def __init__(self) -> None:
        self.active: dict[str, ModelPool] = {}  # model → the pool its requests go to
        self._pools: dict[str, list[ModelPool]] = {}  # model → its pools, oldest first

    def pool_for(self, info: EngineInfo, make: Callable[[EngineInfo], ModelPool]) -> ModelPool:
        """The pool a worker with this Info joins (made if it is the first of its kind)."""
        pools = self._pools.setdefault(info.model, [])
        for pool in pools:
            if pool_key(pool) == (info.vllm_version, info.block_size):
                return pool
        pool = make(info)
        pools.append(pool)
        if len(pools) > 1:
            log.info("model %s: a new pool for vLLM %r, block size %d", info.model, *pool_key(pool))
        return pool

    def pools(self, model: str) -> list[ModelPool]:
        return list(self._pools.get(model, ()))

    def settle(self, model: str) -> None:
        """Drop the model's empty pools and pick its active one (after any join or leave)."""
        pools = [p for p in self._pools.get(model, ()) if p.prefill or p.decode]
        if not pools:
            self._pools.pop(model, None)
            self.active.pop(model, None)
            return
        self._pools[model] = pools
        best = max(range(len(pools)), key=lambda i: (len(pools[i].decode), i))
        before = self.active.get(model)
        self.active[model] = pools[best]
        if before is not None and before is not pools[best]:
            log.info("model %s: traffic moves to the pool of vLLM %r, block size %d", model, *pool_key(pools[best]))
