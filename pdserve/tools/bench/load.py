"""Open-loop Poisson load against an OpenAI endpoint, swept over request rates.

Prompts are random token ids (no shared prefixes), lengths drawn uniformly from
``--prompt-tokens LO:HI``, outputs from ``--output-tokens LO:HI`` with
``ignore_eos``. Reports per rate: TTFT and TPOT percentiles, output tok/s and
goodput (requests per second that met both SLOs).

``--trace FILE`` takes prompts and output lengths from a Mooncake trace instead
(token ids per hash id, so the trace's prefix sharing holds; no tokenizer needed),
still sent open-loop at each rate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from pathlib import Path
from typing import Any

import httpx

from pdserve.tools.bench.client import Timing, random_prompt, timed_completion
from pdserve.tools.bench.report import Slo, summarize
from pdserve.tools.bench.run import int_range
from pdserve.tools.bench.workloads import trace_token_ids


def add_parser(sub: Any) -> None:
    p = sub.add_parser("load", help="Poisson load over a sweep of request rates")
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--model", default="", help="served model name (default: the first in /v1/models)")
    p.add_argument("--vocab-size", type=int, default=32000, help="prompt token ids are drawn below this")
    p.add_argument("--rates", default="1,2,4", help="comma-separated request rates (req/s)")
    p.add_argument("--requests", type=int, default=50, help="requests per rate")
    p.add_argument("--prompt-tokens", default="2048:4096", help="LO:HI prompt length")
    p.add_argument("--output-tokens", default="128:256", help="LO:HI output length")
    p.add_argument("--trace", type=Path, help="Mooncake-format JSONL: prompts and outputs from its first rows")
    p.add_argument("--trace-scale", type=float, default=1.0, help="--trace: divide prompt lengths by this")
    p.add_argument("--slo-ttft", type=float, default=2.0, help="TTFT SLO, seconds")
    p.add_argument("--slo-tpot", type=float, default=0.05, help="time per output token SLO, seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--label", default="", help="name of this run in the output")
    p.add_argument("--out", default="bench-out/load.json")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    model = args.model or httpx.get(f"{args.url}/v1/models", timeout=10).json()["data"][0]["id"]
    results = {
        "label": args.label,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "slo": {"ttft_s": args.slo_ttft, "tpot_s": args.slo_tpot},
        "prompt_tokens": args.prompt_tokens,
        "output_tokens": args.output_tokens,
        "trace": None if args.trace is None else {"file": args.trace.name, "scale": args.trace_scale},
        "rates": {},
    }
    for rate in [float(r) for r in args.rates.split(",")]:
        timings, wall = asyncio.run(sweep_point(args, model, rate))
        summary = summarize(timings, wall, Slo(args.slo_ttft, args.slo_tpot))
        print(json.dumps({"rate": rate, **summary}), flush=True)
        summary["per_request"] = [  # raw, so goodput can be recomputed under any SLO
            {"prompt": t.prompt_tokens, "out": t.completion_tokens, "ttft": t.ttft_s, "e2e": t.e2e_s, "err": t.error}
            for t in timings
        ]
        results["rates"][str(rate)] = summary
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    return 0


async def sweep_point(args: argparse.Namespace, model: str, rate: float) -> tuple[list[Timing], float]:
    # A different stream per rate: prompts repeated across rates would hit the prefix cache.
    rng = random.Random(f"{args.seed}-{rate}")
    plo, phi = int_range(args.prompt_tokens)
    olo, ohi = int_range(args.output_tokens)
    if args.trace is not None:  # HI of each range caps the trace's lengths
        salt = f"{args.seed}-{rate}"
        work = trace_token_ids(args.trace, args.requests, args.trace_scale, args.vocab_size, salt, phi, ohi)
    else:
        work = [
            (random_prompt(rng, rng.randint(plo, phi), args.vocab_size), rng.randint(olo, ohi))
            for _ in range(args.requests)
        ]
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        start = time.perf_counter()
        tasks = []
        for prompt, max_tokens in work:
            tasks.append(asyncio.create_task(timed_completion(client, args.url, model, prompt, max_tokens)))
            await asyncio.sleep(rng.expovariate(rate))
        timings = await asyncio.gather(*tasks)
        return list(timings), time.perf_counter() - start
