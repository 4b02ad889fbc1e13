"""A worker pair's KV path slows down, then recovers (sim workers, real gRPC, the router's
priced decider): the decode worker warns and says so in its Load, the router's /health
names it, decisions move to local prefill, and back once probes see the path fast again."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import httpx
from prometheus_client.parser import text_string_to_metric_families

from pdserve.tools.procs import Procs
from pdserve.v1 import worker_pb2 as pb
from pdserve.v1 import worker_pb2_grpc as pb_grpc
from tests.helpers.simfleet import SLOW, served_model, start_router, start_sim

PROMPT_TOKENS = 1000  # slow path: 0.34 s of transfer; local prefill: 28 ms
SLOW_PULLS = ("8", "11")  # the decode side's pulls 8..11 from p0 run at 0.4 GB/s


def decisions(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {
        s.labels["reason"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "pdserve_router_disagg_decisions_total"
    }


def load(addr: str) -> pb.WorkerLoad:
    with grpc.insecure_channel(addr) as channel:
        return pb_grpc.DecodeWorkerStub(channel).Load(pb.LoadRequest(), timeout=5)


def test_a_slowed_pair_warns_and_moves_decisions_local_then_back(tmp_path: Path, default_model: Path) -> None:
    rng = random.Random(0)
    slow = ["--engine-arg", "kv_slow_peers=p0", "--engine-arg", "kv_slow_s_per_token=3.28e-4"]
    slow += ["--engine-arg", f"kv_slow_from={SLOW_PULLS[0]}", "--engine-arg", f"kv_slow_until={SLOW_PULLS[1]}"]
    with Procs(tmp_path) as procs:
        prefill, _ = start_sim(procs, "prefill", "prefill", SLOW, ["--engine-arg", "engine_id=p0"])
        decode, _ = start_sim(procs, "decode", "decode", SLOW, slow)
        flags = ("--disagg-decider", "priced", "--disagg-probe-s", "0.2", "--disagg-stall-weight", "2")
        _, url = start_router(procs, default_model, prefill, decode, *flags)
        model = served_model(url)

        def request() -> None:
            prompt = [rng.randrange(1000, 20000) for _ in range(PROMPT_TOKENS)]  # no prefix shared
            body = {"model": model, "prompt": prompt, "max_tokens": 2, "ignore_eos": True}
            assert httpx.post(f"{url}/v1/completions", json=body, timeout=30).status_code == 200
            time.sleep(0.05)

        def until(done: Callable[[], object], limit: int = 80) -> None:
            for _ in range(limit):
                if done():
                    return
                request()
            raise AssertionError(f"not reached after {limit} requests: {decisions(url)}")

        # fast path: past the cold start, the priced decision sends prompts remote
        until(lambda: decisions(url).get("faster_remote", 0) >= 2)
        # the pair slows: the decode worker flags it, the router says so and prefills locally
        until(lambda: load(decode).kv_path_slow)
        time.sleep(1.0)  # the router's next Load poll
        health = httpx.get(f"{url}/health", timeout=5).json()
        assert health["status"] == "degraded" and decode in health["kv_path_slow"], health
        assert load(decode).kv_bandwidth_bps < load(decode).kv_bandwidth_floor_bps
        local_before = decisions(url).get("faster_local", 0)
        until(lambda: decisions(url).get("faster_local", 0) >= local_before + 3)
        assert "KV PATH SLOW: sim" in (tmp_path / "decode.log").read_text()
        # it recovers: probes see it, decisions go remote again, the flag clears
        remote_before = decisions(url).get("faster_remote", 0)
        until(lambda: decisions(url).get("faster_remote", 0) >= remote_before + 2)
        assert decisions(url).get("probe", 0) >= 1
        assert not load(decode).kv_path_slow
        assert "recovered" in (tmp_path / "decode.log").read_text()


def test_the_handover_splits_into_the_decode_workers_part_and_the_rpc_hops(tmp_path: Path, default_model: Path) -> None:
    """The router's handover (Prefill returned → first decode token) holds the decode
    worker's own part (its first chunk's first_token_s), which holds the KV pull."""
    rng = random.Random(1)
    slow = ["--engine-arg", "kv_slow_peers=*", "--engine-arg", "kv_slow_s_per_token=1e-4"]  # 0.1 s a pull
    with Procs(tmp_path) as procs:
        prefill, _ = start_sim(procs, "prefill", "prefill", SLOW)
        decode, _ = start_sim(procs, "decode", "decode", SLOW, slow)
        _, url = start_router(procs, default_model, prefill, decode, "--disagg-decider", "always-remote")
        model = served_model(url)
        for _ in range(3):
            prompt = [rng.randrange(1000, 20000) for _ in range(PROMPT_TOKENS)]
            body = {"model": model, "prompt": prompt, "max_tokens": 2, "ignore_eos": True}
            assert httpx.post(f"{url}/v1/completions", json=body, timeout=30).status_code == 200
        text = httpx.get(f"{url}/metrics", timeout=10).text
        seen = {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}
        assert seen["pdserve_router_kv_handover_seconds_count"] == 3
        assert seen["pdserve_router_kv_handover_worker_seconds_count"] == 3
        pulled = load(decode)
        assert pulled.kv_transfers == 3 and pulled.kv_transfer_seconds >= 0.3
        worker_s = seen["pdserve_router_kv_handover_worker_seconds_sum"]
        assert pulled.kv_transfer_seconds <= worker_s <= seen["pdserve_router_kv_handover_seconds_sum"]
