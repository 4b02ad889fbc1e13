"""The router's HTTP surface with a tiny local tokenizer and scripted workers (no engines)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from pdserve.engine.base import EngineLoad
from pdserve.kv.path import KvPathState
from router.admission import AdmissionLimits
from router.config import MAX_BODY_BYTES
from router.tokenizer import TokenIdsOnly, Tokenizer
from tests.factories import metric_samples
from tests.helpers.router import ScriptedDecode, ScriptedPrefill, scripted_router
from tests.helpers.router import tiny_tokenizer as make_tokenizer


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    return make_tokenizer(tmp_path_factory.mktemp("tiny"))


def make_client(
    tok: Tokenizer,
    output_text: str,
    *,
    with_decode: bool = True,
    with_prefill: bool = True,
    limits: AdmissionLimits | None = None,
    api_keys: tuple[str, ...] = (),
    max_body_bytes: int = MAX_BODY_BYTES,
) -> tuple[TestClient, ScriptedDecode]:
    """One prefill worker (128 cached tokens, ``remote_block_ids`` [[1]]) and one decode
    worker that streams ``output_text``; either can be left out."""
    decode = ScriptedDecode(tok.encode(output_text) if output_text else [])
    prefill = ScriptedPrefill(kv={"remote_block_ids": [[1]]})
    router = scripted_router(
        tok,
        [prefill] if with_prefill else [],
        [decode] if with_decode else [],
        limits=limits,
        api_keys=api_keys,
        max_body_bytes=max_body_bytes,
    )
    return router.client, decode


def test_completion_runs_prefill_then_decode_with_its_kv_params(tiny_tokenizer: Tokenizer) -> None:
    client, decode = make_client(tiny_tokenizer, "Hello world")
    resp = client.post("/v1/completions", json={"model": "tiny", "prompt": "Hi", "max_tokens": 50})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["choices"][0]["text"] == "Hello world"
    assert body["usage"]["prompt_tokens_details"]["cached_tokens"] == 128  # the prefill side's count
    assert decode.calls[0]["kv"]["remote_block_ids"] == [[1]]
    assert decode.calls[0]["prompt"] == tiny_tokenizer.encode("Hi")
    assert tiny_tokenizer.eos_token_ids[0] in decode.calls[0]["spec"].stop_token_ids


def test_local_prefill_reports_the_decode_workers_cached_tokens(tiny_tokenizer: Tokenizer) -> None:
    client, decode = make_client(tiny_tokenizer, "Hello world", with_prefill=False)
    resp = client.post("/v1/completions", json={"model": "tiny", "prompt": "Hi", "max_tokens": 50})
    assert resp.status_code == 200, resp.text
    assert decode.calls[0]["kv"] is None  # prefilled on the decode worker itself
    assert resp.json()["usage"]["prompt_tokens_details"]["cached_tokens"] == 32


def test_stop_string_ends_stream_and_closes_decode(tiny_tokenizer: Tokenizer) -> None:
    client, decode = make_client(tiny_tokenizer, "one two three four five")
    resp = client.post("/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 50, "stop": [" thr"]})
    assert resp.json()["choices"][0]["text"] == "one two"
    assert resp.json()["choices"][0]["finish_reason"] == "stop"
    assert decode.closed_early


def test_streaming_chat_with_usage(tiny_tokenizer: Tokenizer) -> None:
    client, _ = make_client(tiny_tokenizer, "abcdef")
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    lines = [ln for ln in client.post("/v1/chat/completions", json=body).text.splitlines() if ln]
    assert lines[-1] == "data: [DONE]"
    assert '"role":"assistant"' in lines[0]
    assert '"completion_tokens":7' in lines[-2] and '"choices":[]' in lines[-2]  # 6 and the EOS


def test_max_tokens_past_what_the_prompt_leaves_is_reduced_like_vllm(tiny_tokenizer: Tokenizer) -> None:
    """vLLM 0.32: reduced to what the context leaves, unless it is past the context
    itself (a 400 naming max_tokens, tests/unit/test_request_fields.py)."""
    client, decode = make_client(tiny_tokenizer, "ab")
    prompt = "x" * 200
    client.post("/v1/completions", json={"model": "tiny", "prompt": prompt, "max_tokens": 250})
    assert decode.calls[0]["spec"].max_tokens == 256 - len(tiny_tokenizer.encode(prompt))


@pytest.mark.parametrize(
    "body,status,param",
    [
        ({"model": "tiny", "prompt": "x" * 300}, 400, "prompt"),
        ({"model": "tiny", "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
        ({"model": "tiny", "prompt": "x", "n": 3, "temperature": 0}, 400, "n"),
        ({"model": "tiny", "prompt": "x", "temperature": 3}, 400, "temperature"),
        ({"model": "tiny", "prompt": "x", "top_p": 0}, 400, "top_p"),
        ({"model": "tiny", "prompt": "x", "logprobs": 25}, 400, "logprobs"),  # past max_logprobs
        ({"model": "tiny", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        ({"model": "tiny", "prompt": [1, 2, 999999]}, 400, "prompt"),
        ({"model": "tiny"}, 400, "prompt"),
        ({"model": "other", "prompt": "x"}, 404, "model"),
    ],
)
def test_invalid_requests_get_openai_errors(tiny_tokenizer: Tokenizer, body: dict, status: int, param: str) -> None:
    client, decode = make_client(tiny_tokenizer, "ab")
    resp = client.post("/v1/completions", json=body)
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error" and err["message"]
    assert decode.calls == []


def test_a_model_without_a_tokenizer_refuses_text_with_a_400_naming_the_prompt() -> None:
    decode = ScriptedDecode([5, 6])
    router = scripted_router(TokenIdsOnly(vocab_size=1000), [ScriptedPrefill()], [decode])
    text = router.client.post("/v1/completions", json={"model": "tiny", "prompt": "x"})
    assert text.status_code == 400, text.text
    err = text.json()["error"]
    assert err["param"] == "prompt" and "token ids" in err["message"]
    ids = router.client.post("/v1/completions", json={"model": "tiny", "prompt": [1, 2, 3]})
    assert ids.status_code == 200, ids.text
    assert len(decode.calls) == 1


def test_non_object_and_non_json_bodies(tiny_tokenizer: Tokenizer) -> None:
    client, _ = make_client(tiny_tokenizer, "ab")
    for raw in (b"[1,2]", b"nope", b""):
        resp = client.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
        assert resp.status_code == 400 and "error" in resp.json()


def test_no_decode_worker_is_a_503(tiny_tokenizer: Tokenizer) -> None:
    client, _ = make_client(tiny_tokenizer, "ab", with_decode=False)
    for stream in (False, True):
        resp = client.post("/v1/completions", json={"model": "tiny", "prompt": "x", "stream": stream})
        assert resp.status_code == 503 and resp.json()["error"]["code"] == "no_workers"


def test_models_lists_the_pool(tiny_tokenizer: Tokenizer) -> None:
    client, _ = make_client(tiny_tokenizer, "ab")
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["tiny"]
    assert client.get("/health").json() == {"status": "ok"}


def test_tokenizer_decodes_incrementally_like_whole(tiny_tokenizer: Tokenizer, tmp_path: Path) -> None:
    text = "naïve café — 日本語 ok"
    ids = tiny_tokenizer.encode(text)
    decoder = tiny_tokenizer.stream_decoder([])
    assert "".join(decoder.step(t) for t in ids) == tiny_tokenizer.decode(ids) == text


def test_metrics_count_requests_tokens_latencies_and_placements(tiny_tokenizer: Tokenizer) -> None:
    client, _ = make_client(tiny_tokenizer, "abcdef")
    for stream in (False, True):
        assert (
            client.post("/v1/completions", json={"model": "tiny", "prompt": "hey", "stream": stream}).status_code == 200
        )
    assert client.post("/v1/completions", json={"model": "nope", "prompt": "x"}).status_code == 404
    assert client.post("/v1/completions", json={"model": "tiny", "prompt": "x", "n": 0}).status_code == 400
    m = metric_samples(client.get("/metrics").text)
    assert m[("pdserve_router_requests_total", (("route", "/v1/completions"), ("status", "200")))] == 2
    assert m[("pdserve_router_requests_total", (("route", "/v1/completions"), ("status", "404")))] == 1
    assert m[("pdserve_router_rejections_total", (("reason", "model_not_found"),))] == 1
    assert m[("pdserve_router_generation_tokens_total", ())] == 14  # 2 x (6 + EOS)
    assert m[("pdserve_router_prompt_tokens_total", ())] == 2 * len(tiny_tokenizer.encode("hey"))
    assert m[("pdserve_router_cached_tokens_total", ())] == 2 * 128
    assert m[("pdserve_router_time_to_first_token_seconds_count", ())] == 2
    assert m[("pdserve_router_e2e_request_latency_seconds_count", ())] == 2
    assert m[("pdserve_router_inter_token_latency_seconds_count", ())] == 2 * 5  # 7 tokens, 2 per step, first excluded
    assert m[("pdserve_router_disagg_decisions_total", (("decision", "remote"), ("reason", "remote")))] == 2
    placed = (("policy", "round-robin"), ("role", "prefill"), ("worker", "prefill:1"))
    assert m[("pdserve_router_placement_decisions_total", placed)] == 2
    assert m[("pdserve_router_inflight_requests", ())] == 0


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"min_tokens": 10, "max_tokens": 5}, "min_tokens"),
        ({"stop_token_ids": [10**6]}, "stop_token_ids"),
        ({"seed": 2**63}, "seed"),
        ({"top_k": 2**31}, "top_k"),
        ({"prompt": "\ud800"}, "prompt"),
        ({"stop": ["\udfff"]}, "stop"),
    ],
)
def test_values_the_workers_cannot_take_are_400s(tiny_tokenizer: Tokenizer, extra: dict, param: str) -> None:
    client, decode = make_client(tiny_tokenizer, "ab")
    body = json.dumps({"model": "tiny", "prompt": "Hi", **extra})  # ASCII: lone surrogates escaped
    resp = client.post("/v1/completions", content=body, headers={"Content-Type": "application/json"})
    assert resp.status_code == 400, resp.text
    assert (resp.json()["error"]["param"] or "").startswith(param)
    assert not decode.calls


def test_health_names_a_decode_worker_whose_kv_path_is_slow(tiny_tokenizer: Tokenizer) -> None:
    router = scripted_router(tiny_tokenizer, [ScriptedPrefill()], [ScriptedDecode([])])
    decode = router.pool.live("decode")[0]
    slow = KvPathState("nixl/UCX/cuda", floor_bps=5e9, bandwidth_bps=0.41e9, slow=True)
    router.pool.record_load(decode, EngineLoad(kv_path=slow))
    body = router.client.get("/health")
    assert body.status_code == 200  # requests are served, slowly
    assert body.json() == {
        "status": "degraded",
        "kv_path_slow": {decode: "nixl/UCX/cuda at 0.41 GB/s, floor 5 GB/s"},
    }
    router.pool.record_load(decode, EngineLoad(kv_path=KvPathState("nixl/UCX/cuda", 5e9, 30e9, slow=False)))
    assert router.client.get("/health").json() == {"status": "ok"}
