"""``pdserve bench compare``: side-by-side runs over simulated fleets, one command each.

- ``placement``: one shared-prefix workload over 8 simulated workers behind each
  router: pdserve (``round-robin``, ``least-loaded``, ``prefix-aware``),
  sglang-router (``cache_aware``), vllm-router (``cache_aware``, and ``kv_aware`` fed
  by the workers' KV events). A fresh fleet per contender (no cache carried over),
  the same prompts and arrival times for all.
- ``real`` (pdserve/tools/bench/real.py): pdserve versus vllm-router, both P/D on real
  vLLM CPU engines with NIXL: identical greedy outputs, TTFT and tok/s.
- ``overhead``: zero-latency sim workers; sequential requests measure the latency
  each router adds over calling a worker directly, then a closed loop measures
  the request rate each sustains.
- ``decider`` (pdserve/tools/bench/decider.py): the disaggregation deciders over a
  load sweep, on a fast and a slow simulated KV path.
- ``ceiling`` (pdserve/tools/bench/ceiling.py): the request rate each router sustains
  within 5 ms of added p99 latency, per router core, routers/workers/load on cores of
  their own.
- ``disagg``: pdserve only; P/D (2 prefill + 2 decode workers) versus colocated
  (4 workers that prefill themselves) on a long-prompt workload, swept over rates:
  goodput under a TTFT + TPOT SLO.

pdserve drives sim workers over gRPC (``pdserve decode --engine sim``); the peer
routers drive ``pdserve sim-http`` processes (the same sim engine and profile
behind an OpenAI HTTP server). The peers come from PyPI, installed once into
``$PDSERVE_CACHE/peers`` (``--peers-venv``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pdserve.tools.bench import ceiling, decider, pressure, real, replicas, workloads
from pdserve.tools.bench.client import Timing
from pdserve.tools.bench.contenders import (
    MODEL,
    Contender,
    Endpoint,
    SimFleetSpec,
    facades,
    pdserve,
    placement_contenders,
    sglang,
    vllm_router,
)
from pdserve.tools.bench.report import Slo, summarize
from pdserve.tools.bench.results import finish, output_and_slo, table
from pdserve.tools.bench.run import drive, int_range
from pdserve.tools.bench.workloads import Item
from pdserve.tools.procs import Procs


@dataclass(frozen=True)
class Load:
    items: Sequence[Item]
    rate: float = 0.0  # 0: closed loop at ``concurrency``
    concurrency: int = 1


def run_one(name: str, contender: Contender, fleet: SimFleetSpec, load: Load, out: Path) -> tuple[list[Timing], float]:
    with Procs(out / "logs" / name) as procs:
        url = contender(procs, fleet).url
        drive_ = drive(url, MODEL, load.items, load.rate, load.concurrency, seed=1, progress=sys.stderr.isatty())
        return asyncio.run(drive_)


def placement(args: argparse.Namespace) -> int:
    profile = {"profile": args.profile, "kv_capacity_tokens": str(args.kv_tokens), "slow_factor": str(args.slow)}
    fleet = SimFleetSpec(args.workers, profile, max_model_len=32768 if args.trace else 8192)
    if args.trace is not None:  # a Mooncake trace keeps its own arrival times
        items = workloads.trace(args.trace, args.trace_requests, args.scale, args.time_scale, args.output_tokens)
    else:
        items = workloads.shared_prefix(
            random.Random(args.seed),
            args.groups,
            args.per_group,
            args.prefix_tokens,
            args.question_tokens,
            args.output_tokens,
        )
    chosen = placement_contenders(args.only)
    runs, summaries = {}, {}
    for name, contender in chosen.items():
        timings, wall = run_one(name.replace(" ", "_"), contender, fleet, Load(items, rate=args.rate), args.out)
        runs[name], summaries[name] = timings, summarize(timings, wall, Slo(args.slo_ttft, args.slo_tpot))
        print(json.dumps({"run": name, **{k: summaries[name][k] for k in ("ttft_p50_s", "cached_ratio", "errors")}}))
    finish(args.out, "placement" if args.trace is None else f"placement-{args.trace.stem}", args, runs, summaries)
    return 0


def overhead(args: argparse.Namespace) -> int:
    fleet = SimFleetSpec(args.workers, {"profile": "zero"})
    rng = random.Random(args.seed)
    items = workloads.random_lengths(rng, args.requests, (48, 64), (args.output_tokens, args.output_tokens))
    direct: Contender = lambda procs, f: Endpoint(facades(procs, SimFleetSpec(1, f.engine_args))[0][0])  # noqa: E731
    contenders: dict[str, Contender] = {
        "direct (no router)": direct,
        "pdserve prefix-aware": pdserve("prefix-aware"),
        "sglang-router cache_aware": sglang("cache_aware"),
        "vllm-router cache_aware": vllm_router("cache_aware"),
    }
    runs, summaries = {}, {}
    for name, contender in contenders.items():
        closed = Load(items * 3, concurrency=args.concurrency)
        for mode, load in (("seq", Load(items, concurrency=1)), (f"c{args.concurrency}", closed)):
            key = f"{name} [{mode}]"
            timings, wall = run_one(key.replace(" ", "_"), contender, fleet, load, args.out)
            runs[key], summaries[key] = timings, summarize(timings, wall, Slo(1.0, 0.05))
    base = summaries["direct (no router) [seq]"]
    for s in summaries.values():
        s["added_e2e_p50_ms"] = (s["e2e_p50_s"] - base["e2e_p50_s"]) * 1000
        s["added_e2e_p99_ms"] = (s["e2e_p99_s"] - base["e2e_p99_s"]) * 1000
    finish(args.out, "overhead", args, runs, summaries)
    cols = (
        ("added e2e p50 ms", "added_e2e_p50_ms", 1.0),
        ("added e2e p99 ms", "added_e2e_p99_ms", 1.0),
        ("req/s", "req_s", 1.0),
        ("errors", "errors", 1.0),
    )
    print(table(summaries, cols))
    (args.out / "overhead-added.md").write_text(table(summaries, cols) + "\n")
    return 0


def disagg(args: argparse.Namespace) -> int:
    fleet = SimFleetSpec(args.workers, {"profile": args.profile, "slow_factor": str(args.slow)}, max_model_len=16384)
    contenders = {"P/D 2+2": pdserve("prefix-aware", prefill=args.workers // 2), "colocated": pdserve("prefix-aware")}
    runs, summaries = {}, {}
    for rate in [float(r) for r in args.rates.split(",")]:
        rng = random.Random(f"{args.seed}-{rate}")
        items = workloads.random_lengths(rng, args.requests, args.prompt_tokens, (args.output_tokens,) * 2)
        for name, contender in contenders.items():
            key = f"{name} @ {rate:g} req/s"
            log_name = key.replace(" ", "_").replace("/", "")
            timings, wall = run_one(log_name, contender, fleet, Load(items, rate=rate), args.out)
            runs[key], summaries[key] = timings, summarize(timings, wall, Slo(args.slo_ttft, args.slo_tpot))
    finish(args.out, "disagg", args, runs, summaries)
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("compare", help="side-by-side runs over simulated fleets (placement, pressure, replicas, ...)")
    kinds = p.add_subparsers(dest="kind", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", type=Path, default=Path("bench-out/compare"), help="results directory")
    common.add_argument("--seed", type=int, default=0)
    common.add_argument("--profile", default="llama-3.1-8b-h200", help="sim profile")
    common.add_argument("--slow", type=float, default=1.0, help="sim slow_factor: stretch modelled time")

    p1 = kinds.add_parser("placement", parents=[common], help="our policies vs sglang-router and vllm-router")
    p1.add_argument("--workers", type=int, default=8)
    p1.add_argument("--kv-tokens", type=int, default=16384, help="KV capacity of each simulated worker, tokens")
    p1.add_argument("--groups", type=int, default=32)
    p1.add_argument("--per-group", type=int, default=8)
    p1.add_argument("--prefix-tokens", type=int, default=1024)
    p1.add_argument("--question-tokens", type=int, default=24)
    p1.add_argument("--rate", type=float, default=20.0, help="Poisson arrivals, req/s")
    p1.add_argument("--only", default="", help="comma-separated substrings of run names to keep")
    p1.add_argument("--trace", type=Path, help="replay this Mooncake-format trace instead of shared prefixes")
    p1.add_argument("--trace-requests", type=int, default=300, help="trace: its first N requests")
    p1.add_argument("--scale", type=float, default=8.0, help="trace: divide lengths by this")
    p1.add_argument("--time-scale", type=float, default=1.0, help="trace: replay this many times faster")
    output_and_slo(p1, output_tokens=16, slo_ttft=0.5, slo_tpot=0.05)
    p1.set_defaults(run=placement)

    p2 = kinds.add_parser("overhead", parents=[common], help="latency added and req/s sustained, zero-latency fleet")
    p2.add_argument("--workers", type=int, default=2)
    p2.add_argument("--requests", type=int, default=200)
    p2.add_argument("--concurrency", type=int, default=32)
    output_and_slo(p2, output_tokens=8, slo_ttft=0.5, slo_tpot=0.05)
    p2.set_defaults(run=overhead)

    p3 = kinds.add_parser("disagg", parents=[common], help="P/D vs colocated goodput, same number of workers")
    p3.add_argument("--workers", type=int, default=4)
    p3.add_argument("--requests", type=int, default=100, help="requests per rate")
    p3.add_argument("--prompt-tokens", type=int_range, default=(3000, 6000))
    p3.add_argument("--rates", default="4,8,12,16")
    output_and_slo(p3, output_tokens=64, slo_ttft=1.0, slo_tpot=0.010)  # TPOT: 2x the profile's 5 ms step
    p3.set_defaults(run=disagg)

    real.add_parser(kinds, common)
    decider.add_parser(kinds, common)
    ceiling.add_parser(kinds, common)
    pressure.add_parser(kinds, common)
    replicas.add_parser(kinds, common)
