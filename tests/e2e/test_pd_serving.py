"""The README's run command on real vLLM CPU engines: router → prefill → NIXL → decode.

One `pdserve up` cluster for the session (tests/conftest.py::cluster).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import grpc
import httpx
import openai
import psutil
import pytest
from grpc_health.v1 import health_pb2

from pdserve.v1 import worker_pb2 as pb
from pdserve.v1 import worker_pb2_grpc as pb_grpc
from tests.e2e.prompts import CASES, MAX_TOKENS
from tests.factories import MetricKey, metric_samples
from tests.helpers.cluster import Cluster
from tests.helpers.workers import GREEDY, engine_load, health

pytestmark = pytest.mark.engine


def _body(cluster: Cluster, case, **extra) -> tuple[str, dict]:  # type: ignore[no-untyped-def]
    base = {"model": cluster.model, "temperature": 0, "max_tokens": MAX_TOKENS, "return_token_ids": True, **extra}
    if case.chat:
        return "/v1/chat/completions", {**base, "messages": [{"role": "user", "content": case.text}]}
    return "/v1/completions", {**base, "prompt": case.text}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_greedy_output_equals_colocated_engine(cluster: Cluster, reference_outputs: dict, case) -> None:  # type: ignore[no-untyped-def]
    before = asyncio.run(engine_load(cluster.decode_addr, "decode")).kv
    path, body = _body(cluster, case)
    resp = httpx.post(cluster.url + path, json=body, timeout=600)
    assert resp.status_code == 200, resp.text
    data = resp.json()
    ref = reference_outputs[case.name]
    # where vLLM's server puts them: top level in chat, on each choice in completions
    prompt_ids = data["prompt_token_ids"] if case.chat else data["choices"][0]["prompt_token_ids"]
    assert prompt_ids == ref["prompt"]
    assert data["choices"][0]["token_ids"] == ref["output"]
    assert data["usage"]["completion_tokens"] == len(ref["output"])
    assert data["usage"]["prompt_tokens"] == len(ref["prompt"])
    # The prompt's KV came over NIXL (not recomputed by the decode engine).
    after = asyncio.run(engine_load(cluster.decode_addr, "decode")).kv
    assert after.transfers == before.transfers + 1 and after.failures == before.failures
    assert after.bytes > before.bytes


def test_prompt_lengths_cover_10_to_1500_tokens(reference_outputs: dict) -> None:
    lengths = sorted(len(v["prompt"]) for v in reference_outputs.values())
    assert 10 <= lengths[0] <= 16 and 1400 <= lengths[-1] <= 1500, lengths


def test_streamed_text_equals_whole_text(cluster: Cluster) -> None:
    body = {
        "model": cluster.model,
        "temperature": 0,
        "max_tokens": 20,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
    }
    whole = httpx.post(cluster.url + "/v1/chat/completions", json=body, timeout=120).json()
    text = []
    with httpx.stream("POST", cluster.url + "/v1/chat/completions", json={**body, "stream": True}, timeout=120) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                text += [c["delta"].get("content", "") for c in chunk["choices"]]
    assert "".join(text) == whole["choices"][0]["message"]["content"]
    assert "Paris" in whole["choices"][0]["message"]["content"]


def test_openai_sdk_sync_chat(cluster: Cluster) -> None:
    client = openai.OpenAI(base_url=cluster.url + "/v1", api_key="unused")
    resp = client.chat.completions.create(
        model=cluster.model, messages=[{"role": "user", "content": "Say hello."}], max_tokens=8, temperature=0
    )
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].message.content
    assert resp.choices[0].finish_reason in ("stop", "length")
    assert resp.usage is not None and resp.usage.completion_tokens <= 8
    assert [m.id for m in client.models.list().data] == [cluster.model]


def test_openai_sdk_async_completion(cluster: Cluster) -> None:
    async def run() -> list[str]:
        client = openai.AsyncOpenAI(base_url=cluster.url + "/v1", api_key="unused")
        resps = await asyncio.gather(
            *(
                client.completions.create(
                    model=cluster.model, prompt=f"{n} plus {n} equals", max_tokens=6, temperature=0
                )
                for n in (1, 2, 3)
            )
        )
        return [r.choices[0].text for r in resps]

    texts = asyncio.run(run())
    assert len(texts) == 3 and all(isinstance(t, str) and t for t in texts)


def test_openai_sdk_streaming_with_usage_reports_prefill_cache_hits(cluster: Cluster) -> None:
    client = openai.OpenAI(base_url=cluster.url + "/v1", api_key="unused")
    system = CASES[3].text  # ~500 tokens: several full KV blocks

    def run() -> tuple[str, Any]:
        stream = client.chat.completions.create(
            model=cluster.model,
            stream=True,
            stream_options={"include_usage": True},
            max_tokens=8,
            temperature=0,
            messages=[{"role": "system", "content": system}, {"role": "user", "content": "Who kept the ferry?"}],
        )
        text, usage = "", None
        for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            if chunk.usage is not None:
                usage = chunk.usage
        return text, usage

    first_text, first = run()
    assert first is not None and first.prompt_tokens > 256
    # A prefill worker that has computed the prompt holds its full blocks, but placement weighs
    # load against overlap and may send the next request to another prefill worker, which
    # rightly reports none cached. Of the first request and one more per prefill worker, two
    # land on the same worker: the later of them must report the hit.
    later = [run() for _ in cluster.prefill_addrs]
    for text, usage in later:
        assert usage is not None and usage.prompt_tokens == first.prompt_tokens
        assert text == first_text and text
    cached = [usage.prompt_tokens_details.cached_tokens for _, usage in later]
    assert max(cached) >= 256, cached


@pytest.mark.parametrize(
    "body,status",
    [
        ({"prompt": "hello " * 3000, "max_tokens": 4}, 400),
        ({"prompt": "hello", "max_tokens": -1}, 400),
        ({"prompt": "hello", "n": 2, "temperature": 0}, 400),
        ({"prompt": "hello", "temperature": "hot"}, 400),
        ({"prompt": "hello", "model": "no-such-model"}, 404),
    ],
)
def test_bad_requests_get_openai_errors_and_workers_keep_serving(cluster: Cluster, body: dict, status: int) -> None:
    resp = httpx.post(cluster.url + "/v1/completions", json={"model": cluster.model, **body}, timeout=60)
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert "Traceback" not in resp.text
    ok = httpx.post(
        cluster.url + "/v1/completions",
        json={"model": cluster.model, "prompt": "One, two,", "max_tokens": 3},
        timeout=120,
    )
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] >= 1


def test_malformed_json_gets_400(cluster: Cluster) -> None:
    resp = httpx.post(
        cluster.url + "/v1/chat/completions",
        content=b'{"model": ',
        timeout=30,
        headers={"content-type": "application/json"},
    )
    assert resp.status_code == 400
    assert resp.json()["error"]["type"] == "invalid_request_error"


def test_sdk_raises_typed_errors(cluster: Cluster) -> None:
    client = openai.OpenAI(base_url=cluster.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="missing", prompt="x", max_tokens=1)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=cluster.model, prompt="word " * 2100, max_tokens=1)


def _idle(cluster: Cluster) -> bool:
    loads = [asyncio.run(engine_load(a, "prefill")) for a in cluster.prefill_addrs]
    loads.append(asyncio.run(engine_load(cluster.decode_addr, "decode")))
    return all(x.num_running == 0 and x.num_waiting == 0 and x.num_inflight == 0 for x in loads)


def test_client_disconnect_mid_stream_aborts_on_both_workers(cluster: Cluster) -> None:
    body = {
        "model": cluster.model,
        "prompt": "Count forever:",
        "max_tokens": 1500,
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
    }
    with httpx.stream("POST", cluster.url + "/v1/completions", json=body, timeout=120) as r:
        # Hold the line iterator: leaving a `for` over it would close it, and httpcore closes
        # the connection with it — the disconnect would race the load check below.
        lines = r.iter_lines()
        events: list[str] = []
        while len(events) < 3:
            line = next(lines)
            if line.startswith("data: "):
                events.append(line)
        # the decode engine is busy with this request right now
        busy = asyncio.run(engine_load(cluster.decode_addr, "decode"))
        assert busy.num_running + busy.num_inflight >= 1, events  # (an error event would show here)
    # leaving the block closed the connection mid-stream
    deadline = time.monotonic() + 30
    while not _idle(cluster):
        assert time.monotonic() < deadline, "a request is still running after the client left"
        time.sleep(0.5)


def test_engine_threads_keep_every_core(cluster: Cluster) -> None:
    """NIXL pins the engine thread to one core; the workers give all cores back."""
    allowed = os.sched_getaffinity(0)
    engines = [
        p
        for p in psutil.Process(cluster.proc.pid).children(recursive=True)
        if "EngineCore" in " ".join(p.cmdline()) or p.name().startswith("VLLM")
    ]
    assert len(engines) >= 2, [p.name() for p in psutil.Process(cluster.proc.pid).children(recursive=True)]
    for proc in engines:
        for thread in proc.threads():
            assert os.sched_getaffinity(thread.id) == allowed, (proc.name(), thread.id)


def _scrape(url: str) -> dict[MetricKey, float]:
    return metric_samples(httpx.get(url, timeout=10).text)


def test_metrics_of_router_and_both_workers_parse_and_move(cluster: Cluster) -> None:
    before = _scrape(cluster.worker_metrics[1])
    body = {"model": cluster.model, "prompt": CASES[2].text, "max_tokens": 4, "temperature": 0}
    assert httpx.post(cluster.url + "/v1/completions", json=body, timeout=120).status_code == 200
    labels = (("model_name", cluster.model), ("role", "decode"))
    transfers = ("pdserve_worker_kv_transfers_total", labels)
    # The engine reports a pull with its step stats and the worker refreshes its snapshot
    # once a second, so the count may land after the response: wait for it (a backstop).
    deadline = time.monotonic() + 60
    while (decode := _scrape(cluster.worker_metrics[1])).get(transfers, 0) <= before.get(transfers, 0):
        assert time.monotonic() < deadline, f"the decode worker never counted the KV pull: {decode.get(transfers)}"
        time.sleep(0.5)
    prefill, router = _scrape(cluster.worker_metrics[0]), _scrape(cluster.url + "/metrics")
    assert decode[("pdserve_worker_kv_transfer_bytes_total", labels)] > 0
    assert ("vllm:num_requests_running", (("model_name", cluster.model), ("role", "prefill"))) in prefill
    assert prefill[("vllm:prefix_cache_queries_total", (("model_name", cluster.model), ("role", "prefill")))] > 0
    assert router[("pdserve_router_disagg_decisions_total", (("decision", "remote"), ("reason", "remote")))] >= 1
    assert router[("pdserve_router_time_to_first_token_seconds_count", ())] >= 1


def test_prefill_worker_reports_info_health_and_rejects_long_prompts(cluster: Cluster) -> None:
    async def run() -> tuple[pb.WorkerInfo, int, grpc.StatusCode]:
        async with grpc.aio.insecure_channel(cluster.prefill_addr) as ch:
            stub = pb_grpc.PrefillWorkerStub(ch)
            info = await stub.Info(pb.InfoRequest(), timeout=5)
            try:
                await stub.Prefill(
                    pb.PrefillRequest(request_id="x", prompt_token_ids=[1] * 3000, sampling=GREEDY), timeout=30
                )
                code = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
        return info, await health(cluster.prefill_addr), code

    info, status, code = asyncio.run(run())
    assert info.role == "prefill" and info.model == cluster.model and info.block_size == 128
    assert info.vllm_version.startswith("0.") and info.kv_capacity_tokens > 0 and info.max_model_len == 2048
    assert status == health_pb2.HealthCheckResponse.SERVING
    assert code is grpc.StatusCode.INVALID_ARGUMENT
