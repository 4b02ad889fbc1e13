"""One request's placement: decode worker, disaggregation decision, prefill worker.

Order (DESIGN §1.2): hash the prompt's full blocks and look them up in the
block index (policies that use it), pick the decode worker, decide whether a
remote prefill is worth it, pick the prefill worker, then write short-TTL
predicted index entries so the next request with this prefix finds them
before the engines' KV events arrive.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pdserve.kv.hashing import block_hashes
from pdserve.state import StateStore, StoreUnavailable
from pdserve.types import BlockHash, WorkerId
from router.placement import Policy
from router.placement.base import Request
from router.placement.decider import ThresholdDecider
from router.pool import ModelPool


class NoWorkersError(Exception):
    """No live decode worker serves the model."""


@dataclass(frozen=True)
class Placement:
    decode: WorkerId
    prefill: WorkerId | None
    reason: str  # the disaggregation decision's reason
    matched_tokens: int  # prompt tokens the index says the first worker holds


class Placer:
    def __init__(
        self, policy: Policy, decider: ThresholdDecider, store: StateStore, predict_ttl_s: float = 10.0
    ) -> None:
        self.policy = policy
        self._decider = decider
        self._store = store
        self._predict_ttl_s = predict_ttl_s

    async def place(
        self, pool: ModelPool, prompt: Sequence[int], exclude: frozenset[WorkerId] = frozenset()
    ) -> Placement:
        """``exclude``: workers that already failed this request."""
        decode_ids, prefill_ids = _candidates(pool, "decode", exclude), _candidates(pool, "prefill", exclude)
        if not decode_ids:
            raise NoWorkersError(f"no decode worker is available for {pool.name!r}")
        hashes, matched = await self._lookup(pool, prompt)
        request = Request(len(prompt), len(hashes))
        decode_views = [pool.view(w, matched.get(w, 0)) for w in decode_ids]
        # Without prefill workers every decode worker prefills its own prompts: choose
        # it the way a prefill worker is chosen (prefix overlap first).
        decode = (self.policy.decode if prefill_ids else self.policy.prefill).pick(decode_views, request)
        uncached = len(prompt) - matched.get(decode, 0) * pool.block_size
        prefill_views = [pool.view(w, matched.get(w, 0)) for w in prefill_ids]
        decision = self._decider.decide(uncached, prefill_views)
        prefill = self.policy.prefill.pick(prefill_views, request) if decision.remote else None
        first = prefill or decode
        if hashes:
            await self._predict(pool.name, [first, decode] if prefill else [decode], hashes)
        return Placement(decode, prefill, decision.reason, matched.get(first, 0) * pool.block_size)

    async def pick_prefill(
        self, pool: ModelPool, prompt: Sequence[int], exclude: frozenset[WorkerId]
    ) -> WorkerId | None:
        """Another prefill worker for a request whose prefill failed; None if none is left."""
        prefill_ids = _candidates(pool, "prefill", exclude)
        if not prefill_ids:
            return None
        hashes, matched = await self._lookup(pool, prompt)
        views = [pool.view(w, matched.get(w, 0)) for w in prefill_ids]
        return self.policy.prefill.pick(views, Request(len(prompt), len(hashes)))

    async def _lookup(self, pool: ModelPool, prompt: Sequence[int]) -> tuple[list[BlockHash], dict[WorkerId, int]]:
        """The prompt's block hashes and, per worker, how many leading blocks it holds
        (both empty for policies that ignore the index)."""
        if not self.policy.uses_index:
            return [], {}
        hashes = block_hashes(pool.name, prompt, pool.block_size)
        try:
            return hashes, await self._store.match(pool.name, hashes)
        except StoreUnavailable:
            return hashes, {}  # placement degrades to load only

    async def _predict(self, model: str, workers: list[WorkerId], hashes: list[BlockHash]) -> None:
        try:
            for worker in workers:
                await self._store.predict(model, worker, hashes, self._predict_ttl_s)
        except StoreUnavailable:
            pass  # the FallbackStore kept them locally


def _candidates(pool: ModelPool, role: str, exclude: frozenset[WorkerId]) -> list[WorkerId]:
    return [w for w in pool.live(role) if w not in exclude]
