"""The engine contract (pdserve/engine/base.py), one suite run against every engine in the
registry: the sim engine and a real vLLM CPU prefill + decode pair with NIXL KV transfer
on a tiny random Llama. The vLLM pair starts once per module (about a minute per engine on
2 cores) in this process, as a worker runs it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import pytest_asyncio

from pdserve.engine import engine_names, make_decode_engine, make_prefill_engine
from pdserve.engine.base import (
    DecodeEngine,
    EngineLoad,
    FinishReason,
    InvalidRequestError,
    PrefillEngine,
    SamplingSpec,
    TokenDelta,
)
from pdserve.engine.config import EngineConfig
from pdserve.types import RequestId
from router.tokenizer import Tokenizer
from tests.factories import make_tiny_llama
from tests.helpers.cluster import engine_env
from tests.helpers.net import free_port
from tests.helpers.processes import cpu_percent, reaping_new_children
from tests.helpers.waiting import async_wait_until

MAX_MODEL_LEN = 2048
BLOCK = 128  # vLLM CPU wants a multiple of 32
GREEDY = SamplingSpec(max_tokens=8, temperature=0, ignore_eos=True)
# Idle vLLM CPU engines must leave the CPU to the rest of the suite: measured ~10 % of a
# core for the pair with NIXL's progress-thread delay (vllm_worker_ext), ~165 % without.
IDLE_PAIR_CPU_LIMIT = 50.0


@dataclass
class Pair:
    name: str
    prefill: PrefillEngine
    decode: DecodeEngine
    processes: list[psutil.Process]  # what the engines started (vLLM: engine cores); sim: none
    model_dir: Path = Path()  # vLLM: the tiny model (weights and tokenizer)


def prompt(n: int, start: int = 2, vocab: int = 250) -> list[int]:
    """``n`` token ids that fit the tiny model's byte-level vocabulary."""
    return [start + (i * 7) % (vocab - start) for i in range(n)]


def _sim_config(role: str) -> EngineConfig:
    profile = {"profile": "zero", "kv_capacity_tokens": 64 * BLOCK, "itl_base_s": 0.001}
    return EngineConfig(
        model="", served_model_name=f"sim-{role}", engine="sim", block_size=BLOCK, max_model_len=MAX_MODEL_LEN,
        engine_args=profile,
    )  # fmt: skip


def _vllm_config(model: Path) -> EngineConfig:
    return EngineConfig(
        model=str(model),
        served_model_name="tiny",
        block_size=BLOCK,
        max_model_len=MAX_MODEL_LEN,
        dtype="float32",  # what the workers run on CPU (pdserve.tools.up.child_env)
        kv_cache_bytes=1 << 28,
        kv_port=free_port(),
    )


@contextlib.contextmanager
def _engine_env() -> Iterator[None]:
    """The environment a worker gives its vLLM engine (pdserve up's child_env), for this
    process while the engines start: the engine-core processes read it at spawn."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in engine_env().items():
            mp.setenv(key, value)
        yield


# the real engines carry the `engine` mark, as every test that starts vLLM does
ENGINES = [pytest.param(name, marks=pytest.mark.engine) if name == "vllm" else name for name in engine_names()]


@pytest_asyncio.fixture(scope="module", params=ENGINES)
async def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Pair]:
    model = Path()
    if request.param == "sim":
        prefill_cfg, decode_cfg = _sim_config("prefill"), _sim_config("decode")
    else:
        model = make_tiny_llama(tmp_path_factory.mktemp("contract-model"))
        prefill_cfg, decode_cfg = _vllm_config(model), _vllm_config(model)
    with _engine_env(), reaping_new_children() as started:  # an engine core that outlives its engine spins
        p = Pair(request.param, make_prefill_engine(prefill_cfg), make_decode_engine(decode_cfg), [], model)
        try:
            await p.prefill.start()
            await p.decode.start()
            p.processes = started()
            yield p
        finally:
            await p.decode.shutdown()
            await p.prefill.shutdown()


async def collect(stream: AsyncIterator[TokenDelta]) -> list[TokenDelta]:
    return [d async for d in stream]


def tokens(deltas: list[TokenDelta]) -> list[int]:
    return [t for d in deltas for t in d.token_ids]


async def settled(engine: PrefillEngine | DecodeEngine) -> EngineLoad:
    """The engine's load once nothing runs (vLLM reports a step or two late)."""

    async def idle() -> EngineLoad | None:
        load = await engine.load()
        return load if load.num_inflight == load.num_running == load.num_waiting == 0 else None

    return await async_wait_until(idle, "engine idle", timeout_s=60)


async def test_info_describes_the_engine(pair: Pair) -> None:
    for engine, role in ((pair.prefill, "prefill"), (pair.decode, "decode")):
        info = engine.info()
        assert (info.role, info.block_size, info.max_model_len) == (role, BLOCK, MAX_MODEL_LEN)
        assert info.engine == pair.name
        assert info.kv_capacity_tokens >= BLOCK and info.kv_capacity_tokens % BLOCK == 0
        assert info.max_logprobs == 20  # vLLM's default
        # what vllm serve stamps on responses: vllm-<version>-<config hash>; the sim names itself
        assert info.system_fingerprint.startswith("vllm-" if pair.name == "vllm" else "pdserve-sim")
        assert not engine.is_dead()


async def test_prefill_samples_one_token_and_hands_over_its_kv(pair: Pair) -> None:
    ids = prompt(300)
    result = await pair.prefill.prefill(RequestId("c-prefill"), ids, GREEDY)
    assert result.first_token_id >= 0
    assert 0 <= result.cached_tokens <= len(ids)
    assert result.kv_transfer_params  # opaque, but something for the decode side to pull
    # the decode side pulls it (vLLM: over NIXL) and counts the pull where it happens
    before = (await pair.decode.load()).kv
    out = await collect(pair.decode.decode(RequestId("c-prefill"), ids, GREEDY, result.kv_transfer_params))
    assert len(tokens(out)) == GREEDY.max_tokens

    async def pulled() -> bool:
        kv = (await pair.decode.load()).kv
        return kv.transfers == before.transfers + 1 and kv.failures == before.failures

    await async_wait_until(pulled, "KV transfer counted", timeout_s=30)
    # and measured, per transfer, on the path the engine names (pdserve/kv/path.py)
    path = (await pair.decode.load()).kv_path
    assert path.path == "sim" if pair.name == "sim" else path.path.startswith("nixl/UCX/"), path.path
    assert sum(path.duration.counts) >= 1 and path.duration.total >= 0
    assert path.floor_bps > 0 and not path.slow


async def test_decode_streams_cumulative_deltas_and_finishes_once(pair: Pair) -> None:
    out = await collect(pair.decode.decode(RequestId("c-stream"), prompt(40), GREEDY, None))
    counts = [d.completion_tokens for d in out]
    assert counts == sorted(counts) and counts[-1] == len(tokens(out)) == GREEDY.max_tokens
    assert [d.finish_reason for d in out[:-1]] == [None] * (len(out) - 1)
    assert out[-1].finish_reason is FinishReason.LENGTH


async def test_both_engines_compute_the_same_greedy_tokens(pair: Pair) -> None:
    ids = prompt(260, start=5)
    handed = await pair.prefill.prefill(RequestId("c-same"), ids, GREEDY)
    local = tokens(await collect(pair.decode.decode(RequestId("c-same"), ids, GREEDY, None)))
    await pair.decode.release(RequestId("c-same"), handed.kv_transfer_params)
    assert local[0] == handed.first_token_id


async def test_pulled_kv_continues_as_the_prefill_computed_it(pair: Pair) -> None:
    ids = prompt(260, start=9)  # new to both engines: the decode side must pull it
    handed = await pair.prefill.prefill(RequestId("c-remote"), ids, GREEDY)
    remote = tokens(await collect(pair.decode.decode(RequestId("c-remote"), ids, GREEDY, handed.kv_transfer_params)))
    again = tokens(await collect(pair.decode.decode(RequestId("c-again"), ids, GREEDY, None)))
    assert remote[0] == handed.first_token_id and remote == again


async def test_stop_token_ends_the_stream_with_stop(pair: Pair) -> None:
    ids = prompt(50, start=11)
    full = tokens(await collect(pair.decode.decode(RequestId("c-full"), ids, GREEDY, None)))
    stop = SamplingSpec(max_tokens=8, temperature=0, ignore_eos=True, stop_token_ids=(full[2],))
    out = await collect(pair.decode.decode(RequestId("c-stop"), ids, stop, None))
    assert tokens(out) == full[: full.index(full[2]) + 1]
    assert out[-1].finish_reason is FinishReason.STOP


@pytest.mark.parametrize("bad", [[], prompt(MAX_MODEL_LEN)], ids=["empty", "longer-than-context"])
async def test_requests_that_can_never_succeed_are_invalid(pair: Pair, bad: list[int]) -> None:
    with pytest.raises(InvalidRequestError):
        await pair.prefill.prefill(RequestId("c-bad"), bad, GREEDY)
    with pytest.raises(InvalidRequestError):
        await collect(pair.decode.decode(RequestId("c-bad"), bad, GREEDY, None))
    assert (await settled(pair.decode)).num_inflight == 0


async def test_closing_the_stream_aborts_the_request(pair: Pair) -> None:
    long = SamplingSpec(max_tokens=1000, temperature=0, ignore_eos=True)
    stream = pair.decode.decode(RequestId("c-abort"), prompt(30), long, None)
    first = await anext(stream)
    assert first.finish_reason is None
    await stream.aclose()  # type: ignore[attr-defined]
    load = await settled(pair.decode)
    assert load.num_inflight == 0 and 0 <= load.kv_cache_usage <= 1


async def test_cancelling_a_prefill_leaves_nothing_running(pair: Pair) -> None:
    task = asyncio.create_task(pair.prefill.prefill(RequestId("c-cancel"), prompt(1500), GREEDY))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await settled(pair.prefill)).num_inflight == 0


async def test_release_frees_a_handed_over_kv_without_a_decode(pair: Pair) -> None:
    result = await pair.prefill.prefill(RequestId("c-release"), prompt(200, start=13), GREEDY)
    await pair.decode.release(RequestId("c-release"), result.kv_transfer_params)
    assert not pair.decode.is_dead() and not pair.prefill.is_dead()


async def test_load_stays_in_range(pair: Pair) -> None:
    for engine in (pair.prefill, pair.decode):
        load = await settled(engine)
        assert 0 <= load.kv_cache_usage <= 1
        assert 0 <= load.prefix_hits <= load.prefix_queries


async def test_idle_engines_leave_the_cpu_alone(pair: Pair) -> None:
    await settled(pair.prefill)
    await settled(pair.decode)
    # this process (the engines' clients; the sim engines' step loops) and what the engines started
    procs = [psutil.Process(), *(q for p in pair.processes for q in (p, *p.children(recursive=True)))]
    assert pair.name == "sim" or pair.processes, "vLLM runs its engine cores as processes"
    used = await asyncio.to_thread(cpu_percent, procs, 5)  # this thread sleeps meanwhile
    assert used < IDLE_PAIR_CPU_LIMIT, f"idle prefill + decode engines used {used:.0f} % of a core"


async def test_allowed_token_ids_confine_the_output(pair: Pair) -> None:
    allowed = (40, 41, 42)
    spec = SamplingSpec(max_tokens=8, temperature=1.0, seed=3, ignore_eos=True, allowed_token_ids=allowed)
    out = tokens(await collect(pair.decode.decode(RequestId("c-allowed"), prompt(30, start=13), spec, None)))
    assert len(out) == 8 and set(out) <= set(allowed)


async def test_a_bad_word_is_never_generated(pair: Pair) -> None:
    ids = prompt(30, start=17)
    free = tokens(await collect(pair.decode.decode(RequestId("c-free"), ids, GREEDY, None)))
    banned = SamplingSpec(max_tokens=GREEDY.max_tokens, temperature=0, ignore_eos=True, bad_words=((free[0],),))
    out = tokens(await collect(pair.decode.decode(RequestId("c-banned"), ids, banned, None)))
    assert free[0] not in out and len(out) == GREEDY.max_tokens


async def test_logit_bias_moves_greedy_choice(pair: Pair) -> None:
    if pair.name == "sim":
        pytest.skip("the sim has no logits to bias")
    spec = SamplingSpec(max_tokens=4, temperature=0, ignore_eos=True, logit_bias=((77, 100.0),))
    out = tokens(await collect(pair.decode.decode(RequestId("c-bias"), prompt(30, start=19), spec, None)))
    assert out == [77] * 4


async def test_a_cache_salt_keeps_a_prompt_out_of_other_requests_prefix_cache(pair: Pair) -> None:
    ids = prompt(4 * BLOCK, start=23)
    first = await pair.prefill.prefill(RequestId("c-salt-1"), ids, GREEDY)
    await pair.decode.release(RequestId("c-salt-1"), first.kv_transfer_params)
    same = await pair.prefill.prefill(RequestId("c-salt-2"), ids, GREEDY)
    await pair.decode.release(RequestId("c-salt-2"), same.kv_transfer_params)
    salted_spec = SamplingSpec(max_tokens=GREEDY.max_tokens, temperature=0, cache_salt="tenant-b")
    salted = await pair.prefill.prefill(RequestId("c-salt-3"), ids, salted_spec)
    await pair.decode.release(RequestId("c-salt-3"), salted.kv_transfer_params)
    assert same.cached_tokens >= 3 * BLOCK and salted.cached_tokens == 0


async def test_logprobs_come_per_token_with_the_sampled_token_first(pair: Pair) -> None:
    spec = SamplingSpec(max_tokens=4, temperature=0, ignore_eos=True, logprobs=3)
    out = await collect(pair.decode.decode(RequestId("c-logprobs"), prompt(30, start=29), spec, None))
    ids = tokens(out)
    lps = [lp for d in out for lp in d.logprobs]
    assert len(lps) == len(ids) == 4
    for token, lp in zip(ids, lps, strict=True):
        assert lp.entries[0][0] == token and lp.entries[0][2] == 1  # greedy: the sampled token is the top one
        assert len(lp.entries) == 3 and all(e[1] <= 0 for e in lp.entries)
        assert [e[2] for e in lp.entries] == [1, 2, 3]
    none = await collect(pair.decode.decode(RequestId("c-no-logprobs"), prompt(30, start=29), GREEDY, None))
    assert all(d.logprobs == () for d in none)


async def test_prompt_logprobs_come_from_the_engine_that_computes_the_prompt(pair: Pair) -> None:
    ids = prompt(40, start=37)
    spec = SamplingSpec(max_tokens=3, temperature=0, ignore_eos=True, prompt_logprobs=2)
    handed = await pair.prefill.prefill(RequestId("c-plp"), ids, spec)
    scored = handed.prompt_logprobs
    assert len(scored) == len(ids) - 1  # positions 1..: the first token has no context
    for token, lp in zip(ids[1:], scored, strict=True):
        assert lp.entries[0][0] == token  # the prompt's token first, then the top 2
        assert len(lp.entries) in (2, 3) and all(e[1] <= 0 and e[2] >= 1 for e in lp.entries)
    pulled = await collect(pair.decode.decode(RequestId("c-plp"), ids, spec, handed.kv_transfer_params))
    assert all(d.prompt_logprobs == () for d in pulled)  # the prefill engine scored it already
    local = await collect(pair.decode.decode(RequestId("c-plp-local"), ids, spec, None))
    assert all(d.prompt_logprobs == () for d in local[1:])
    again = local[0].prompt_logprobs  # a local prefill scores it on the first delta
    assert [[e[0] for e in lp.entries] for lp in again] == [[e[0] for e in lp.entries] for lp in scored]
    assert [e[1] for lp in again for e in lp.entries] == pytest.approx([e[1] for lp in scored for e in lp.entries])
    assert tokens(pulled) == tokens(local)  # scoring the prompt leaves the handed-over KV as it was


async def test_a_regex_constraint_shapes_the_output_on_both_roles(pair: Pair) -> None:
    if pair.name == "sim":
        pytest.skip("the sim has no grammar backend")
    constrained = SamplingSpec(max_tokens=6, temperature=0, ignore_eos=True, structured_outputs='{"regex": "(ab){3}"}')
    ids = prompt(30, start=31)
    handed = await pair.prefill.prefill(RequestId("c-regex"), ids, constrained)
    out = tokens(await collect(pair.decode.decode(RequestId("c-regex"), ids, constrained, handed.kv_transfer_params)))
    tok = Tokenizer(pair.model_dir)
    assert tok.decode(out) == "ababab"
    assert out[0] == handed.first_token_id  # the prefill engine sampled under the same grammar
    with pytest.raises(InvalidRequestError):
        bad = SamplingSpec(max_tokens=4, temperature=0, structured_outputs='{"regex": "(", "choice": ["a"]}')
        await collect(pair.decode.decode(RequestId("c-regex-bad"), ids, bad, None))


def _structural_tag(fmt: dict[str, Any]) -> str:
    """A SamplingSpec's constraint as the router sends a structural tag (router/api/structured.py)."""
    return json.dumps({"structural_tag": json.dumps({"type": "structural_tag", "format": fmt})})


async def test_a_structural_tag_shapes_the_output_on_both_roles(pair: Pair) -> None:
    if pair.name == "sim":
        pytest.skip("the sim has no grammar backend")
    fmt = {"type": "tag", "begin": "<x>", "content": {"type": "regex", "pattern": "(ab){2}"}, "end": "</x>"}
    constrained = SamplingSpec(max_tokens=11, temperature=0, ignore_eos=True, structured_outputs=_structural_tag(fmt))
    ids = prompt(30, start=37)
    handed = await pair.prefill.prefill(RequestId("c-tag"), ids, constrained)
    out = tokens(await collect(pair.decode.decode(RequestId("c-tag"), ids, constrained, handed.kv_transfer_params)))
    assert Tokenizer(pair.model_dir).decode(out) == "<x>abab</x>"  # one token per byte in the tiny vocabulary
    assert out[0] == handed.first_token_id  # the prefill engine sampled under the same tag
    # xgrammar's verdict, as `vllm serve` gives it on the request, on either role
    bad = SamplingSpec(max_tokens=4, temperature=0, structured_outputs=_structural_tag({"type": "bogus"}))
    with pytest.raises(InvalidRequestError, match="Invalid structural tag specification"):
        await pair.prefill.prefill(RequestId("c-tag-bad-p"), ids, bad)
    with pytest.raises(InvalidRequestError, match="Invalid structural tag specification"):
        await collect(pair.decode.decode(RequestId("c-tag-bad-d"), ids, bad, None))


async def test_only_the_sim_says_it_accepts_without_honouring(pair: Pair, caplog: pytest.LogCaptureFixture) -> None:
    """The sim logs what it cannot honour; the real engine honours it (the tests above) and says nothing."""
    spec = SamplingSpec(max_tokens=2, temperature=0, repetition_penalty=1.3, structured_outputs='{"regex": "a+"}')
    out = await collect(pair.decode.decode(RequestId("c-noop"), prompt(20), spec, None))
    assert len(tokens(out)) >= 1
    said = "structured outputs accepted and ignored" in caplog.text and "penalties accepted and ignored" in caplog.text
    assert said == (pair.name == "sim")


# Priority scheduling (``scheduling_policy=priority``, as vLLM's engine argument): one
# engine of each kind that runs one sequence at a time, so a queue forms and its order shows.


@pytest_asyncio.fixture(scope="module", params=ENGINES)
async def priority_decode(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[DecodeEngine]:
    policy = {"scheduling_policy": "priority", "max_num_seqs": 1}
    if request.param == "sim":
        sim = _sim_config("decode")
        cfg = dataclasses.replace(sim, engine_args={**sim.engine_args, **policy})
    else:
        model = make_tiny_llama(tmp_path_factory.mktemp("priority-model"))
        cfg = dataclasses.replace(_vllm_config(model), kv_connector="none", engine_args=policy)
    with _engine_env(), reaping_new_children():
        engine = make_decode_engine(cfg)
        try:
            await engine.start()
            yield engine
        finally:
            await engine.shutdown()


async def test_a_priority_engine_serves_the_lowest_priority_value_first(priority_decode: DecodeEngine) -> None:
    engine = priority_decode
    assert engine.info().scheduling_policy == "priority"
    started: list[str] = []

    async def run(name: str, priority: int, max_tokens: int) -> None:
        spec = SamplingSpec(max_tokens=max_tokens, temperature=0, ignore_eos=True, priority=priority)
        async for delta in engine.decode(RequestId(f"c-prio-{name}"), prompt(20, start=41), spec, None):
            if delta.token_ids and name not in started:
                started.append(name)

    async def blocking() -> bool:
        return started == ["blocker"]

    blocker = asyncio.create_task(run("blocker", 0, 1500))  # holds the one running slot
    await async_wait_until(blocking, "the blocker running", timeout_s=60)
    late = asyncio.create_task(run("late", 5, 2))  # queued first, with the larger value
    await async_wait_until(_waiting(engine, 1), "one request queued", timeout_s=30)
    urgent = asyncio.create_task(run("urgent", -5, 2))
    await async_wait_until(_waiting(engine, 2), "two requests queued", timeout_s=30)
    assert started == ["blocker"]  # both were queued while it ran
    await asyncio.gather(blocker, late, urgent)
    assert started == ["blocker", "urgent", "late"]


def _waiting(engine: DecodeEngine, n: int) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        return (await engine.load()).num_waiting >= n

    return probe
