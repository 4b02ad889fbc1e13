"""One streamed request, timed: TTFT, inter-token latencies, end-to-end."""

from __future__ import annotations

import json
import random
import statistics
import time
from dataclasses import dataclass, field

import httpx


@dataclass
class Timing:
    prompt_tokens: int
    ttft_s: float = 0.0
    e2e_s: float = 0.0
    itl_s: list[float] = field(default_factory=list)
    completion_tokens: int = 0
    cached_tokens: int = 0  # usage.prompt_tokens_details.cached_tokens, when the server reports it
    error: str = ""
    start_s: float = 0.0  # send time, from the start of the run
    text: str = ""  # the completion's text, streamed pieces joined


def random_prompt(rng: random.Random, n_tokens: int, vocab: int, low: int = 100) -> list[int]:
    """Token ids that share no prefix with other prompts (no prefix-cache hits)."""
    return [rng.randrange(low, vocab) for _ in range(n_tokens)]


async def timed_completion(
    client: httpx.AsyncClient, url: str, model: str, prompt: list[int] | str, max_tokens: int
) -> Timing:
    """Stream one completion (greedy, ``ignore_eos``); HTTP and stream errors land in ``error``."""
    try:
        return await _timed(client, url, model, prompt, max_tokens)
    except httpx.HTTPError as exc:
        return Timing(prompt_tokens=0, error=f"{type(exc).__name__}: {exc}")


async def _timed(client: httpx.AsyncClient, url: str, model: str, prompt: list[int] | str, max_tokens: int) -> Timing:
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    timing = Timing(prompt_tokens=len(prompt) if isinstance(prompt, list) else 0)
    start = last = time.perf_counter()
    async with client.stream("POST", f"{url}/v1/completions", json=body) as resp:
        if resp.status_code != 200:
            timing.error = f"HTTP {resp.status_code}"
            return timing
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            now = time.perf_counter()
            if event.get("error"):
                timing.error = event["error"]["message"]
            elif event.get("choices"):
                timing.text += "".join(c.get("text") or "" for c in event["choices"])
                if timing.ttft_s == 0.0:
                    timing.ttft_s = now - start
                else:
                    timing.itl_s.append(now - last)
                last = now
            if event.get("usage"):
                usage = event["usage"]
                timing.completion_tokens = usage["completion_tokens"]
                timing.prompt_tokens = usage.get("prompt_tokens") or timing.prompt_tokens
                timing.cached_tokens = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    timing.e2e_s = time.perf_counter() - start
    return timing


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]
