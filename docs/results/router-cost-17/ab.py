"""One side of the router-cost A/B (docs/BENCHMARKS.md §10), run from the tree under test
(``PYTHONPATH=<tree>``): 2 zero-profile sim workers, pdserve's router (prefix-aware) over gRPC,
and one sim-http worker called directly; ``bench compare overhead``'s requests (~56-word
prompts, 8 output tokens, streamed). ``seq``: one request at a time, e2e p50/p99 and the
latency added over the direct call; ``c16``: 16 in flight, the router's CPU per request
(its process's CPU seconds over the requests served). Prints one JSON line."""

from __future__ import annotations

import asyncio
import json
import random
import sys
from pathlib import Path

import psutil

from pdserve.tools.bench import workloads
from pdserve.tools.bench.run import drive
from pdserve.tools.fleet import start_router, start_sim_http, start_sim_worker
from pdserve.tools.model import model_from_env
from pdserve.tools.procs import Procs

SIM = ["--served-model-name", "sim", "--block-size", "128", "--max-model-len", "8192", "--engine-arg", "profile=zero"]


def q(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p * len(values)))] * 1000


def cpu_s(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def main(out: Path, requests: int) -> None:
    items = workloads.random_lengths(random.Random(0), requests, (48, 64), (8, 8))
    result: dict[str, float] = {}
    with Procs(out / "logs") as procs:
        workers = [start_sim_worker(procs, "decode", f"decode{i}", [*SIM, "--kv-connector", "none"]) for i in range(2)]
        router = start_router(procs, model_from_env(), [], [w.address for w in workers], ["--log-level", "WARNING"])
        direct, _ = start_sim_http(procs, "sim-http", SIM)
        procs.wait_http(f"{direct.address}/health")
        for name, url in (("direct", direct.address), ("router", router.address)):
            asyncio.run(drive(url, "sim", items[:50], 0, 1, progress=False))  # warm
            timings, _ = asyncio.run(drive(url, "sim", items, 0, 1, progress=False))
            e2e = [t.e2e_s for t in timings if not t.error]
            result[f"{name}_seq_p50_ms"], result[f"{name}_seq_p99_ms"] = q(e2e, 0.5), q(e2e, 0.99)
        result["added_p50_ms"] = result["router_seq_p50_ms"] - result["direct_seq_p50_ms"]
        result["added_p99_ms"] = result["router_seq_p99_ms"] - result["direct_seq_p99_ms"]
        before = cpu_s(router.proc.pid)
        timings, wall = asyncio.run(drive(router.address, "sim", items * 2, 0, 16, progress=False))
        result["router_cpu_ms_per_req_c16"] = (cpu_s(router.proc.pid) - before) / len(timings) * 1000
        result["router_c16_req_s"] = len(timings) / wall
        result["errors"] = sum(1 for t in timings if t.error)
    print(json.dumps({k: round(v, 3) for k, v in result.items()}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 300)
