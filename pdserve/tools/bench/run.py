"""``pdserve bench run``: one workload against any OpenAI endpoint.

Open-loop Poisson arrivals at ``--rate`` req/s (a trace keeps its own
timestamps, scaled by ``--time-scale``) or closed-loop ``--concurrency`` C
(C requests always in flight). Every request streams from ``/v1/completions``
with ``ignore_eos`` and temperature 0. Writes a JSON summary (+ raw per-request
rows) and a PNG; prints the summary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from pdserve.tools.bench import workloads
from pdserve.tools.bench.client import Timing, timed_completion
from pdserve.tools.bench.report import Slo, plot, raw, summarize, write_json
from pdserve.tools.bench.workloads import Item


def int_range(text: str) -> tuple[int, int]:
    """``"LO:HI"`` (or ``"N"`` for N:N) → (LO, HI); the bench CLIs' length flags."""
    lo, _, hi = text.partition(":")
    return int(lo), int(hi or lo)


def add_workload_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("workload")
    g.add_argument("--workload", choices=["shared-prefix", "multi-turn", "random", "trace"], default="shared-prefix")
    g.add_argument("--groups", type=int, default=16, help="shared-prefix: groups (= distinct system prompts)")
    g.add_argument("--per-group", type=int, default=8, help="shared-prefix: prompts per group")
    g.add_argument("--prefix-tokens", type=int, default=1024, help="shared-prefix: system prompt length (≈ tokens)")
    g.add_argument("--question-tokens", type=int, default=32, help="shared-prefix: question length")
    g.add_argument("--conversations", type=int, default=16, help="multi-turn: conversations")
    g.add_argument("--turns", type=int, default=4, help="multi-turn: turns each")
    g.add_argument("--turn-tokens", type=int, default=128, help="multi-turn: user turn length (answers: same)")
    g.add_argument("--requests", type=int, default=100, help="random: requests; trace: at most this many rows")
    g.add_argument("--prompt-tokens", type=int_range, default=(256, 1024), help="random: LO:HI prompt length")
    g.add_argument("--output-tokens", type=int, default=32, help="output tokens per request (trace: cap)")
    g.add_argument("--trace", type=Path, help="trace: Mooncake-format JSONL file")
    g.add_argument("--scale", type=float, default=16.0, help="trace: divide lengths by this")
    g.add_argument("--time-scale", type=float, default=1.0, help="trace: replay this many times faster")
    g.add_argument("--seed", type=int, default=0)


def add_load_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("load")
    g.add_argument("--rate", type=float, default=0.0, help="Poisson arrivals, req/s (0 = use --concurrency)")
    g.add_argument("--concurrency", type=int, default=8, help="requests kept in flight when --rate is 0")
    g.add_argument("--slo-ttft", type=float, default=1.0, help="TTFT SLO, seconds")
    g.add_argument("--slo-tpot", type=float, default=0.05, help="time per output token SLO, seconds")
    g.add_argument("--timeout", type=float, default=300.0, help="per-request timeout, seconds")


def add_parser(sub: Any) -> None:
    p = sub.add_parser("run", help="one workload against any OpenAI endpoint (JSON + PNG)")
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--model", default="", help="served model name (default: the first in /v1/models)")
    p.add_argument("--label", default="run", help="name of this run in the output")
    p.add_argument("--out", type=Path, default=Path("bench-out/run.json"), help="JSON path; the PNG goes beside it")
    add_workload_flags(p)
    add_load_flags(p)
    p.set_defaults(run=main)


def build(args: argparse.Namespace) -> list[Item]:
    rng = random.Random(args.seed)
    if args.workload == "shared-prefix":
        return workloads.shared_prefix(
            rng, args.groups, args.per_group, args.prefix_tokens, args.question_tokens, args.output_tokens
        )
    if args.workload == "multi-turn":
        return workloads.multi_turn(
            rng, args.conversations, args.turns, args.turn_tokens, args.turn_tokens, args.output_tokens
        )
    if args.workload == "random":
        return workloads.random_lengths(rng, args.requests, args.prompt_tokens, (args.output_tokens,) * 2)
    if args.trace is None:
        raise ValueError("trace: give --trace FILE (e.g. ../shared/traces/mooncake_conversation_trace.jsonl)")
    return workloads.trace(args.trace, args.requests, args.scale, args.time_scale, args.output_tokens)


def arrivals(items: Sequence[Item], rate: float, rng: random.Random) -> list[float]:
    """Send offsets: the items' own (traces), else a Poisson process at ``rate``."""
    if all(i.at_s is not None for i in items):
        return [float(i.at_s or 0.0) for i in items]
    t, out = 0.0, []
    for _ in items:
        out.append(t)
        t += rng.expovariate(rate)
    return out


async def drive(
    url: str | Sequence[str],
    model: str,
    items: Sequence[Item],
    rate: float,
    concurrency: int,
    timeout_s: float = 300.0,
    seed: int = 0,
    progress: bool = True,
) -> tuple[list[Timing], float]:
    """Send every item (several URLs: item i to ``url[i % len(url)]``, a client-side
    round-robin); returns timings in item order and the wall time."""
    urls = [url] if isinstance(url, str) else list(url)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    bar = tqdm(total=len(items), disable=not progress, unit="req", leave=False)
    results: list[Timing | None] = [None] * len(items)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
        start = time.perf_counter()

        async def one(i: int) -> None:
            sent = time.perf_counter() - start
            timing = await timed_completion(client, urls[i % len(urls)], model, items[i].prompt, items[i].max_tokens)
            timing.start_s = sent
            results[i] = timing
            bar.update()

        if rate > 0 or all(i.at_s is not None for i in items):
            tasks = []
            for i, at in enumerate(arrivals(items, rate, random.Random(seed))):
                await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
                tasks.append(asyncio.create_task(one(i)))
            await asyncio.gather(*tasks)
        else:
            queue = iter(range(len(items)))

            async def worker() -> None:
                for i in queue:  # one shared iterator: each item is taken once
                    await one(i)

            await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
        wall = time.perf_counter() - start
    bar.close()
    return [t for t in results if t is not None], wall


def first_model(url: str) -> str:
    return str(httpx.get(f"{url}/v1/models", timeout=10).json()["data"][0]["id"])


def main(args: argparse.Namespace) -> int:
    items = build(args)
    model = args.model or first_model(args.url)
    timings, wall = asyncio.run(drive(args.url, model, items, args.rate, args.concurrency, args.timeout, args.seed))
    summary = summarize(timings, wall, Slo(args.slo_ttft, args.slo_tpot))
    print(json.dumps({"label": args.label, **summary}, indent=2))
    write_json(args.out, {"label": args.label, "args": vars(args), "summary": summary, "requests": raw(timings)})
    plot(args.out.with_suffix(".png"), {args.label: timings}, {args.label: summary}, f"{args.label}: {args.workload}")
    return 0
