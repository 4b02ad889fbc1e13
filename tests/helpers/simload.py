"""Load on a sim fleet as the fault tests send it: streamed completions of token-id
prompts whose exact output the sim engine fixes, and how their failures read."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence

import httpx

from pdserve.engine.sim.engine import next_token
from tests.factories import metric_samples

VOCAB = 32000  # the llama-3.1-8b-h200 profile's
OUTPUT = 24  # tokens per completion


def expected(prompt: list[int], n: int) -> list[int]:
    tokens = list(prompt)
    for _ in range(n):
        tokens.append(next_token(tokens, VOCAB))
    return tokens[len(prompt) :]


async def one(
    client: httpx.AsyncClient, url: str, model: str, prompt: list[int], max_tokens: int = OUTPUT
) -> list[int] | str:
    """The completion's token ids, or what went wrong (an error keeps its body: see ``clean``)."""
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}
    body |= {"stream": True, "return_token_ids": True}
    for attempt in range(2):
        got: list[int] = []
        started = False
        try:
            async with client.stream("POST", f"{url}/v1/completions", json=body) as resp:
                started = True
                if resp.status_code != 200:
                    return f"HTTP {resp.status_code}: {(await resp.aread()).decode(errors='replace')}"
                async for line in resp.aiter_lines():
                    if line.startswith("data: {"):
                        event = json.loads(line[6:])
                        if "error" in event:
                            return f"error event: {json.dumps(event['error'])}"
                        for choice in event["choices"]:
                            got += choice.get("token_ids") or []
            return got
        except httpx.TransportError as exc:
            # Like the OpenAI SDK: a connection that failed before the response started (a
            # pooled keep-alive connection the server was closing) is retried once. After
            # the response started, a broken stream is a failure of the router.
            if started or attempt:
                return f"{'mid-stream' if started else 'connect'}: {exc!r}"
    return "unreachable"


def clean(failure: str) -> bool:
    """An error a client can act on: an OpenAI-shaped ``{"error": {"message", "type"}}``,
    as the HTTP body of a status other than 500 or in the stream, with no internal error
    or traceback. A broken connection or stream is not clean."""
    kind, _, rest = failure.partition(": ")
    try:
        error = json.loads(rest)
    except ValueError:
        return False
    if kind.startswith("HTTP "):
        if kind == "HTTP 500" or not isinstance(error, dict):
            return False
        error = error.get("error")
    elif kind != "error event":
        return False
    return (
        isinstance(error, dict)
        and isinstance(error.get("message"), str)
        and error.get("type") not in (None, "internal_error")
        and "Traceback" not in rest
    )


async def timed(client: httpx.AsyncClient, url: str, model: str, prompt: list[int]) -> tuple[list[int] | str, float]:
    """``one`` and its end-to-end latency in seconds, as the client sees it."""
    start = time.perf_counter()
    result = await one(client, url, model, prompt)
    return result, time.perf_counter() - start


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]); NaN for no values."""
    if not values:
        return float("nan")
    ranked = sorted(values)
    rank = math.ceil(len(ranked) * q / 100)  # 1-based
    return ranked[min(len(ranked), max(1, rank)) - 1]


def summary(name: str, results: Sequence[tuple[list[int] | str, float]], metrics: str, wall_s: float) -> str:
    """One line of figures for docs/BENCHMARKS.md: requests, outcomes, the router's
    recoveries (from its /metrics text) and client-side e2e latency of the successes."""
    samples = metric_samples(metrics)
    migrations = samples.get(("pdserve_router_migrations_total", ()), 0)
    retries = sum(v for (n, _), v in samples.items() if n == "pdserve_router_retries_total")
    ok = [lat for r, lat in results if not isinstance(r, str)]
    failed = [r for r, _ in results if isinstance(r, str)]
    return (
        f"SUMMARY {name}: {len(results)} requests, {len(ok)} succeeded, {sum(map(clean, failed))} clean errors, "
        f"{sum(not clean(f) for f in failed)} other failures; {migrations:.0f} migrations, {retries:.0f} retries; "
        f"e2e p50 {percentile(ok, 50):.3f} s, p99 {percentile(ok, 99):.3f} s; wall {wall_s:.1f} s"
    )
