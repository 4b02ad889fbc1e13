"""Pools per (vLLM version, block size) of a model, and what a pool derives from its live
members (router/generations.py, router/pool.py)."""

from __future__ import annotations

import dataclasses

from pdserve.engine.base import EngineInfo
from router.generations import Generations
from router.pool import ModelPool
from router.tokenizer import TokenIdsOnly
from tests.helpers.router import ScriptedDecode, ScriptedPrefill

OLD = EngineInfo("decode", "m", 16, "0.32.0", 4096, 2048, "sim")
NEW = dataclasses.replace(OLD, vllm_version="0.33.0")


def make(info: EngineInfo) -> ModelPool:
    return ModelPool(info.model, TokenIdsOnly(1000), info.max_model_len, info.block_size, info.vllm_version)


def join(gens: Generations, info: EngineInfo, name: str) -> ModelPool:
    pool = gens.pool_for(info, make)
    if info.role == "prefill":
        pool.add_prefill(ScriptedPrefill(name), info)
    else:
        pool.add_decode(ScriptedDecode([1], name), info)
    gens.settle(info.model)
    return pool


def leave(gens: Generations, pool: ModelPool, name: str) -> None:
    pool.remove(name)  # type: ignore[arg-type]
    gens.settle(pool.name)


def test_a_rolling_upgrade_moves_traffic_to_the_new_pool_and_drops_the_old() -> None:
    gens = Generations()
    old = join(gens, OLD, "d1")
    join(gens, OLD, "d2")
    join(gens, dataclasses.replace(OLD, role="prefill"), "p1")
    assert gens.active["m"] is old
    leave(gens, old, "d1")
    new = join(gens, NEW, "d1")  # d1 comes back on the new version: its own pool
    assert new is not old and [p.vllm_version for p in gens.pools("m")] == ["0.32.0", "0.33.0"]
    assert gens.active["m"] is new  # as many decode workers as the old: the newest wins
    leave(gens, old, "d2")
    join(gens, NEW, "d2")
    assert gens.active["m"] is new
    leave(gens, old, "p1")
    assert gens.pools("m") == [new]  # the old pool emptied: dropped
    assert join(gens, dataclasses.replace(NEW, block_size=32), "d3") is not new  # another block size, another pool


def test_a_model_whose_workers_all_left_is_gone() -> None:
    gens = Generations()
    pool = join(gens, OLD, "d1")
    leave(gens, pool, "d1")
    assert gens.active == {} and gens.pools("m") == []


def test_max_model_len_follows_the_live_members_up_and_down() -> None:
    gens = Generations()
    pool = join(gens, OLD, "d1")
    join(gens, dataclasses.replace(OLD, max_model_len=512, max_logprobs=5), "d2")
    assert (pool.max_model_len, pool.max_logprobs) == (512, 5)
    leave(gens, pool, "d2")
    assert (pool.max_model_len, pool.max_logprobs) == (2048, 20)  # up again


def test_the_workers_gauge_reads_zero_for_a_model_that_is_gone() -> None:
    from router.metrics import RouterMetrics
    from tests.factories import metric_samples

    metrics, gens = RouterMetrics("round-robin"), Generations()
    pool = join(gens, OLD, "d1")
    metrics.fleet_changed(gens.active)
    leave(gens, pool, "d1")
    metrics.fleet_changed(gens.active)
    samples = metric_samples(metrics.exposition().decode())
    assert samples[("pdserve_router_workers", (("model", "m"), ("role", "decode")))] == 0
