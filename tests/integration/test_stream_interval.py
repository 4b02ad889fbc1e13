"""A decode worker started with vLLM's ``--stream-interval N`` sends a stream's first token at
once, then N tokens a message, and its last with the finish; the router turns each message
into one SSE event, as ``vllm serve --stream-interval N`` does, with the same text.
Fewer messages and events per token is what the flag is for: the router's CPU goes per
message (docs/BENCHMARKS.md §10)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from pdserve.tools import fleet
from pdserve.tools.procs import Procs
from tests.helpers.simfleet import ZERO, start_sim


def _events(url: str, body: dict) -> list[dict]:
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=30) as resp:
        assert resp.status_code == 200, resp.read()
        lines = [line.removeprefix("data: ") for line in resp.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def test_a_stream_interval_batches_tokens_into_fewer_events_with_the_same_text(
    tmp_path: Path, default_model: Path
) -> None:
    body = {
        "prompt": "The stream interval",
        "max_tokens": 9,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }
    with Procs(tmp_path) as procs:
        every, _ = start_sim(procs, "decode", "every", ZERO)
        batched, _ = start_sim(procs, "decode", "batched", ZERO, ["--stream-interval", "4"])
        urls = [fleet.start_router(procs, default_model, [], [w], wait=False).address for w in (every, batched)]
        for url in urls:  # started together, waited for in turn
            procs.wait_http(f"{url}/v1/models", fleet.ROUTER_READY_S, ready=lambda r: bool(r.json()["data"]))
        one, four = (_events(url, body) for url in urls)

    def tokens_so_far(events: list[dict]) -> list[int]:
        return [e["usage"]["completion_tokens"] for e in events if e["choices"]]

    def text(events: list[dict]) -> str:
        return "".join(c["text"] for e in events for c in e["choices"])

    assert tokens_so_far(one) == list(range(1, 10))
    assert tokens_so_far(four) == [1, 5, 9]  # the first at once, then 4 a message; the 9th ends it
    assert text(four) == text(one) and text(one)
    assert [c["finish_reason"] for e in four for c in e["choices"]] == [None, None, "length"]
    assert four[-1]["usage"]["completion_tokens"] == 9  # the usage event after the last token
