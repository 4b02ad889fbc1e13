"""Placement: pickers, scorers, the imbalance guard, the disaggregation decider, the placer."""

from __future__ import annotations

import contextlib
import heapq
import random
from collections import Counter

import pytest

from pdserve.engine.base import EngineLoad
from pdserve.kv.hashing import block_hashes
from pdserve.state.memory import MemoryStore
from pdserve.types import WorkerId
from router.errors import NoWorkersError
from router.outliers import Failure
from router.placement import make_policy
from router.placement.base import Request, WorkerView
from router.placement.decider import Query, ThresholdDecider
from router.placement.pickers import Guard, LeastLoaded, RoundRobin, Weighted
from router.placement.scorers import SCORERS, parse_weights
from router.placer import Placer
from router.pool import ModelPool
from router.tokenizer import TokenIdsOnly
from tests.helpers.router import ScriptedDecode, ScriptedPrefill
from tests.helpers.router import make_pool as scripted_pool

W = [WorkerId("a:1"), WorkerId("b:1"), WorkerId("c:1")]
REQ = Request(prompt_tokens=64, prompt_blocks=4)


def views(**loads: int) -> list[WorkerView]:
    return [WorkerView(w, inflight=loads.get(w[0], 0)) for w in W]


def test_round_robin_cycles_through_candidates() -> None:
    rr = RoundRobin()
    assert [rr.pick(views(), REQ) for _ in range(6)] == W + W


def test_least_loaded_picks_the_idle_worker() -> None:
    assert LeastLoaded().pick(views(a=3, b=0, c=1), REQ) == W[1]


def test_least_loaded_breaks_ties_at_random() -> None:
    picker = LeastLoaded(random.Random(7))
    counts = Counter(picker.pick(views(), REQ) for _ in range(300))
    assert set(counts) == set(W) and min(counts.values()) > 60


def test_load_is_our_count_now_plus_other_routers_at_the_last_poll() -> None:
    assert WorkerView(W[0], inflight=2, running=1, waiting=4).load == 7  # 5 were another router's
    assert WorkerView(W[0], inflight=3, running=1, waiting=0, polled_inflight=1).load == 3
    # the poll saw our 2 requests; both have finished since: not counted again
    assert WorkerView(W[0], inflight=0, running=2, waiting=0, polled_inflight=2).load == 0


def test_every_scorer_stays_in_unit_interval() -> None:
    rng = random.Random(1)
    for _ in range(200):
        cands = [
            WorkerView(
                w,
                rng.randint(0, 9),
                rng.randint(0, 9),
                rng.randint(0, 9),
                rng.random(),
                rng.randint(0, 5000),
                rng.randint(0, 4),
            )
            for w in W
        ]
        for cls in SCORERS.values():
            scores = cls().score(cands, REQ)
            assert set(scores) == set(W) and all(0.0 <= s <= 1.0 for s in scores.values()), cls


def test_prefix_score_is_the_held_share_and_queue_score_relative() -> None:
    cands = [WorkerView(W[0], matched_blocks=4, inflight=4), WorkerView(W[1], matched_blocks=1), WorkerView(W[2])]
    assert SCORERS["prefix"]().score(cands, REQ) == {W[0]: 1.0, W[1]: 0.25, W[2]: 0.0}
    assert SCORERS["queue"]().score(cands, REQ) == {W[0]: 0.0, W[1]: 1.0, W[2]: 1.0}
    assert SCORERS["prefix"]().score(cands, Request(10, 0)) == {W[0]: 0.0, W[1]: 0.0, W[2]: 0.0}


def test_prefill_tokens_score_is_measured_against_the_requests_own_size() -> None:
    cands = [WorkerView(W[0], prefill_tokens=16), WorkerView(W[1], prefill_tokens=128), WorkerView(W[2])]
    assert SCORERS["prefill_tokens"]().score(cands, Request(256, 2)) == {W[0]: 0.9375, W[1]: 0.5, W[2]: 1.0}
    assert SCORERS["prefill_tokens"]().score(cands, Request(64, 1)) == {W[0]: 0.875, W[1]: 0.0, W[2]: 1.0}


def test_a_short_request_in_flight_does_not_outweigh_a_prefix_match() -> None:
    """The default prefill weights: the holder of a 1024-token prefix has one request in
    flight that had 40 uncached tokens; idle workers hold nothing. It must win."""
    picker = make_policy("prefix-aware", rng=random.Random(0)).prefill
    req = Request(prompt_tokens=1060, prompt_blocks=8)
    holder = WorkerView(W[0], inflight=1, matched_blocks=8, prefill_tokens=40)
    assert all(picker.pick([holder, WorkerView(W[1]), WorkerView(W[2])], req) == W[0] for _ in range(50))


def test_near_ties_go_to_the_worker_holding_the_prefix() -> None:
    """The holder is still prefilling a first request of this prefix: waiting for it or
    recomputing elsewhere cost about the same, so the cache decides."""
    picker = make_policy("prefix-aware", rng=random.Random(0)).prefill
    req = Request(prompt_tokens=1070, prompt_blocks=8)
    holder = WorkerView(W[0], inflight=1, matched_blocks=8, prefill_tokens=1070)
    assert all(picker.pick([holder, WorkerView(W[1]), WorkerView(W[2])], req) == W[0] for _ in range(50))
    idle = [WorkerView(w) for w in W]  # nobody holds it: shared at random
    assert {picker.pick(idle, req) for _ in range(100)} == set(W)


def test_weighted_prefers_the_prefix_holder_until_the_guard_stops_it() -> None:
    picker = Weighted({"prefix": 2, "queue": 1}, Guard(ratio=1.25, slack=1), rng=random.Random(0))
    holder = WorkerView(W[0], matched_blocks=4, inflight=1)
    assert picker.pick([holder, WorkerView(W[1]), WorkerView(W[2])], REQ) == W[0]
    busy = WorkerView(W[0], matched_blocks=4, inflight=9)  # 9 > 1.25 * mean(3) + 1
    assert picker.pick([busy, WorkerView(W[1]), WorkerView(W[2])], REQ) != W[0]


def test_parse_weights_rejects_unknown_names_and_negative_values() -> None:
    assert parse_weights("prefix=2, queue=1") == {"prefix": 2.0, "queue": 1.0}
    for bad in ("nope=1", "prefix", "prefix=x", "queue=-1", "queue=0"):
        with pytest.raises(ValueError, match="weights"):
            parse_weights(bad)


def test_unknown_policy_names_the_choices() -> None:
    with pytest.raises(ValueError, match="prefix-aware"):
        make_policy("nope")


def test_decider_local_for_short_uncached_prompts_and_saturated_prefill() -> None:
    d = ThresholdDecider(min_remote_tokens=100, saturated_waiting=2)
    idle, queued = WorkerView(W[0]), WorkerView(W[1], waiting=3)

    def q(uncached: int, prefill: list[WorkerView]) -> Query:
        return Query(uncached, uncached, WorkerView(W[2]), prefill, 16)

    assert d.decide(q(500, [idle, queued])).reason == "remote"
    assert d.decide(q(50, [idle])).reason == "short_prompt"
    assert d.decide(q(500, [queued])).reason == "prefill_saturated"
    assert d.decide(q(500, [])).reason == "no_prefill_workers"


def make_pool(n_prefill: int, n_decode: int = 1) -> ModelPool:
    """Placement reads only the workers' ids and load; the tokenizer is never asked."""
    return scripted_pool(
        TokenIdsOnly(vocab_size=1000),
        [ScriptedPrefill(f"p{i}:1") for i in range(n_prefill)],
        [ScriptedDecode([], f"d{i}:1") for i in range(n_decode)],
        name="m",
        max_model_len=4096,
        block_size=16,
    )


async def test_placer_follows_the_index_and_writes_predictions() -> None:
    store = MemoryStore()
    pool = make_pool(2)
    prompt = list(range(100))
    await store.add_blocks("m", WorkerId("p1:1"), block_hashes("m", prompt, 16)[:3])
    placer = Placer(make_policy("prefix-aware"), ThresholdDecider(), store)
    where = await placer.place(pool, prompt)
    assert where.prefill == "p1:1" and where.matched_tokens == 48 and where.reason == "remote"
    # predictions: the next request with this prompt is known to be on p1 (all 6 blocks) and its decode worker
    assert await store.match("m", block_hashes("m", prompt, 16)) == {WorkerId("p1:1"): 6, WorkerId("d0:1"): 6}


async def test_without_prefill_workers_the_decode_worker_is_chosen_by_prefix() -> None:
    """Colocated pools (decode workers prefill their own prompts) weigh the prefix
    like a prefill choice: the decode weights alone (prefix 0.5 vs queue 1 + kv 1)
    would trade a cached 6-block prefix for one fewer request in flight."""
    store = MemoryStore()
    pool = make_pool(0, n_decode=2)
    prompt = list(range(100))
    await store.add_blocks("m", WorkerId("d1:1"), block_hashes("m", prompt, 16))
    placer = Placer(make_policy("prefix-aware", rng=random.Random(0)), ThresholdDecider(), store)
    with pool.counted(WorkerId("d1:1")):  # busier, but within the imbalance guard
        where = await placer.place(pool, prompt)
    assert (where.decode, where.prefill, where.reason) == ("d1:1", None, "no_prefill_workers")
    assert where.matched_tokens == 96


async def test_placer_skips_down_workers_and_fails_without_decode() -> None:
    pool = make_pool(2)
    pool.failed(WorkerId("p0:1"), Failure.GONE)
    placer = Placer(make_policy("round-robin"), ThresholdDecider(), MemoryStore())
    assert {(await placer.place(pool, [1, 2, 3])).prefill for _ in range(4)} == {"p1:1"}
    pool.failed(WorkerId("d0:1"), Failure.GONE)  # every decode worker down: tried anyway
    assert (await placer.place(pool, [1, 2, 3])).decode == "d0:1"
    pool.remove(WorkerId("d0:1"))
    with pytest.raises(NoWorkersError):
        await placer.place(pool, [1, 2, 3])


async def test_hot_spot_one_shared_system_prompt_over_four_workers() -> None:
    """200 requests, one 512-token system prompt + a short question each, over 4
    prefill workers: Poisson arrivals, each request holds its worker for a random
    service time (discrete-event simulation, so the result does not depend on this
    machine's speed). Bounds: a worker is never given a request while it holds more
    than 1.25x the mean load + 2 (the guard), the busiest worker serves at most 1.5x
    the mean count, and the shared prefix still pays off (nearly every request lands
    where it is cached)."""
    rng = random.Random(42)
    store = MemoryStore()
    pool = make_pool(4)
    placer = Placer(make_policy("prefix-aware", rng=random.Random(1)), ThresholdDecider(), store, predict_ttl_s=1e9)
    system = [rng.randrange(1000) for _ in range(512)]
    served: Counter[WorkerId] = Counter()
    done: list[tuple[float, int, contextlib.ExitStack]] = []  # heap of (finish time, seq, its count on a worker)
    worst_excess = 0.0
    now = 0.0
    hits = 0
    for i in range(200):
        now += rng.expovariate(20.0)  # 20 req/s, each busy ~0.5 s: ~10 in flight
        while done and done[0][0] <= now:
            heapq.heappop(done)[2].close()
        prompt = system + [rng.randrange(1000) for _ in range(rng.randint(8, 40))]
        where = await placer.place(pool, prompt)
        assert where.prefill is not None
        loads = [pool.view(w).inflight for w in pool.prefill]
        guard = Guard()
        excess = pool.view(where.prefill).inflight - (guard.ratio * sum(loads) / 4 + guard.slack)
        worst_excess = max(worst_excess, excess)
        hits += where.matched_tokens >= 512
        served[where.prefill] += 1
        running = contextlib.ExitStack()
        running.enter_context(pool.counted(where.prefill))
        heapq.heappush(done, (now + rng.uniform(0.25, 0.75), i, running))
    assert max(served.values()) <= 1.5 * 200 / 4 and len(served) >= 3, served
    assert worst_excess <= 0, worst_excess
    assert hits >= 190, hits


async def test_round_robin_ignores_the_index() -> None:
    store = MemoryStore()
    pool = make_pool(2)
    placer = Placer(make_policy("round-robin"), ThresholdDecider(), store)
    prompt = list(range(64))
    first = await placer.place(pool, prompt)
    second = await placer.place(pool, prompt)
    assert first.prefill != second.prefill and second.matched_tokens == 0
    assert await store.match("m", block_hashes("m", prompt, 16)) == {}


def test_engine_load_feeds_the_view() -> None:
    pool = make_pool(1)
    worker = WorkerId("p0:1")
    with contextlib.ExitStack() as ours:
        for _ in range(4):
            ours.enter_context(pool.counted(worker))
        pool.record_load(worker, EngineLoad(num_running=2, num_waiting=5, kv_cache_usage=0.5))
        v = pool.view(worker, matched_blocks=3)
        assert (v.running, v.waiting, v.kv_usage, v.matched_blocks, v.load) == (2, 5, 0.5, 3, 7)
    # 4 of those 7 were ours (counted when the poll answered), and have finished since
    assert pool.view(worker).load == 3
