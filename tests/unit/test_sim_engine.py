"""The sim engine does what its profile says: step times, prefix reuse, LRU eviction,
vLLM-shaped KV events, load, deterministic continuation, failure injection."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

import pytest

from pdserve.engine import make_decode_engine, make_prefill_engine
from pdserve.engine.base import FinishReason, InvalidRequestError, SamplingSpec, TokenDelta
from pdserve.engine.config import EngineConfig
from pdserve.engine.sim.blocks import BlockPool
from pdserve.engine.sim.engine import CRASH_EXIT_CODE, InjectedError, SimDecodeEngine, SimPrefillEngine
from pdserve.engine.sim.profile import load_profile
from pdserve.kv.events import BlockRemoved, BlockStored, decode_payload, encode_payload
from pdserve.kv.feed import IndexFeed
from pdserve.kv.hashing import block_hashes
from pdserve.state.memory import MemoryStore
from pdserve.types import RequestId, WorkerId

BS = 16
PROFILE = {
    "profile": "zero",
    "prefill_overhead_s": 0.01,
    "prefill_s_per_token": 0.001,
    "itl_base_s": 0.005,
    "itl_per_seq_s": 0.002,
    "kv_transfer_overhead_s": 0.003,
    "kv_transfer_s_per_token": 0.0001,
    "kv_capacity_tokens": 64 * BS,
    "max_num_batched_tokens": 4096,
}


class VirtualSleep:
    """Virtual time: records what the engine asked to sleep, returns at once."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []

    async def sleep(self, dt: float) -> None:
        self.sleeps.append(round(dt, 9))
        await asyncio.sleep(0)


def config(**overrides: Any) -> EngineConfig:
    return EngineConfig(
        model="",
        served_model_name="sim",
        engine="sim",
        block_size=BS,
        max_model_len=4096,
        engine_args={**PROFILE, **overrides},
    )


async def started(cls: type, clock: VirtualSleep, **overrides: Any) -> Any:
    engine = cls(config(**overrides), sleep=clock.sleep)
    await engine.start()
    return engine


async def collect(
    engine: SimDecodeEngine, rid: str, prompt: list[int], params: dict | None = None, **s: Any
) -> list[TokenDelta]:
    sampling = SamplingSpec(temperature=0, **s)
    return [d async for d in engine.decode(RequestId(rid), prompt, sampling, params)]


def prompt(n: int, start: int = 1000) -> list[int]:
    return list(range(start, start + n))


def test_registry_builds_sim_engines() -> None:
    assert isinstance(make_prefill_engine(config()), SimPrefillEngine)
    assert isinstance(make_decode_engine(config()), SimDecodeEngine)


def test_profiles_load_with_their_source_and_reject_unknown_fields() -> None:
    gpu = load_profile({})
    assert gpu.source.startswith("docs/BENCHMARKS.md") and gpu.itl_base_s == 0.005
    assert load_profile({"profile": "zero", "slow_factor": "3"}).slow_factor == 3.0
    with pytest.raises(ValueError, match="unknown field"):
        load_profile({"profile": "zero", "nope": 1})
    with pytest.raises(ValueError, match="no profile"):
        load_profile({"profile": "missing"})
    with pytest.raises(ValueError, match="error_rate"):
        load_profile({"profile": "zero", "error_rate": 2})


async def test_prefill_time_is_overhead_plus_uncached_tokens() -> None:
    clock = VirtualSleep()
    engine = await started(SimPrefillEngine, clock)
    result = await engine.prefill(RequestId("a"), prompt(100), SamplingSpec(max_tokens=1, temperature=0))
    assert result.cached_tokens == 0
    assert clock.sleeps == [pytest.approx(0.01 + 100 * 0.001)]
    clock.sleeps.clear()
    # the same 96-token prefix (6 full blocks) again: only 4 + 10 new tokens are computed
    again = await engine.prefill(RequestId("b"), prompt(96) + prompt(10, 5000), SamplingSpec(max_tokens=1))
    assert again.cached_tokens == 96
    assert clock.sleeps == [pytest.approx(0.01 + 10 * 0.001)]
    await engine.shutdown()


async def test_chunked_prefill_spreads_a_long_prompt_over_steps() -> None:
    clock = VirtualSleep()
    engine = await started(SimPrefillEngine, clock, max_num_batched_tokens=64)
    await engine.prefill(RequestId("a"), prompt(150), SamplingSpec(max_tokens=1))
    assert clock.sleeps == [pytest.approx(0.01 + 64 * 0.001)] * 2 + [pytest.approx(0.01 + 22 * 0.001)]
    await engine.shutdown()


async def test_inter_token_latency_grows_with_the_batch() -> None:
    clock = VirtualSleep()
    engine = await started(SimDecodeEngine, clock, prefill_overhead_s=0.0, prefill_s_per_token=0.0)
    outs = await asyncio.gather(*(collect(engine, f"r{i}", prompt(8, 100 * i), max_tokens=5) for i in range(4)))
    assert all(len(o) == 5 and o[-1].finish_reason is FinishReason.LENGTH for o in outs)
    decode_steps = [s for s in clock.sleeps if s > 0]
    # all four prefill together and sample token 1; tokens 2..5 are four steps of a batch of 4
    assert decode_steps == [pytest.approx(0.005 + 4 * 0.002)] * 4
    await engine.shutdown()


async def test_max_num_seqs_queues_the_rest_and_load_says_so() -> None:
    clock = VirtualSleep()
    engine = await started(SimDecodeEngine, clock, max_num_seqs=2)
    streams = [
        engine.decode(RequestId(f"r{i}"), prompt(20, 100 * i), SamplingSpec(max_tokens=50), None) for i in range(3)
    ]
    firsts = [asyncio.ensure_future(s.__anext__()) for s in streams]
    await asyncio.wait(firsts[:2])
    load = await engine.load()
    assert (load.num_running, load.num_waiting, load.num_inflight) == (2, 1, 3)
    assert load.kv_cache_usage == pytest.approx(2 * 5 / 64)  # 70 tokens → 5 blocks each
    firsts[2].cancel()  # the queued one is still waiting for its first token
    await asyncio.gather(*firsts, return_exceptions=True)
    for s in streams:  # the client leaves: every request is aborted, its blocks freed
        await s.aclose()
    load = await engine.load()
    assert (load.num_running, load.num_waiting, load.num_inflight, load.kv_cache_usage) == (0, 0, 0, 0.0)
    await engine.shutdown()


async def test_remote_kv_is_waited_for_not_computed_and_then_cached() -> None:
    clock = VirtualSleep()
    engine = await started(SimDecodeEngine, clock)
    out = await collect(engine, "a", prompt(64), {"remote": True}, max_tokens=2)
    assert len(out) == 2
    # transfer of 64 tokens, then two decode steps of a batch of one; no prefill step
    assert clock.sleeps == [pytest.approx(0.003 + 64 * 0.0001), pytest.approx(0.007), pytest.approx(0.007)]
    clock.sleeps.clear()
    # the transferred blocks are in this engine's cache: a second pull moves only the rest
    await collect(engine, "b", prompt(48) + prompt(16, 7000), {"remote": True}, max_tokens=1)
    assert clock.sleeps[0] == pytest.approx(0.003 + 16 * 0.0001)
    await engine.shutdown()


async def test_a_slow_peer_pulls_slowly_inside_its_window_only() -> None:
    clock = VirtualSleep()
    slow = {"kv_slow_peers": "p1", "kv_slow_s_per_token": "0.01", "kv_slow_from": "2", "kv_slow_until": "3"}
    engine = await started(SimDecodeEngine, clock, **slow)
    fast_s, slow_s = 0.003 + 16 * 0.0001, 0.003 + 16 * 0.01
    pulls = [("p1", fast_s), ("p1", slow_s), ("p2", fast_s), ("p1", fast_s)]  # pull 3 is from p2
    for i, (peer, seconds) in enumerate(pulls):
        clock.sleeps.clear()
        await collect(engine, f"r{i}", prompt(16, 2000 + 100 * i), {"remote_engine_id": peer}, max_tokens=1)
        assert clock.sleeps[0] == pytest.approx(seconds), i
    load = await engine.load()
    assert (load.kv.transfers, load.kv.bytes) == (4, 4 * 16 * 131072)
    assert load.kv.seconds == pytest.approx(3 * fast_s + slow_s)
    await engine.shutdown()


@pytest.mark.parametrize("serial", [False, True])
async def test_serial_pulls_move_one_at_a_time(serial: bool) -> None:
    pull_s = 0.003 + 64 * 0.0001

    class Overlap:
        def __init__(self) -> None:
            self.pulling = self.most = 0

        async def sleep(self, dt: float) -> None:
            pull = round(dt, 9) == pytest.approx(pull_s)
            self.pulling += pull
            self.most = max(self.most, self.pulling)
            await asyncio.sleep(0.01)
            self.pulling -= pull

    clock = Overlap()
    engine = await started(SimDecodeEngine, clock, kv_serial=serial)
    outs = await asyncio.gather(
        *(collect(engine, f"r{i}", prompt(64, 3000 + 100 * i), {"remote": True}, max_tokens=1) for i in range(3))
    )
    assert all(len(out) == 1 for out in outs)
    assert clock.most == (1 if serial else 3)
    await engine.shutdown()


async def test_prefill_names_its_engine_for_the_pull() -> None:
    engine = await started(SimPrefillEngine, VirtualSleep(), engine_id="prefill7")
    result = await engine.prefill(RequestId("a"), prompt(16), SamplingSpec(temperature=0, max_tokens=1))
    assert result.kv_transfer_params["remote_engine_id"] == "prefill7"
    await engine.shutdown()


async def test_tokens_continue_the_same_text_when_replayed_elsewhere() -> None:
    a = await started(SimDecodeEngine, VirtualSleep())
    b = await started(SimDecodeEngine, VirtualSleep())
    full = [t for d in await collect(a, "x", prompt(30), max_tokens=10) for t in d.token_ids]
    rest = [t for d in await collect(b, "y", prompt(30) + full[:4], max_tokens=6) for t in d.token_ids]
    assert rest == full[4:] and len(set(full)) > 1
    await a.shutdown()
    await b.shutdown()


async def test_stop_token_ends_the_stream() -> None:
    engine = await started(SimDecodeEngine, VirtualSleep())
    full = [t for d in await collect(engine, "x", prompt(30), max_tokens=10) for t in d.token_ids]
    out = await collect(engine, "y", prompt(30), max_tokens=10, stop_token_ids=(full[3],))
    assert [t for d in out for t in d.token_ids] == full[:4] and out[-1].finish_reason is FinishReason.STOP
    await engine.shutdown()


async def test_stream_interval_sends_the_first_token_then_every_n_and_the_last() -> None:
    every = await started(SimDecodeEngine, VirtualSleep())
    batched = await started(SimDecodeEngine, VirtualSleep(), stream_interval=3)
    one = await collect(every, "x", prompt(30), max_tokens=8, logprobs=1)
    out = await collect(batched, "y", prompt(30), max_tokens=8, logprobs=1)
    assert [len(d.token_ids) for d in one] == [1] * 8
    # as vLLM's output processor: 1 at once, then 3 and 3, then what is left at the finish
    assert [len(d.token_ids) for d in out] == [1, 3, 3, 1]
    assert [d.completion_tokens for d in out] == [1, 4, 7, 8]
    assert [t for d in out for t in d.token_ids] == [t for d in one for t in d.token_ids]
    assert [lp for d in out for lp in d.logprobs] == [lp for d in one for lp in d.logprobs]
    assert [d.finish_reason for d in out] == [None, None, None, FinishReason.LENGTH]
    # a stop token ends the stream mid-interval: the held tokens go out with it
    stop = one[4].token_ids[0]
    out = await collect(batched, "z", prompt(30), max_tokens=8, stop_token_ids=(stop,))
    assert [len(d.token_ids) for d in out] == [1, 3, 1] and out[-1].finish_reason is FinishReason.STOP
    await every.shutdown()
    await batched.shutdown()
    with pytest.raises(ValueError, match="stream_interval"):
        load_profile({**PROFILE, "stream_interval": 0})


async def test_bad_requests_are_refused_before_any_state_changes() -> None:
    engine = await started(SimDecodeEngine, VirtualSleep())
    with pytest.raises(InvalidRequestError, match="empty"):
        await collect(engine, "a", [])
    with pytest.raises(InvalidRequestError, match="capacity"):
        await collect(engine, "a", prompt(100), max_tokens=64 * BS)
    assert (await engine.load()).num_inflight == 0 and engine.pool.used == 0
    await engine.shutdown()


async def test_error_rate_one_fails_every_request() -> None:
    engine = await started(SimPrefillEngine, VirtualSleep(), error_rate=1.0)
    with pytest.raises(InjectedError):
        await engine.prefill(RequestId("a"), prompt(10), SamplingSpec(max_tokens=1))
    await engine.shutdown()


CRASH_SCRIPT = """
import asyncio, json, sys
from pdserve.engine.base import SamplingSpec
from pdserve.engine.config import EngineConfig
from pdserve.engine.sim.engine import SimPrefillEngine
from pdserve.types import RequestId

async def main() -> None:
    profile = json.loads(sys.argv[1])
    config = EngineConfig(model="", served_model_name="sim", engine="sim", block_size=16, engine_args=profile)
    engine = SimPrefillEngine(config)
    await engine.start()
    for rid in ("a", "b"):
        await engine.prefill(RequestId(rid), list(range(1000, 1010)), SamplingSpec(max_tokens=1))
        print(rid, "done", flush=True)

asyncio.run(main())
"""


def test_crash_after_n_requests_exits_the_process() -> None:
    # its own process: the crash is an os._exit
    profile = json.dumps({**PROFILE, "crash_after": 2})
    proc = subprocess.run([sys.executable, "-c", CRASH_SCRIPT, profile], capture_output=True, text=True, timeout=60)
    assert proc.returncode == CRASH_EXIT_CODE and "a done" in proc.stdout, proc.stderr[-2000:]
    assert "b done" not in proc.stdout


def test_pool_evicts_least_recently_freed_and_tail_first() -> None:
    pool = BlockPool(num_blocks=4, block_size=4)
    a = pool.allocate(prompt(9), 9)  # 3 blocks: 2 full + 1 partial
    assert a is not None
    pool.commit(a, prompt(9))
    stored = pool.drain_events()
    assert len(stored) == 1 and isinstance(stored[0], BlockStored)
    assert stored[0].token_ids == tuple(prompt(8)) and stored[0].parent is None and stored[0].block_size == 4
    pool.release(a)
    assert pool.used == 0 and len(pool.prefix_hits(prompt(9))) == 2
    b = pool.allocate(prompt(12, 50), 12)  # 3 fresh blocks: the never-hashed one, then evict
    assert b is not None
    removed = pool.drain_events()
    # A's tail block was freed first, so it is evicted first; its first block survives
    assert removed == [BlockRemoved(engine_hashes=(stored[0].engine_hashes[1],))]
    assert len(pool.prefix_hits(prompt(9))) == 1
    assert pool.allocate(prompt(20, 90), 20) is None  # 5 blocks never fit in 4
    assert pool.drain_events() == []


def test_events_feed_the_router_index_with_the_routers_own_hashes() -> None:
    """Through the wire format and IndexFeed, sim events index exactly the blocks the
    router hashes from the prompt (the sim's engine hashes are not the router's)."""
    pool = BlockPool(num_blocks=16, block_size=BS)
    tokens = prompt(5 * BS + 3)
    alloc = pool.allocate(tokens, len(tokens))
    assert alloc is not None
    pool.commit(alloc, tokens[: 2 * BS])  # two steps of chunked prefill
    pool.commit(alloc, tokens)
    events = pool.drain_events()
    assert [len(e.engine_hashes) for e in events if isinstance(e, BlockStored)] == [2, 3]
    batch = decode_payload(0, encode_payload(events))
    store = MemoryStore()

    async def run() -> set[int]:
        feed = IndexFeed(store, "m", WorkerId("w"), BS)
        await feed.apply(batch)
        expected = block_hashes("m", tokens, BS)
        found = await store.match("m", expected)
        assert found == {WorkerId("w"): 5}
        assert set(expected).isdisjoint(e for ev in events if isinstance(ev, BlockStored) for e in ev.engine_hashes)
        return set(expected)

    asyncio.run(run())


async def test_a_cache_salt_shares_cached_blocks_only_with_requests_of_the_same_salt() -> None:
    """As vLLM's ``cache_salt``: cached_tokens tells one tenant nothing of another's prompts."""
    engine = await started(SimPrefillEngine, VirtualSleep())

    async def cached(rid: str, salt: str) -> int:
        spec = SamplingSpec(max_tokens=1, temperature=0, cache_salt=salt)
        return (await engine.prefill(RequestId(rid), prompt(100), spec)).cached_tokens

    assert await cached("a", "tenant-a") == 0
    assert await cached("b", "tenant-b") == 0
    assert await cached("plain", "") == 0
    assert await cached("a2", "tenant-a") == 96
    assert await cached("plain2", "") == 96
    await engine.shutdown()


def test_salted_blocks_are_announced_as_keyed_so_the_router_index_leaves_them_out() -> None:
    pool = BlockPool(16, BS)
    for salt in ("", "tenant"):
        alloc = pool.allocate(prompt(64), 64, salt)
        assert alloc is not None
        pool.commit(alloc, prompt(64))
    plain, salted = [e for e in pool.drain_events() if isinstance(e, BlockStored)]
    assert plain.keyed == () and salted.keyed == (True,) * len(salted.engine_hashes)
    wire = decode_payload(1, encode_payload([plain, salted]))  # as the worker publishes them
    assert [e.keyed for e in wire.events if isinstance(e, BlockStored)] == [plain.keyed, salted.keyed]
