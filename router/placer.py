"""One request's placement: decode worker, disaggregation decision, prefill worker.

Order (DESIGN §1.2): hash the prompt's full blocks and look them up in the
block index (policies that use it), pick the decode worker, decide whether a
remote prefill is worth it, pick the prefill worker, then write short-TTL
predicted index entries so the next request with this prefix finds them
before the engines' KV events arrive.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from pdserve.kv.hashing import block_hashes
from pdserve.state import StateStore, StoreUnavailable
from pdserve.types import BlockHash, WorkerId
from router.errors import NoWorkersError
from router.placement import Policy
from router.placement.base import Request
from router.placement.decider import DisaggDecider, Outcome, Query
from router.pool import ModelPool


@dataclass(frozen=True)
class PrefixMatch:
    """A prompt's full-block hashes and, per worker, how many leading blocks the block
    index says it holds (both empty for policies that ignore the index). One request
    looks its prompt up once and reuses the answer for its retries."""

    hashes: list[BlockHash] = field(default_factory=list)
    matched: Mapping[WorkerId, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Placement:
    decode: WorkerId
    prefill: WorkerId | None
    reason: str  # the disaggregation decision's reason
    matched_tokens: int  # prompt tokens the index says the first worker holds
    match: PrefixMatch = field(default_factory=PrefixMatch, repr=False)  # the lookup it was made with
    # uncached prompt tokens queued on the prefilling worker (this router's) plus this one's there
    prefill_work: int = 0
    transfer_tokens: int = 0  # remote: prompt tokens the decode worker lacks (the KV to move)


class Placer:
    def __init__(self, policy: Policy, decider: DisaggDecider, store: StateStore, predict_ttl_s: float = 10.0) -> None:
        self.policy = policy
        self._decider = decider
        self._store = store
        self._predict_ttl_s = predict_ttl_s

    async def place(
        self,
        pool: ModelPool,
        prompt: Sequence[int],
        exclude: frozenset[WorkerId] = frozenset(),
        match: PrefixMatch | None = None,
    ) -> Placement:
        """``exclude``: workers that already failed this request; ``match``: this prompt's
        ``lookup``, if the request has one (else it is looked up here)."""
        decode_ids, prefill_ids = pool.live("decode", exclude), pool.live("prefill", exclude)
        if not decode_ids:
            raise NoWorkersError(f"no decode worker is available for {pool.name!r}")
        if match is None:
            match = await self.lookup(pool, prompt)
        matched = match.matched
        request = Request(len(prompt), len(match.hashes))
        decode_views = pool.snapshot(decode_ids, matched)
        # Without prefill workers every decode worker prefills its own prompts: choose
        # it the way a prefill worker is chosen (prefix overlap first).
        decode = (self.policy.decode if prefill_ids else self.policy.prefill).pick(decode_views, request)
        uncached = len(prompt) - matched.get(decode, 0) * pool.block_size
        prefill_views = pool.snapshot(prefill_ids, matched)
        decode_view = next(v for v in decode_views if v.worker_id == decode)
        query = Query(len(prompt), uncached, decode_view, prefill_views, pool.block_size, pool.streams(decode))
        decision = self._decider.decide(query)
        prefill = None
        if decision.remote:
            prefill = decision.prefill or self.policy.prefill.pick(prefill_views, request)
        first = prefill or decode
        if match.hashes:
            await self._predict(pool.name, [first, decode] if prefill else [decode], match.hashes)
        first_matched = matched.get(first, 0) * pool.block_size
        return Placement(
            decode,
            prefill,
            decision.reason,
            first_matched,
            match,
            prefill_work=pool.view(first).prefill_tokens + len(prompt) - first_matched,
            transfer_tokens=uncached if prefill else 0,
        )

    def observe(self, outcome: Outcome) -> None:
        """What a request placed here measured (router/orchestrator.py): the decider learns."""
        self._decider.observe(outcome)

    async def pick_prefill(
        self,
        pool: ModelPool,
        prompt: Sequence[int],
        exclude: frozenset[WorkerId],
        match: PrefixMatch | None = None,
    ) -> WorkerId | None:
        """Another prefill worker for a request whose prefill failed; None if none is left."""
        prefill_ids = pool.live("prefill", exclude)
        if not prefill_ids:
            return None
        if match is None:
            match = await self.lookup(pool, prompt)
        views = pool.snapshot(prefill_ids, match.matched)
        return self.policy.prefill.pick(views, Request(len(prompt), len(match.hashes)))

    async def lookup(self, pool: ModelPool, prompt: Sequence[int]) -> PrefixMatch:
        """Where the block index says the prompt's leading blocks are."""
        if not self.policy.uses_index:
            return PrefixMatch()
        hashes = block_hashes(pool.name, prompt, pool.block_size)
        try:
            return PrefixMatch(hashes, await self._store.match(pool.name, hashes))
        except StoreUnavailable:
            return PrefixMatch(hashes)  # placement degrades to load only

    async def _predict(self, model: str, workers: list[WorkerId], hashes: list[BlockHash]) -> None:
        try:
            for worker in workers:
                await self._store.predict(model, worker, hashes, self._predict_ttl_s)
        except StoreUnavailable:
            pass  # the FallbackStore kept them locally
