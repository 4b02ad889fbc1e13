"""A decode worker SIGKILLed mid-stream, on real vLLM CPU engines: the router migrates
the stream (prompt + the tokens already streamed, replayed on the other decode worker)
and the client gets exactly the text of an uninterrupted greedy run.

Two decode workers (default model) and the router over both; no prefill worker, so each
decode worker prefills locally — the replay after the migration is such a prefill.

Exact equality needs float32 engines. A replayed prefill of prompt + k tokens computes
the next token's logits by another path than incremental decoding did; in float32 it
gave the uninterrupted run's greedy tokens for every k in 1..39 (prompts of 11, 143 and
913 tokens, vLLM 0.32 CPU); in bfloat16 near-tied picks flipped for 6 of those 39 k
(143-token prompt), among them k = 8.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import openai
import pytest

from pdserve.tools.procs import Procs, python
from pdserve.v1 import worker_pb2 as pb
from pdserve.v1 import worker_pb2_grpc as pb_grpc
from tests.e2e.prompts import CASES
from tests.factories import metric_samples
from tests.helpers.cluster import engine_env
from tests.helpers.net import free_port

pytestmark = pytest.mark.engine

PROMPT = CASES[2].text  # ~150 tokens: the replayed prompt spans a full KV block and a partial one
MAX_TOKENS = 40
# Streamed tokens before the worker holding the stream is killed: the first, right after the
# Load poll that finds the holder. With 8, a fresh-clone run under a CPU hog read token 8
# after the engine had produced all 40: the stream finished unmigrated (2026-12-06).
KILL_AFTER = 1
MIGRATIONS = ("pdserve_router_migrations_total", ())


@dataclass(frozen=True)
class DecodeFleet:
    url: str
    decode: dict[str, subprocess.Popen[bytes]]  # address → worker process (its own process group)


@dataclass(frozen=True)
class Run:
    text: str
    token_ids: list[int]
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, default_model: Path) -> Iterator[DecodeFleet]:
    with Procs(tmp_path_factory.mktemp("migration"), env=engine_env()) as procs:
        decode = {}
        for i in range(2):
            port = free_port()
            argv = python("decode_worker", "--model", str(default_model), "--port", str(port))
            argv += ["--kv-port", str(free_port()), "--kv-events-port", "0", "--metrics-port", "0"]
            argv += ["--dtype", "float32"]  # see the module docstring
            decode[f"127.0.0.1:{port}"] = procs.start(f"decode{i}", argv)
        port = free_port()
        argv = python("router", "--port", str(port), "--model", str(default_model), "--decode", ",".join(decode))
        procs.start("router", argv)
        url = f"http://127.0.0.1:{port}"
        # The router serves once every listed worker answered Info.
        procs.wait_http(f"{url}/v1/models", timeout_s=300, ready=lambda r: bool(r.json()["data"]))
        yield DecodeFleet(url, decode)


def _stream(url: str, on_tokens: Callable[[int], None] = lambda n: None) -> Run:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
    model = client.models.list().data[0].id
    chunks = client.completions.create(
        model=model,
        prompt=PROMPT,
        max_tokens=MAX_TOKENS,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True, "return_token_ids": True},  # a stream long enough to cut
    )
    text: list[str] = []
    ids: list[int] = []
    finish, usage = None, None
    for chunk in chunks:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            text.append(choice.text)
            ids += (choice.model_extra or {}).get("token_ids") or []
            finish = choice.finish_reason or finish
        on_tokens(len(ids))
    assert usage is not None, "no usage chunk"
    return Run("".join(text), ids, finish, usage.prompt_tokens, usage.completion_tokens)


async def _inflight(addr: str) -> int:
    async with grpc.aio.insecure_channel(addr) as ch:
        return int((await pb_grpc.DecodeWorkerStub(ch).Load(pb.LoadRequest(), timeout=30)).num_inflight)


def _migrations(url: str) -> float:
    return metric_samples(httpx.get(f"{url}/metrics", timeout=10).text).get(MIGRATIONS, 0.0)


def test_decode_worker_killed_mid_stream_is_migrated_with_identical_greedy_text(fleet: DecodeFleet) -> None:
    reference = _stream(fleet.url)
    assert reference.finish_reason == "length" and reference.completion_tokens == MAX_TOKENS == len(reference.token_ids)
    before = _migrations(fleet.url)
    holder: list[str] = []
    killed: list[str] = []

    def kill_holder(streamed: int) -> None:
        # Which worker holds the stream is read at its first token, while the engine surely
        # still runs it, and it is killed at once: a busy machine's client can lag the engine
        # by many tokens, and a worker that has produced all 40 has nothing left to migrate.
        if streamed and not holder:
            inflight = {addr: asyncio.run(_inflight(addr)) for addr in fleet.decode}
            holder.extend(addr for addr, n in inflight.items() if n)
            assert len(holder) == 1, inflight
        if killed or streamed < KILL_AFTER:
            return
        os.killpg(fleet.decode[holder[0]].pid, signal.SIGKILL)  # the worker and its engine core
        killed.append(holder[0])

    migrated = _stream(fleet.url, kill_holder)

    assert killed, "the stream ended before the kill"
    assert fleet.decode[killed[0]].wait(10) == -signal.SIGKILL
    assert migrated.text == reference.text
    assert migrated.token_ids == reference.token_ids
    assert migrated.finish_reason == "length"
    assert (migrated.prompt_tokens, migrated.completion_tokens) == (reference.prompt_tokens, MAX_TOKENS)
    assert _migrations(fleet.url) == before + 1
