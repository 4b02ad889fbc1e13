"""``pdserve bench compare replicas``: 1, 2, 4, 8 pdserve routers over one sim fleet.

Per count and state, a fresh fleet (``--workers`` colocated gRPC sim workers) and N
routers with ``--policy prefix-aware``; the load generator sends request i to router
``i mod N`` (a client-side round-robin). ``redis``: one redis-server, workers register
there and feed it their KV events, routers find workers and read the block index there
(a namespace per run). ``memory``: each router has its own ``memory://`` index, fed by
the workers' KV events it follows itself, and a static worker list.

Halfway through the requests router 0 is restarted (stopped, started again on the same
port, waited for); the second half measures its cached share against the others'.
Redis round trips come from the routers' ``pdserve_router_state_store_seconds``
(calls per operation: ``match`` (one Lua script), ``predict`` (one pipeline) and ``count``
are one round trip each), summed over routers.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from pdserve.tools.bench import workloads
from pdserve.tools.bench.client import Timing
from pdserve.tools.bench.contenders import BLOCK, MODEL
from pdserve.tools.bench.report import Slo, save_figure, summarize, write_json
from pdserve.tools.bench.results import machine, output_and_slo
from pdserve.tools.bench.run import arrivals, drive
from pdserve.tools.bench.workloads import Item
from pdserve.tools.fleet import ROUTER_READY_S, start_sim_worker
from pdserve.tools.model import model_from_env
from pdserve.tools.ports import free_port, free_ports
from pdserve.tools.procs import Procs, python

STATES = ("redis", "memory")
REQUEST_PATH_OPS = {"match": 1, "predict": 1, "count": 1}  # round trips per call (match: one Lua script)


@dataclass(frozen=True)
class StoreCalls:
    """One router's (or several routers') shared-store calls: per op, the count and the
    cumulative histogram buckets (upper bound → calls at or under it)."""

    counts: dict[str, float]
    buckets: dict[float, float]  # request-path ops only

    def __add__(self, other: StoreCalls) -> StoreCalls:
        counts = {k: self.counts.get(k, 0.0) + other.counts.get(k, 0.0) for k in {*self.counts, *other.counts}}
        buckets = {b: self.buckets.get(b, 0.0) + other.buckets.get(b, 0.0) for b in {*self.buckets, *other.buckets}}
        return StoreCalls(counts, buckets)

    def round_trips(self) -> float:
        return sum(self.counts.get(op, 0.0) * n for op, n in REQUEST_PATH_OPS.items())

    def p99_s(self) -> float:
        """The 99th percentile of request-path calls, interpolated within its bucket."""
        total = self.buckets.get(float("inf"), 0.0)
        if not total:
            return float("nan")
        rank, low, below = 0.99 * total, 0.0, 0.0
        for bound in sorted(self.buckets):
            if self.buckets[bound] >= rank:
                if bound == float("inf"):
                    return low
                inside = self.buckets[bound] - below
                return low + (bound - low) * ((rank - below) / inside if inside else 1.0)
            low, below = bound, self.buckets[bound]
        return low


def store_calls(url: str) -> StoreCalls:
    counts: dict[str, float] = {}
    buckets: dict[float, float] = {}
    text = httpx.get(f"{url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "pdserve_router_state_store_seconds_count":
                counts[s.labels["op"]] = s.value
            elif s.name == "pdserve_router_state_store_seconds_bucket" and s.labels["op"] in REQUEST_PATH_OPS:
                bound = float(s.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + s.value
    return StoreCalls(counts, buckets)


class Cluster:
    """The workers, an optional redis-server and N routers of one run, under ``procs``."""

    def __init__(self, procs: Procs, args: argparse.Namespace, state: str, routers: int) -> None:
        self.procs, self.args, self.state = procs, args, state
        self.namespace = f"bench{random.getrandbits(32):x}"  # a fresh index each run
        self.redis_port = free_port() if state == "redis" else 0
        if state == "redis":
            procs.start("redis", ["redis-server", "--port", str(self.redis_port), "--save", "", "--appendonly", "no"])
            _wait_redis(self.redis_port)
        self.workers = [self._worker(i) for i in range(args.workers)]
        self.ports = free_ports(routers)
        self.procs_of = [self._router(i, f"router{i}") for i in range(routers)]
        for port in self.ports:
            procs.wait_http(
                f"http://127.0.0.1:{port}/v1/models", ROUTER_READY_S, ready=lambda r: bool(r.json()["data"])
            )

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{p}" for p in self.ports]

    def _state_args(self) -> list[str]:
        if self.state != "redis":
            return []
        return ["--state-url", f"redis://127.0.0.1:{self.redis_port}", "--state-namespace", self.namespace]

    def _worker(self, i: int) -> str:
        args = ["--served-model-name", MODEL, "--block-size", str(BLOCK), "--kv-connector", "none"]
        args += ["--engine-arg", f"profile={self.args.profile}", "--engine-arg", f"slow_factor={self.args.slow}"]
        args += self._state_args()
        return start_sim_worker(self.procs, "decode", f"decode{i}", args).address

    def _router(self, i: int, name: str) -> subprocess.Popen[bytes]:
        argv = python("router", "--port", str(self.ports[i]), "--model", str(model_from_env()))
        argv += ["--policy", "prefix-aware", "--log-level", "WARNING", *self._state_args()]
        if self.state != "redis":
            argv += [f"--decode={a}" for a in self.workers]
        return self.procs.start(name, argv)

    def restart(self, i: int) -> float:
        """Stop router ``i`` and start it again on its port; seconds until it serves."""
        self.procs.stop_one(self.procs_of[i])
        start = time.monotonic()
        self.procs_of[i] = self._router(i, f"router{i}-restarted")
        self.procs.wait_http(f"{self.urls[i]}/v1/models", ROUTER_READY_S, ready=_serves)
        return time.monotonic() - start


def _serves(resp: httpx.Response) -> bool:
    """A router serves once it lists a model (its workers are connected)."""
    return bool(resp.json()["data"])


def _wait_redis(port: int) -> None:
    import redis  # here, not at the top: `pdserve bench` runs on GPU hosts that have no redis-py

    deadline = time.monotonic() + 20
    while True:
        try:
            redis.Redis(port=port).ping()
            return
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _cached(timings: Sequence[Timing]) -> float:
    prompt = sum(t.prompt_tokens for t in timings if not t.error)
    return sum(t.cached_tokens for t in timings if not t.error) / prompt if prompt else 0.0


def one_run(args: argparse.Namespace, state: str, n: int, items: list[Item], slo: Slo) -> dict[str, Any]:
    half = len(items) // 2
    t0 = items[half].at_s or 0.0
    first, second = items[:half], [Item(i.prompt, i.max_tokens, (i.at_s or 0.0) - t0, i.group) for i in items[half:]]
    with Procs(args.out / "logs" / f"{state}-{n}") as procs:
        cluster = Cluster(procs, args, state, n)
        a, wall_a = asyncio.run(drive(cluster.urls, MODEL, first, 0.0, 1, progress=False))
        calls = sum((store_calls(u) for u in cluster.urls[:1]), StoreCalls({}, {}))  # router 0 before it goes
        restart_s = cluster.restart(0)
        b, wall_b = asyncio.run(drive(cluster.urls, MODEL, second, 0.0, 1, progress=False))
        calls = sum((store_calls(u) for u in cluster.urls), calls)
    restarted = [t for i, t in enumerate(b) if i % n == 0]
    others = [t for i, t in enumerate(b) if i % n != 0]
    whole = summarize([*a, *b], wall_a + wall_b, slo)
    requests = len(items)
    return whole | {
        "state": state,
        "routers": n,
        "restart_ready_s": restart_s,
        "cached_restarted": _cached(restarted),
        "cached_others": _cached(others) if others else float("nan"),
        "cached_first_half": _cached(a),
        "round_trips_per_request": calls.round_trips() / requests if state == "redis" else 0.0,
        "store_p99_s": calls.p99_s() if state == "redis" else float("nan"),
        "store_calls": calls.counts,
    }


def best_cached(items: Sequence[Item]) -> float:
    """Cached share if every request found its group's prefix except each group's first
    (whole blocks only, approximating one word as one token)."""
    seen: set[str] = set()
    hit = total = 0
    for item in items:
        tokens = len(item.prompt.split())
        total += tokens
        if item.group in seen:
            prefix = len(item.prompt.split("\nQuestion")[0].split())
            hit += prefix // BLOCK * BLOCK
        seen.add(item.group)
    return hit / total if total else 0.0


def run(args: argparse.Namespace) -> int:
    slo = Slo(args.slo_ttft, args.slo_tpot)
    counts = [int(c) for c in args.routers.split(",")]
    rng = random.Random(args.seed)
    items = workloads.shared_prefix(
        rng, args.groups, args.per_group, args.prefix_tokens, args.question_tokens, args.output_tokens
    )
    if args.grouped:  # each system prompt's requests back to back: new prefixes race across routers
        items.sort(key=lambda i: i.group)
    offsets = arrivals(items, args.rate, random.Random(f"arrivals-{args.seed}"))
    items = [Item(i.prompt, i.max_tokens, at, i.group) for i, at in zip(items, offsets, strict=True)]
    rows: dict[str, dict[str, Any]] = {}
    best = best_cached(items)
    meta = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "command": sys.argv}
    for state in args.states.split(","):
        for n in counts:
            key = f"{state} x{n}"
            try:
                rows[key] = one_run(args, state, n, items, slo)
            except RuntimeError as exc:  # a port taken between picking and binding, on a shared box
                print(f"{key}: failed ({exc}); once more", file=sys.stderr)
                rows[key] = one_run(args, state, n, items, slo)
            show = ("cached_ratio", "cached_restarted", "ttft_p50_s", "round_trips_per_request", "store_p99_s")
            print(key, {k: round(rows[key][k], 4) for k in show})
            write_json(args.out / "replicas.json", {**meta, "args": vars(args), "best_cached": best, "rows": rows})
    text = table(rows, best)
    (args.out / "replicas.md").write_text(text + "\n")
    plot(args.out / "replicas.png", rows, counts, args.states.split(","))
    print(f"\n{meta['machine']}, {meta['date']}\n\n{text}\n")
    return 0


def table(rows: dict[str, dict[str, Any]], best: float) -> str:
    head = f"best possible cached share ≈ {100 * best:.1f} %\n\n| state | routers | cached % | TTFT p50 ms "
    head += "| TTFT p90 ms | TTFT p99 ms | errors | Redis round trips / request | store call p99 ms "
    head += "| restart → ready s | cached % after restart: restarted router | others |"
    lines = [head, "|---|---:|" + "---:|" * 10]
    for r in rows.values():
        lines.append(
            f"| {r['state']} | {r['routers']} | {100 * r['cached_ratio']:.1f} | {1000 * r['ttft_p50_s']:.1f} | "
            f"{1000 * r['ttft_p90_s']:.1f} | {1000 * r['ttft_p99_s']:.1f} | {r['errors']} | "
            f"{r['round_trips_per_request']:.2f} | {1000 * r['store_p99_s']:.2f} | {r['restart_ready_s']:.1f} | "
            f"{100 * r['cached_restarted']:.1f} | {100 * r['cached_others']:.1f} |"
        )
    return "\n".join(lines)


def plot(path: Path, rows: dict[str, dict[str, Any]], counts: list[int], states: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    panels = (
        ("cached_ratio", 100.0, "cached % of prompt tokens"),
        ("ttft_p50_s", 1000.0, "TTFT p50 ms"),
        ("cached_restarted", 100.0, "cached % through the restarted router"),
    )
    for ax, (key, scale, title) in zip(axes, panels, strict=True):
        for state in states:
            ax.plot(counts, [scale * rows[f"{state} x{n}"][key] for n in counts], "o-", label=state)
        ax.set(title=title, xlabel="routers", xticks=counts)
        if key.startswith("cached"):
            ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[0].legend()
    save_figure(fig, path, "pdserve bench compare replicas")


def add_parser(kinds: Any, common: argparse.ArgumentParser) -> None:
    p = kinds.add_parser("replicas", parents=[common], help="1-8 routers sharing Redis vs each its own index")
    p.add_argument("--routers", default="1,2,4,8", help="router counts, comma-separated")
    p.add_argument("--states", default=",".join(STATES), help=f"comma-separated, of {STATES}")
    p.add_argument("--workers", type=int, default=4, help="colocated sim workers")
    p.add_argument("--groups", type=int, default=12)
    p.add_argument("--per-group", type=int, default=10)
    p.add_argument("--prefix-tokens", type=int, default=1024)
    p.add_argument("--question-tokens", type=int, default=24)
    p.add_argument("--rate", type=float, default=6.0, help="Poisson arrivals, req/s")
    p.add_argument("--grouped", action="store_true", help="send each group's requests back to back")
    output_and_slo(p, output_tokens=8, slo_ttft=0.5, slo_tpot=0.05)
    p.set_defaults(run=run)
