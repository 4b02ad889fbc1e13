"""P/D versus one colocated engine on this machine, sequential requests.

Starts ``pdserve up`` (1 prefill + 1 decode worker, NIXL) and then
``pdserve up --colocated`` (1 engine, no transfer) on the same model and ports,
sends the same prompts one at a time to each, and reports TTFT and end-to-end
latency per prompt length with the P/D ÷ colocated ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from pdserve.config import resolve_model
from pdserve.tools.bench.client import Timing, percentile, random_prompt, timed_completion
from pdserve.tools.model import model_or_default
from pdserve.tools.up import wait_ready


def add_parser(sub: Any) -> None:
    p = sub.add_parser("pd-vs-colocated", help="TTFT/latency of P/D versus one colocated engine")
    p.add_argument("--model", default="", help="HF model directory (default: the embedded model)")
    p.add_argument("--prompt-tokens", default="128,512,1024", help="comma-separated prompt lengths")
    p.add_argument("--requests", type=int, default=8, help="requests per prompt length (after one warm-up)")
    p.add_argument("--max-tokens", type=int, default=32, help="output tokens per request (ignore_eos)")
    p.add_argument("--port", type=int, default=8090)
    p.add_argument("--out", default="bench-out/pd_vs_colocated.json", help="JSON results file")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    lengths = [int(x) for x in args.prompt_tokens.split(",")]
    results: dict[str, Any] = {
        "machine": _machine(),
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(sys.argv),
        "modes": {},
    }
    for mode in ("pd", "colocated"):
        results["modes"][mode] = _run_mode(mode, args, lengths)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(markdown(results))
    return 0


def _run_mode(mode: str, args: argparse.Namespace, lengths: list[int]) -> dict[str, Any]:
    model_dir, _ = resolve_model(*model_or_default(args.model, ""))
    vocab = int(json.loads((model_dir / "config.json").read_text())["vocab_size"])
    cmd = [sys.executable, "-m", "pdserve", "up", "--port", str(args.port), "--model", str(model_dir)]
    cmd += ["--colocated"] if mode == "colocated" else []
    log = Path(args.out).with_suffix(f".{mode}.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{args.port}"
    try:
        model = wait_ready(url, proc, log)
        return asyncio.run(_measure(url, model, vocab, lengths, args.requests, args.max_tokens))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)


async def _measure(url: str, model: str, vocab: int, lengths: list[int], n: int, max_tokens: int) -> dict[str, Any]:
    rng = random.Random(0)  # same prompts for both modes
    out: dict[str, Any] = {}
    async with httpx.AsyncClient(timeout=600) as client:
        for length in lengths:
            await timed_completion(client, url, model, random_prompt(rng, length, vocab), max_tokens)  # warm-up
            timings = [
                await timed_completion(client, url, model, random_prompt(rng, length, vocab), max_tokens)
                for _ in range(n)
            ]
            out[str(length)] = _summary(timings)
    return out


def _summary(timings: list[Timing]) -> dict[str, float]:
    ok = [t for t in timings if not t.error]
    itl = [x for t in ok for x in t.itl_s]
    return {
        "requests": len(timings),
        "errors": len(timings) - len(ok),
        "ttft_p50_s": percentile([t.ttft_s for t in ok], 50),
        "ttft_p90_s": percentile([t.ttft_s for t in ok], 90),
        "e2e_p50_s": percentile([t.e2e_s for t in ok], 50),
        "e2e_p90_s": percentile([t.e2e_s for t in ok], 90),
        "itl_p50_s": percentile(itl, 50),
    }


def markdown(results: dict[str, Any]) -> str:
    pd, co = results["modes"]["pd"], results["modes"]["colocated"]
    rows = [
        "| prompt tokens | TTFT p50 P/D | TTFT p50 colocated | ratio | e2e p50 P/D | e2e p50 colocated | ratio "
        "| ITL p50 P/D | ITL p50 colocated |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for length in pd:
        a, b = pd[length], co[length]
        rows.append(
            f"| {length} | {a['ttft_p50_s']:.3f} s | {b['ttft_p50_s']:.3f} s | "
            f"{a['ttft_p50_s'] / b['ttft_p50_s']:.2f} | {a['e2e_p50_s']:.2f} s | {b['e2e_p50_s']:.2f} s | "
            f"{a['e2e_p50_s'] / b['e2e_p50_s']:.2f} | {a['itl_p50_s'] * 1e3:.1f} ms | "
            f"{b['itl_p50_s'] * 1e3:.1f} ms |"
        )
    return "\n".join(rows)


def _machine() -> str:
    import os

    return f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores, {platform.processor() or 'cpu'}"
