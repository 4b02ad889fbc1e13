"""``pdserve bench compare pressure``: placement under cache pressure, swept in load.

The same contenders as ``compare placement`` (pdserve round-robin, least-loaded,
prefix-aware; sglang-router cache_aware; vllm-router cache_aware and kv_aware) over
simulated fleets whose per-worker KV capacity is well below the workload's working
set, on two workloads: ``shared-prefix`` (G system prompts, Poisson arrivals) and
``conversations`` (the Mooncake conversation trace's busiest conversations, their
own arrival pattern stretched to each rate). Per workload and rate every contender
gets a fresh fleet and the same prompts and arrival times. Reports goodput under the
SLO, TTFT percentiles, the cached share and the hottest worker's share of requests
(pdserve: its router's placement counter; peers: each sim-http worker's count).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from pdserve.tools.bench import workloads
from pdserve.tools.bench.contenders import MODEL, Contender, Endpoint, SimFleetSpec, placement_contenders
from pdserve.tools.bench.report import Slo, save_figure, summarize, write_json
from pdserve.tools.bench.results import machine, output_and_slo
from pdserve.tools.bench.run import arrivals, drive
from pdserve.tools.bench.workloads import Item
from pdserve.tools.procs import Procs

WORKLOADS = ("shared-prefix", "conversations")
TRACE = Path(__file__).resolve().parents[3].parent / "shared" / "traces" / "mooncake_conversation_trace.jsonl"


def requests_per_worker(endpoint: Endpoint) -> list[float]:
    """Requests each worker was given: the peers' sim-http counters, else pdserve's
    placement counter (role ``decode``: colocated workers are decode workers)."""
    if endpoint.workers:
        return [_sample(f"{w}/metrics", "pdserve_sim_requests_total", {}) for w in endpoint.workers]
    text = httpx.get(f"{endpoint.url}/metrics", timeout=10).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "pdserve_router_placement_decisions_total" and s.labels.get("role") == "decode":
                out[s.labels["worker"]] = out.get(s.labels["worker"], 0.0) + s.value
    return list(out.values())


def _sample(url: str, name: str, labels: dict[str, str]) -> float:
    text = httpx.get(url, timeout=10).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and labels.items() <= s.labels.items():
                return float(s.value)
    return 0.0


def hot_share(counts: Sequence[float], workers: int) -> float:
    """The busiest worker's share of all requests (1/workers is perfectly even)."""
    total = sum(counts)
    return max(counts) / total if total else 1.0 / workers


def items_for(args: argparse.Namespace, workload: str, rate: float) -> list[Item]:
    """The prompts and arrival offsets every contender gets at this rate."""
    if workload == "shared-prefix":
        rng = random.Random(f"{args.seed}-{rate}")
        groups = max(1, args.requests // args.per_group)
        items = workloads.shared_prefix(
            rng, groups, args.per_group, args.prefix_tokens, args.question_tokens, args.output_tokens
        )
        offsets = arrivals(items, rate, random.Random(f"arrivals-{args.seed}-{rate}"))
        return [Item(i.prompt, i.max_tokens, at, i.group) for i, at in zip(items, offsets, strict=True)]
    trace = workloads.conversations(args.trace, args.requests, args.scale, args.output_tokens)
    return workloads.at_rate(trace, rate)


def _run(
    name: str, contender: Contender, fleet: SimFleetSpec, items: list[Item], args: argparse.Namespace, slo: Slo
) -> dict[str, Any]:
    """One contender over a fresh fleet: the run's summary, its hottest worker's share."""
    with Procs(args.out / "logs" / name.replace(" ", "_")) as procs:
        endpoint = contender(procs, fleet)
        timings, wall = asyncio.run(drive(endpoint.url, MODEL, items, 0.0, 1, seed=1, progress=False))
        counts = requests_per_worker(endpoint)
    return summarize(timings, wall, slo) | {"hot_share": hot_share(counts, fleet.workers), "per_worker": counts}


def _run_retrying(
    name: str, contender: Contender, fleet: SimFleetSpec, items: list[Item], args: argparse.Namespace, slo: Slo
) -> dict[str, Any]:
    """``_run``, started once more if the fleet failed to start (on a shared box a port
    that was free when picked can be taken before the process binds it)."""
    try:
        return _run(name, contender, fleet, items, args, slo)
    except RuntimeError as exc:
        print(f"{name}: start failed ({exc}); once more", file=sys.stderr)
        return _run(name, contender, fleet, items, args, slo)


def run(args: argparse.Namespace) -> int:
    slo = Slo(args.slo_ttft, args.slo_tpot)
    engine = {"profile": args.profile, "kv_capacity_tokens": str(args.kv_tokens), "slow_factor": str(args.slow)}
    fleet = SimFleetSpec(args.workers, engine, max_model_len=32768)
    contenders = placement_contenders(args.only)
    rates = {"shared-prefix": _rates(args.rates), "conversations": _rates(args.conversation_rates)}
    chosen = args.workloads.split(",")
    meta = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "command": sys.argv}
    rows: dict[str, dict[str, Any]] = {}
    for workload in chosen:
        for rate in rates[workload]:
            items = items_for(args, workload, rate)
            for name, contender in contenders.items():
                key = f"{workload} {name} @ {rate:g}"
                rows[key] = {"workload": workload, "router": name, "rate": rate}
                rows[key] |= _run_retrying(key, contender, fleet, items, args, slo)
                r = rows[key]
                print(key, {k: round(r[k], 3) for k in ("goodput_req_s", "ttft_p90_s", "cached_ratio", "hot_share")})
                write_json(args.out / "pressure.json", {**meta, "args": vars(args), "rows": rows})  # as it goes
    names = list(contenders)
    text = "\n\n".join(table(rows, w, names, rates[w]) for w in chosen)
    (args.out / "pressure.md").write_text(text + "\n")
    for workload in chosen:
        plot(args.out / f"pressure-{workload}.png", rows, workload, names, rates[workload], slo)
    print(f"\n{meta['machine']}, {meta['date']}\n\n{text}\n")
    return 0


def _rates(text: str) -> list[float]:
    return [float(r) for r in text.split(",")]


def table(rows: dict[str, dict[str, Any]], workload: str, names: list[str], rates: list[float]) -> str:
    head = f"**{workload}**\n\n| rate | router | goodput req/s | TTFT p50 ms | TTFT p90 ms | TTFT p99 ms "
    head += "| TPOT p50 ms | cached % | hottest worker % | errors |"
    lines = [head, "|---:|---|" + "---:|" * 8]
    for rate in rates:
        for name in names:
            r = rows[f"{workload} {name} @ {rate:g}"]
            lines.append(
                f"| {rate:g} | {name} | {r['goodput_req_s']:.2f} | {1000 * r['ttft_p50_s']:.0f} | "
                f"{1000 * r['ttft_p90_s']:.0f} | {1000 * r['ttft_p99_s']:.0f} | {1000 * r['tpot_p50_s']:.0f} | "
                f"{100 * r['cached_ratio']:.1f} | {100 * r['hot_share']:.1f} | {r['errors']} |"
            )
    return "\n".join(lines)


def plot(
    path: Path, rows: dict[str, dict[str, Any]], workload: str, names: list[str], rates: list[float], slo: Slo
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (
        ("goodput_req_s", 1.0, f"goodput req/s (TTFT ≤ {slo.ttft_s:g} s, TPOT ≤ {1000 * slo.tpot_s:g} ms)"),
        ("ttft_p90_s", 1000.0, "TTFT p90 ms"),
        ("cached_ratio", 100.0, "cached % of prompt tokens"),
        ("hot_share", 100.0, "hottest worker's % of requests"),
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    for ax, (key, scale, title) in zip(axes, panels, strict=True):
        for name in names:
            ax.plot(rates, [scale * rows[f"{workload} {name} @ {r:g}"][key] for r in rates], "o-", label=name)
        ax.set(title=title, xlabel="offered req/s")
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=8)
    save_figure(fig, path, f"pdserve bench compare pressure: {workload}")


def add_parser(kinds: Any, common: argparse.ArgumentParser) -> None:
    p = kinds.add_parser("pressure", parents=[common], help="placement with capped KV caches, swept to saturation")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma-separated, of {WORKLOADS}")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--kv-tokens", type=int, default=4096, help="KV capacity of each simulated worker, tokens")
    p.add_argument("--requests", type=int, default=160, help="requests per rate (conversations: at most)")
    p.add_argument("--per-group", type=int, default=4, help="shared-prefix: prompts per system prompt")
    p.add_argument("--prefix-tokens", type=int, default=1024, help="shared-prefix: system prompt length")
    p.add_argument("--question-tokens", type=int, default=24)
    p.add_argument("--trace", type=Path, default=TRACE, help="conversations: a Mooncake conversation trace")
    p.add_argument("--scale", type=float, default=32.0, help="conversations: divide lengths by this")
    p.add_argument("--rates", default="6,12,18", help="shared-prefix: offered req/s, comma-separated")
    p.add_argument("--conversation-rates", default="12,18,24", help="conversations: offered req/s")
    p.add_argument("--only", default="", help="comma-separated substrings of router names to keep")
    output_and_slo(p, output_tokens=16, slo_ttft=2.0, slo_tpot=0.25)
    p.set_defaults(run=run)
