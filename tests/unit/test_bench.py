"""Benchmark workloads and summaries: structure and arithmetic, no network."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest

from pdserve.tools.bench import workloads
from pdserve.tools.bench.client import Timing
from pdserve.tools.bench.report import Slo, summarize, tpot
from pdserve.tools.bench.run import arrivals


def test_shared_prefix_groups_share_exactly_their_system_prompt() -> None:
    items = workloads.shared_prefix(
        random.Random(3), groups=4, per_group=5, prefix_tokens=200, question_tokens=10, max_tokens=7
    )
    assert len(items) == 20 and {i.max_tokens for i in items} == {7}
    by_group: dict[str, list[str]] = {}
    for item in items:
        by_group.setdefault(item.group, []).append(item.prompt)
    assert sorted(len(v) for v in by_group.values()) == [5] * 4
    systems = {g: {p.split("\n")[0] for p in prompts} for g, prompts in by_group.items()}
    assert all(len(s) == 1 for s in systems.values())  # one system prompt per group
    assert len({next(iter(s)) for s in systems.values()}) == 4  # and a different one per group
    assert all(len(next(iter(s)).split()) >= 200 for s in systems.values())
    assert [i.group for i in items] != sorted(i.group for i in items)  # interleaved, not in blocks
    again = workloads.shared_prefix(random.Random(3), 4, 5, 200, 10, 7)
    assert again == items  # the same seed is the same workload for every contender


def test_multi_turn_each_turn_extends_the_previous_prompt() -> None:
    items = workloads.multi_turn(
        random.Random(1), conversations=3, turns=4, turn_tokens=20, answer_tokens=15, max_tokens=5
    )
    assert len(items) == 12
    for conv in {i.group for i in items}:
        prompts = [i.prompt for i in items if i.group == conv]
        assert len(prompts) == 4
        assert all(b.startswith(a) and len(b) > len(a) for a, b in itertools.pairwise(prompts))


def test_trace_maps_equal_hash_ids_to_equal_text_and_scales(tmp_path: Path) -> None:
    rows = [
        {"timestamp": 1000, "input_length": 1024, "output_length": 100, "hash_ids": [7, 8]},
        {"timestamp": 1500, "input_length": 1000, "output_length": 40, "hash_ids": [7, 9]},
        {"timestamp": 3000, "input_length": 512, "output_length": 10, "hash_ids": [5]},
    ]
    path = tmp_path / "trace.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    items = workloads.trace(path, limit=10, scale=16, time_scale=2.0, max_output=5)
    assert [i.at_s for i in items] == [0.0, 0.25, 1.0]  # relative, replayed twice as fast
    first, second, third = (i.prompt.split() for i in items)
    assert len(first) == 64 and len(second) == 62 and len(third) == 32  # input_length / 16
    assert first[:32] == second[:32] and first[32:] != second[32:62]  # shared block 7, then 8 vs 9
    assert first[:32] != third
    assert [i.max_tokens for i in items] == [5, 2, 1]  # output / 16, capped, at least 1


def test_conversations_keep_whole_busiest_conversations_in_trace_order(tmp_path: Path) -> None:
    rows = [  # conversation (0, 1): 3 turns, (0, 2): 2, (0, 3): 1; each turn extends the last
        {"timestamp": 0, "input_length": 512, "output_length": 16, "hash_ids": [0, 1]},
        {"timestamp": 100, "input_length": 512, "output_length": 16, "hash_ids": [0, 3]},
        {"timestamp": 200, "input_length": 1024, "output_length": 16, "hash_ids": [0, 2, 20]},
        {"timestamp": 300, "input_length": 1024, "output_length": 16, "hash_ids": [0, 1, 10]},
        {"timestamp": 400, "input_length": 1536, "output_length": 16, "hash_ids": [0, 1, 10, 11]},
        {"timestamp": 500, "input_length": 1536, "output_length": 16, "hash_ids": [0, 2, 20, 21]},
    ]
    path = tmp_path / "trace.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    items = workloads.conversations(path, limit=5, scale=16, max_output=4)
    assert len(items) == 5  # (0, 1) and (0, 2) whole; (0, 3) would pass the limit
    assert [i.at_s for i in items] == [0.0, 0.2, 0.3, 0.4, 0.5]
    by_len = [len(i.prompt.split()) for i in items]
    assert by_len == [32, 64, 64, 96, 96]
    turns = [items[0].prompt, items[2].prompt, items[3].prompt]  # conversation (0, 1)
    assert all(b.startswith(a) for a, b in itertools.pairwise(turns))


def test_at_rate_stretches_a_timed_workload_to_the_mean_rate() -> None:
    timed = [workloads.Item("x", 1, at_s=t) for t in (0.0, 1.0, 3.0, 10.0)]
    fast = workloads.at_rate(timed, rate=3.0)  # 3 gaps over 10 s → 3 gaps over 1 s
    assert [i.at_s for i in fast] == pytest.approx([0.0, 0.1, 0.3, 1.0])
    assert [i.prompt for i in fast] == ["x"] * 4


def test_trace_token_ids_keep_the_sharing_and_a_new_salt_gives_fresh_blocks(tmp_path: Path) -> None:
    rows = [
        {"timestamp": 0, "input_length": 1024, "output_length": 700, "hash_ids": [7, 8]},
        {"timestamp": 9, "input_length": 1000, "output_length": 40, "hash_ids": [7, 9]},
        {"timestamp": 9, "input_length": 4096, "output_length": 3, "hash_ids": [5, 6, 1, 2, 3, 4, 10, 11]},
    ]
    path = tmp_path / "trace.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    work = workloads.trace_token_ids(path, 10, scale=4, vocab=1000, salt="a", max_prompt=600, max_output=512)
    (first, out1), (second, out2), (third, out3) = work
    assert (len(first), len(second), len(third)) == (256, 250, 600)  # input / 4, the third cut to 600
    assert first[:128] == second[:128] and first[128:250] != second[128:]  # block 7 shared, then 8 vs 9
    assert all(100 <= t < 1000 for t in first + second + third)
    assert (out1, out2, out3) == (512, 40, 3)  # output_length, capped
    again = workloads.trace_token_ids(path, 2, scale=4, vocab=1000, salt="b", max_prompt=600, max_output=512)
    assert len(again) == 2 and again[0][0][:128] != first[:128] and again[0][0][:128] == again[1][0][:128]


def test_arrivals_are_poisson_at_the_rate_or_the_trace_times() -> None:
    items = workloads.random_lengths(random.Random(0), 2000, (5, 5), (1, 1))
    times = arrivals(items, rate=50.0, rng=random.Random(0))
    assert times[0] == 0.0 and times == sorted(times)
    assert 2000 / times[-1] == pytest.approx(50.0, rel=0.1)
    timed = [workloads.Item("x", 1, at_s=t) for t in (0.0, 0.5, 2.0)]
    assert arrivals(timed, rate=1.0, rng=random.Random(0)) == [0.0, 0.5, 2.0]


def timing(ttft: float, e2e: float, out: int, error: str = "", cached: int = 0) -> Timing:
    return Timing(prompt_tokens=100, ttft_s=ttft, e2e_s=e2e, completion_tokens=out, error=error, cached_tokens=cached)


def test_summary_counts_goodput_against_both_slos_and_errors() -> None:
    timings = [
        timing(0.1, 1.1, 11, cached=50),  # tpot 0.1: misses a 0.05 TPOT SLO
        timing(0.1, 0.6, 11, cached=50),  # tpot 0.05: meets both
        timing(2.0, 2.2, 11),  # TTFT too slow
        timing(0.1, 0.3, 5),  # tpot 0.05: meets both
        timing(0.0, 0.0, 0, error="HTTP 503"),
    ]
    assert tpot(timings[1]) == pytest.approx(0.05)
    s = summarize(timings, wall_s=2.0, slo=Slo(ttft_s=0.5, tpot_s=0.05))
    assert (s["requests"], s["errors"], s["error_kinds"]) == (5, 1, ["HTTP 503"])
    assert s["goodput_req_s"] == pytest.approx(1.0)  # 2 good requests in 2 s
    assert s["slo_attainment"] == pytest.approx(0.4)
    assert s["output_tok_s"] == pytest.approx(38 / 2.0)
    assert s["ttft_p50_s"] == pytest.approx(0.1) and s["ttft_p99_s"] > 1.9
    assert s["cached_ratio"] == pytest.approx(100 / 400)


def test_hot_share_is_the_busiest_workers_fraction() -> None:
    from pdserve.tools.bench.pressure import hot_share

    assert hot_share([10, 10, 10, 10], workers=4) == 0.25
    assert hot_share([30, 5, 5, 0], workers=4) == 0.75
    assert hot_share([], workers=8) == 0.125  # nothing placed: as even as can be


def test_store_calls_add_up_and_give_round_trips_and_a_p99() -> None:
    from pdserve.tools.bench.replicas import StoreCalls

    inf = float("inf")
    a = StoreCalls({"match": 10, "predict": 10, "entries": 3}, {0.001: 19, 0.01: 20, inf: 20})
    b = StoreCalls({"match": 90, "predict": 90}, {0.001: 180, 0.01: 180, inf: 180})
    both = a + b
    assert both.counts == {"match": 100, "predict": 100, "entries": 3}
    assert both.round_trips() == 200  # match and predict one round trip each; entries is background
    assert 0.0 < both.p99_s() <= 0.001  # 199 of 200 under 1 ms
    slow = StoreCalls({"match": 1}, {0.001: 0, 0.01: 1, inf: 1})
    assert 0.001 < slow.p99_s() <= 0.01
