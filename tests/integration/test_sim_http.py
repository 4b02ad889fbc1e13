"""``pdserve sim-http`` as a process: the OpenAI surface peer routers use, its prefix
cache as the bench sees it, and KV events in vLLM's format. (A benchmark tool: the
sim engine's tokens are made up; nothing here claims to test model serving.)"""

from __future__ import annotations

import asyncio
import random
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pdserve.kv.events import BlockStored, EventBatch, EventSubscriber
from pdserve.tools.bench import workloads
from pdserve.tools.bench.report import Slo, summarize
from pdserve.tools.bench.run import drive
from pdserve.tools.procs import Procs
from tests.helpers.net import free_port

BLOCK = 32


@pytest.fixture(scope="module")
def sim_http(tmp_path_factory: pytest.TempPathFactory, default_model: Path) -> Iterator[tuple[str, int]]:
    port, events = free_port(), free_port(2)
    argv = [sys.executable, "-m", "pdserve", "sim-http", "--port", str(port), "--kv-events-port", str(events)]
    argv += ["--model", str(default_model), "--served-model-name", "sim", "--block-size", str(BLOCK)]
    argv += ["--engine-arg", "profile=zero"]
    with Procs(tmp_path_factory.mktemp("sim-http")) as procs:
        procs.start("sim-http", argv)
        procs.wait_http(f"http://127.0.0.1:{port}/health", timeout_s=300)
        yield f"http://127.0.0.1:{port}", events


def test_completions_chat_and_tokenize_agree_on_token_ids(sim_http: tuple[str, int]) -> None:
    url, _ = sim_http
    prompt = "The quick brown fox jumps over the lazy dog"
    ids = httpx.post(f"{url}/tokenize", json={"model": "sim", "prompt": prompt}, timeout=30).json()
    done = httpx.post(f"{url}/v1/completions", json={"model": "sim", "prompt": prompt, "max_tokens": 5}, timeout=30)
    assert done.status_code == 200
    body = done.json()
    assert body["usage"]["prompt_tokens"] == ids["count"] == len(ids["tokens"])
    assert body["usage"]["completion_tokens"] == 5 and body["choices"][0]["finish_reason"] == "length"
    chat = {"model": "sim", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 3}
    reply = httpx.post(f"{url}/v1/chat/completions", json=chat, timeout=30).json()
    assert reply["object"] == "chat.completion" and reply["usage"]["completion_tokens"] == 3
    assert httpx.post(f"{url}/tokenize", json=chat, timeout=30).json()["count"] == reply["usage"]["prompt_tokens"]


def test_bad_requests_are_openai_shaped_400s(sim_http: tuple[str, int]) -> None:
    url, _ = sim_http
    for body in (b"not json", b"[1, 2]", b'{"prompt": 5}', b'{"prompt": "x", "max_tokens": -1}'):
        resp = httpx.post(f"{url}/v1/completions", content=body, timeout=30)
        assert resp.status_code == 400, body
        assert set(resp.json()["error"]) >= {"message", "type", "code"}
    too_long = {"prompt": list(range(100, 100 + 9000)), "max_tokens": 1}
    assert httpx.post(f"{url}/v1/completions", json=too_long, timeout=30).status_code == 400


def test_the_bench_sees_prefix_reuse_within_a_group(sim_http: tuple[str, int]) -> None:
    url, _ = sim_http
    before = _requests_counted(url)
    items = workloads.shared_prefix(
        random.Random(5), groups=2, per_group=4, prefix_tokens=300, question_tokens=8, max_tokens=4
    )
    timings, wall = asyncio.run(drive(url, "sim", items, rate=0.0, concurrency=1, progress=False))
    s = summarize(timings, wall, Slo(1.0, 1.0))
    assert s["errors"] == 0 and s["requests"] == 8
    firsts: set[str] = set()
    for item, t in zip(items, timings, strict=True):
        if item.group in firsts:  # later prompts of a group find its system prompt's full blocks
            assert t.cached_tokens >= 256, (item.group, t)
        firsts.add(item.group)
    assert s["cached_ratio"] > 0.5
    assert _requests_counted(url) - before == 8  # what the pressure bench reads per worker


def _requests_counted(url: str) -> float:
    lines = httpx.get(f"{url}/metrics", timeout=10).text.splitlines()
    return float(next(line for line in lines if line.startswith("pdserve_sim_requests_total")).split()[-1])


def _contains(blocks: list[tuple[int, ...]], ids: list[int]) -> bool:
    full = tuple(ids[: len(ids) // BLOCK * BLOCK])
    stored = [t for b in blocks for t in b]
    return any(tuple(stored[i : i + len(full)]) == full for i in range(0, len(stored) - len(full) + 1, BLOCK))


def test_kv_events_carry_the_prompts_token_ids(sim_http: tuple[str, int]) -> None:
    url, events = sim_http
    prompt = " ".join(random.Random(9).choice(["alpha", "beta", "gamma", "delta"]) for _ in range(80))
    ids = httpx.post(f"{url}/tokenize", json={"prompt": prompt}, timeout=30).json()["tokens"]

    async def stored_blocks() -> list[tuple[int, ...]]:
        sub = EventSubscriber(f"tcp://127.0.0.1:{events}", f"tcp://127.0.0.1:{events + 1}")
        seen: list[tuple[int, ...]] = []
        stream = sub.__aiter__()
        try:
            await asyncio.wait_for(anext(stream), 10)  # the replay of what came before
            await asyncio.to_thread(
                httpx.post, f"{url}/v1/completions", json={"prompt": prompt, "max_tokens": 2}, timeout=30
            )
            while not _contains(seen, ids):
                item = await asyncio.wait_for(anext(stream), 10)
                # a Gap (a batch lost while the SUB socket was joining) replays the whole history
                batches = [item] if isinstance(item, EventBatch) else list(item.replayed)
                seen = seen if isinstance(item, EventBatch) else []
                seen += [e.token_ids for b in batches for e in b.events if isinstance(e, BlockStored)]
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
            sub.close()
        return seen

    # the prompt's full blocks were stored, in order, as one run of the published token ids
    assert len(ids) >= 2 * BLOCK and _contains(asyncio.run(stored_blocks()), ids)
