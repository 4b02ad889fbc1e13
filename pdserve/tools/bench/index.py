"""``pdserve bench index``: the KV block index at scale, in memory and in Redis.

Fills a store with ``--blocks`` distinct block hashes spread over ``--workers``
workers the way a prefix-aware fleet holds them: families of ``--family-prompts``
prompts share a system prefix of ``--shared-tokens``; each prompt's chain of
``--prompt-tokens / --block-size`` blocks is held by ``--replicas`` workers drawn
from its family's ``--family-workers``, so a prefix block has several holders and
a tail block a few. Then it times ``StateStore.match`` — the router's one index
call per request — for ``--lookups`` stored prompts (all their blocks present:
the walk never stops early, the worst case), wall time and the calling thread's
CPU time (what a lookup costs the router, however busy the box), and measures the
index's memory:

- ``memory://``: in a fresh subprocess, the Python allocations the store still
  holds after the fill (tracemalloc), and, in another, the RSS growth;
- ``redis``: a redis-server this command starts on a free loopback port, its
  ``INFO memory`` ``used_memory`` growth; lookups go over loopback TCP. The CPU
  time of Redis's main thread per lookup (``INFO cpu``) and a PING's round trip are
  reported beside them: what a lookup costs Redis, and the floor under any call.

Block hashes are random 64-bit values (what blake2b-64 gives; hashing the
prompt is timed on its own, ``hash_ms``). Writes ``index-<label>.json`` and
``index-<label>.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from array import array
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import psutil

from pdserve.kv.hashing import block_hashes
from pdserve.state import StateStore, WorkerRecord, make_store
from pdserve.tools.bench.client import percentile
from pdserve.tools.bench.results import machine
from pdserve.tools.ports import free_port
from pdserve.types import BlockHash, WorkerId

MODEL = "bench-model"
BATCH = 4096  # hashes per add_blocks call: what one busy KV event batch may carry, and a Redis-friendly size


def add_parser(sub: Any) -> None:
    p = sub.add_parser("index", help="block index lookup latency and memory at scale (memory:// and Redis)")
    p.add_argument("--blocks", type=int, default=1_000_000, help="distinct block hashes in the index")
    p.add_argument("--workers", type=int, default=64, help="workers holding them")
    p.add_argument("--block-size", type=int, default=128, help="tokens per block (the workers' default)")
    p.add_argument("--prompt-tokens", type=int, default=4096, help="tokens of the looked-up prompts")
    p.add_argument("--shared-tokens", type=int, default=2048, help="system prefix shared within a family")
    p.add_argument("--family-prompts", type=int, default=32, help="prompts per family (sharing one prefix)")
    p.add_argument("--family-workers", type=int, default=8, help="workers a family's prompts are placed on")
    p.add_argument("--replicas", type=int, default=2, help="workers holding each prompt's chain")
    p.add_argument("--lookups", type=int, default=3000, help="timed match() calls per store")
    p.add_argument("--stores", default="memory,redis", help="comma-separated: memory, redis")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--label", default="run", help="names the output files: index-LABEL.json/.md")
    p.add_argument("--out", type=Path, default=Path("bench-out/index"), help="output directory")
    p.set_defaults(run=run)


@dataclass(frozen=True)
class Shape:
    blocks: int
    workers: int
    chain: int  # blocks per looked-up prompt
    shared: int  # blocks of a family's shared prefix
    family_prompts: int
    family_workers: int
    replicas: int
    seed: int

    @classmethod
    def of(cls, args: argparse.Namespace) -> Shape:
        chain, shared = args.prompt_tokens // args.block_size, args.shared_tokens // args.block_size
        if not 0 <= shared < chain:
            raise ValueError("shared_tokens: must be below prompt_tokens, in whole blocks")
        if not 1 <= args.replicas <= args.family_workers <= args.workers:
            raise ValueError("replicas, family_workers, workers: need 1 <= replicas <= family_workers <= workers")
        family = (args.family_prompts, args.family_workers)
        return cls(args.blocks, args.workers, chain, shared, *family, args.replicas, args.seed)


@dataclass
class Fleet:
    """Who holds what: every prompt's chain, and each worker's distinct blocks (compact arrays,
    so that building it leaves no freed Python objects for the store to reuse unmeasured)."""

    chains: array  # chain i is chains[i * shape.chain : (i + 1) * shape.chain]
    held: list[array]  # worker index → its distinct block hashes
    distinct: int

    @property
    def holdings(self) -> int:
        return sum(len(h) for h in self.held)

    def chain(self, i: int, n: int) -> list[BlockHash]:
        return [BlockHash(h) for h in self.chains[i * n : (i + 1) * n]]


def build(shape: Shape) -> Fleet:
    rng = random.Random(shape.seed)
    chains, held = array("Q"), [array("Q") for _ in range(shape.workers)]
    distinct = 0
    while distinct < shape.blocks:
        prefix = [rng.getrandbits(64) for _ in range(shape.shared)]
        family = rng.sample(range(shape.workers), shape.family_workers)
        has_prefix: set[int] = set()
        distinct += shape.shared
        for _ in range(shape.family_prompts):
            tail = [rng.getrandbits(64) for _ in range(shape.chain - shape.shared)]
            chains.extend(prefix + tail)
            distinct += len(tail)
            for w in rng.sample(family, shape.replicas):
                if w not in has_prefix:
                    held[w].extend(prefix)
                    has_prefix.add(w)
                held[w].extend(tail)
    return Fleet(chains, held, distinct)


def record(i: int) -> WorkerRecord:
    worker = WorkerId(f"10.0.{i // 250}.{i % 250 + 1}:50051")
    return WorkerRecord(worker, "prefill", MODEL, 128, "pdserve-blake2b64-v1", 1 << 20, uuid.uuid4().hex)


async def fill(store: StateStore, fleet: Fleet) -> float:
    """Every worker registers and writes its blocks, as the KV-event feeds would; seconds taken.
    ``list(array)`` makes fresh int objects per call, as each worker's feed hashes its own."""
    start = time.perf_counter()
    for i, blocks in enumerate(fleet.held):
        rec = record(i)
        await store.register(rec, ttl_s=3600)
        for j in range(0, len(blocks), BATCH):
            await store.add_blocks(MODEL, rec.worker_id, [BlockHash(h) for h in blocks[j : j + BATCH]])
    return time.perf_counter() - start


async def lookups(store: StateStore, fleet: Fleet, shape: Shape, n: int) -> dict[str, float]:
    rng = random.Random(shape.seed + 1)
    count = len(fleet.chains) // shape.chain
    prompts = [fleet.chain(rng.randrange(count), shape.chain) for _ in range(n + n // 10)]
    times, cpu, found = [], [], 0
    for i, hashes in enumerate(prompts):
        start, start_cpu = time.perf_counter(), time.thread_time()
        matched = await store.match(MODEL, hashes)
        elapsed, elapsed_cpu = time.perf_counter() - start, time.thread_time() - start_cpu
        if i >= n // 10:  # the first tenth warms caches and connections
            times.append(elapsed)
            cpu.append(elapsed_cpu)
            found += max(matched.values(), default=0) == shape.chain
    return {
        "lookup_p50_ms": percentile(times, 50) * 1000,
        "lookup_p99_ms": percentile(times, 99) * 1000,
        "lookup_mean_ms": sum(times) / len(times) * 1000,
        # this thread's CPU time: what a lookup costs the router, whatever else the box runs
        "client_cpu_p50_ms": percentile(cpu, 50) * 1000,
        "client_cpu_p99_ms": percentile(cpu, 99) * 1000,
        "full_matches": found / len(times),
    }


def _memory_child(shape: Shape, traced: bool, n_lookups: int) -> dict[str, Any]:
    """One fresh process: fill a ``memory://`` store; tracemalloc's retained bytes, or RSS growth
    and lookup latency (tracemalloc slows every allocation: never both in one process)."""
    fleet = build(shape)
    store = make_store("memory://")
    gc.collect()
    rss = psutil.Process().memory_info().rss
    if traced:
        tracemalloc.start()
    fill_s = asyncio.run(fill(store, fleet))
    gc.collect()
    if traced:
        return {"bytes": tracemalloc.get_traced_memory()[0], "fill_s": fill_s}
    out: dict[str, Any] = {"rss_bytes": psutil.Process().memory_info().rss - rss, "fill_s": fill_s}
    return {**out, **asyncio.run(lookups(store, fleet, shape, n_lookups)), "distinct": fleet.distinct}


def bench_memory(shape: Shape, n_lookups: int) -> dict[str, Any]:
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        traced = pool.submit(_memory_child, shape, True, n_lookups).result()
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        timed = pool.submit(_memory_child, shape, False, n_lookups).result()
    distinct, rss = timed.pop("distinct"), timed.pop("rss_bytes")
    return {**timed, "mb_per_1m_blocks": traced["bytes"] / distinct, "rss_mb_per_1m_blocks": rss / distinct}


def bench_redis(shape: Shape, fleet: Fleet, n_lookups: int) -> dict[str, Any]:
    import redis  # here: `pdserve bench` runs where redis-py is not installed (the GPU hosts)
    import redis.asyncio as aioredis

    from pdserve.tools.redis_server import RedisServer

    with tempfile.TemporaryDirectory(prefix="pdserve-bench-index-") as tmp:
        server = RedisServer(free_port(), Path(tmp)).start()
        try:
            raw = redis.Redis(port=server.port)
            used = int(raw.info("memory")["used_memory"])
            store = make_store(server.url, timeout_s=30)

            async def go() -> dict[str, Any]:
                try:
                    fill_s = await fill(store, fleet)
                    grown = int(raw.info("memory")["used_memory"]) - used
                    cpu = _main_thread_cpu_s(raw)
                    timed = await lookups(store, fleet, shape, n_lookups)
                    cpu = _main_thread_cpu_s(raw) - cpu
                    timed["server_ms_per_lookup"] = cpu * 1000 / (n_lookups + n_lookups // 10)
                    return {"fill_s": fill_s, "mb_per_1m_blocks": grown / fleet.distinct, **timed, **await pings()}
                finally:
                    await store.close()

            async def pings(n: int = 1000) -> dict[str, float]:
                """The floor under any lookup: one PING's round trip from this process's client."""
                client = aioredis.from_url(server.url, protocol=2)
                times = []
                for _ in range(n):
                    start = time.perf_counter()
                    await client.ping()
                    times.append(time.perf_counter() - start)
                await client.aclose()
                return {"ping_p50_ms": percentile(times, 50) * 1000, "ping_p99_ms": percentile(times, 99) * 1000}

            return asyncio.run(go())
        finally:
            server.stop()


def _main_thread_cpu_s(raw: Any) -> float:
    """CPU seconds of Redis's main thread so far: commands, scripts and their network I/O."""
    info = raw.info("cpu")
    return float(info["used_cpu_user_main_thread"]) + float(info["used_cpu_sys_main_thread"])


def hash_ms(shape: Shape, block_size: int, n: int = 200) -> float:
    """Median time to hash one prompt of ``shape.chain`` blocks (pdserve.kv.hashing)."""
    tokens = list(range(shape.chain * block_size))
    times = []
    for _ in range(n):
        start = time.perf_counter()
        block_hashes(MODEL, tokens, block_size)
        times.append(time.perf_counter() - start)
    return percentile(times, 50) * 1000


def run(args: argparse.Namespace) -> int:
    shape = Shape.of(args)
    stores = [s for s in args.stores.split(",") if s]
    if unknown := set(stores) - {"memory", "redis"}:
        raise ValueError(f"stores: {sorted(unknown)} not in ['memory', 'redis']")
    fleet = build(shape)
    meta = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M"), "command": _command()}
    results: dict[str, Any] = {**meta, "label": args.label, "shape": asdict(shape) | {"block_size": args.block_size}}
    results |= {"distinct_blocks": fleet.distinct, "holdings": fleet.holdings}
    results["hash_ms"] = hash_ms(shape, args.block_size)
    results["stores"] = {}
    for name in stores:
        if name == "memory":
            results["stores"][name] = bench_memory(shape, args.lookups)
        else:
            results["stores"][name] = bench_redis(shape, fleet, args.lookups)
        print(f"{name}: {json.dumps(results['stores'][name])}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"index-{args.label}.json").write_text(json.dumps(results, indent=2) + "\n")
    text = markdown(results)
    (args.out / f"index-{args.label}.md").write_text(text + "\n")
    print(f"\n{meta['machine']}, {meta['date']}\n\n{text}\n")
    return 0


def _command() -> str:
    """This command line as a user types it, and the commit it ran at."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
    except OSError:
        return "pdserve " + " ".join(sys.argv[1:])
    at = f" (at {commit.stdout.strip()})" if commit.returncode == 0 else ""
    return "pdserve " + " ".join(sys.argv[1:]) + at


def markdown(results: dict[str, Any]) -> str:
    rows = [
        "| store | lookup p50 ms | lookup p99 ms | router CPU p50/p99 ms | MB per 1M blocks | fill s"
        " | Redis CPU ms/lookup | PING p50/p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results["stores"].items():
        memory = f"{r['mb_per_1m_blocks']:.0f}"
        if "rss_mb_per_1m_blocks" in r:
            memory += f" (RSS {r['rss_mb_per_1m_blocks']:.0f})"
        server = f"{r['server_ms_per_lookup']:.3f}" if "server_ms_per_lookup" in r else "-"
        ping = f"{r['ping_p50_ms']:.3f} / {r['ping_p99_ms']:.3f}" if "ping_p50_ms" in r else "-"
        lookup = f"{r['lookup_p50_ms']:.3f} | {r['lookup_p99_ms']:.3f}"
        if "client_cpu_p50_ms" in r:
            lookup += f" | {r['client_cpu_p50_ms']:.3f} / {r['client_cpu_p99_ms']:.3f}"
        else:
            lookup += " | -"
        rows.append(f"| {name} | {lookup} | {memory} | {r['fill_s']:.1f} | {server} | {ping} |")
    shape = results["shape"]
    rows.append(
        f"\n{results['distinct_blocks']} distinct blocks, {results['holdings']} (block, worker) holdings over"
        f" {shape['workers']} workers; lookups of stored {shape['chain']}-block prompts"
        f" ({shape['chain'] * shape['block_size']} tokens, block size {shape['block_size']});"
        f" hashing such a prompt: {results['hash_ms']:.3f} ms."
    )
    return "\n".join(rows)
