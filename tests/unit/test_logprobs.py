"""Logprobs through the router: asked for as vLLM's server takes them, carried per token
from the decode stream, rendered in vLLM's shapes (chat and completions, whole and
streamed), and trimmed with the text a stop string trims."""

from __future__ import annotations

import json
from typing import Any

import pytest

from router.tokenizer import Tokenizer
from tests.helpers.router import ScriptedDecode, ScriptedPrefill, ScriptedRouter, scripted_router, tiny_tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    return tiny_tokenizer(tmp_path_factory.mktemp("tiny"))


def router(tok: Tokenizer, output: str = "hello world") -> tuple[ScriptedRouter, ScriptedDecode]:
    decode = ScriptedDecode(tok.encode(output, add_special_tokens=False))
    return scripted_router(tok, [ScriptedPrefill(kv={"remote_block_ids": [[1]]})], [decode]), decode


def post(r: ScriptedRouter, chat: bool, **fields: Any) -> Any:
    body = {"model": "tiny", **({"messages": [{"role": "user", "content": "hi"}]} if chat else {"prompt": "hi"})}
    return r.client.post("/v1/chat/completions" if chat else "/v1/completions", json={**body, **fields})


def events(resp: Any) -> list[dict[str, Any]]:
    lines = [ln[len("data: ") :] for ln in resp.text.splitlines() if ln.startswith("data: ")]
    return [json.loads(ln) for ln in lines if ln != "[DONE]"]


def test_chat_logprobs_name_each_token_with_its_top_ones(tok: Tokenizer) -> None:
    r, decode = router(tok)
    body = post(r, True, logprobs=True, top_logprobs=2, max_tokens=4).json()
    assert decode.calls[0]["spec"].logprobs == 2
    ids = tok.encode("hello world", add_special_tokens=False)[:4]
    content = body["choices"][0]["logprobs"]["content"]
    assert [c["token"] for c in content] == tok.token_texts(ids)
    assert [c["logprob"] for c in content] == pytest.approx([-t / 100 for t in ids])
    assert all(c["bytes"] == list(c["token"].encode()) for c in content)
    assert [len(c["top_logprobs"]) for c in content] == [2] * 4
    assert [c["top_logprobs"][0]["token"] for c in content] == [c["token"] for c in content]


def test_chat_logprobs_without_top_ones_and_none_when_not_asked(tok: Tokenizer) -> None:
    r, decode = router(tok)
    body = post(r, True, logprobs=True, max_tokens=2).json()
    assert decode.calls[0]["spec"].logprobs == 0
    assert [c["top_logprobs"] for c in body["choices"][0]["logprobs"]["content"]] == [[], []]
    plain = post(r, True, max_tokens=2).json()
    assert plain["choices"][0]["logprobs"] is None and decode.calls[1]["spec"].logprobs is None


def test_completion_logprobs_zero_still_gives_the_sampled_tokens(tok: Tokenizer) -> None:
    r, _ = router(tok)
    lp = post(r, False, logprobs=0, max_tokens=3).json()["choices"][0]["logprobs"]
    ids = tok.encode("hello world", add_special_tokens=False)[:3]
    names = tok.token_texts(ids)
    assert lp["tokens"] == names and lp["token_logprobs"] == pytest.approx([-t / 100 for t in ids])
    assert lp["top_logprobs"] == [{n: pytest.approx(-t / 100)} for n, t in zip(names, ids, strict=True)]
    assert lp["text_offset"] == [0, len(names[0]), len(names[0]) + len(names[1])]


def test_streamed_logprobs_match_the_whole_response(tok: Tokenizer) -> None:
    r, _ = router(tok)
    whole = post(r, False, logprobs=2, max_tokens=6).json()["choices"][0]["logprobs"]
    chunks = events(post(r, False, logprobs=2, max_tokens=6, stream=True))
    joined: dict[str, list[Any]] = {"text_offset": [], "token_logprobs": [], "tokens": [], "top_logprobs": []}
    for c in chunks:
        for key in joined:
            joined[key] += c["choices"][0]["logprobs"][key]
    assert joined == whole


def test_a_stop_string_trims_the_logprobs_with_the_text(tok: Tokenizer) -> None:
    r, _ = router(tok)
    choice = post(r, False, logprobs=1, stop=["wor"], return_token_ids=True).json()["choices"][0]
    assert choice["text"] == "hello "
    assert len(choice["logprobs"]["tokens"]) == len(choice["token_ids"])  # up to the token that hit the stop
    assert len(choice["token_ids"]) < len(tok.encode("hello world", add_special_tokens=False))


def test_tokens_as_token_ids(tok: Tokenizer) -> None:
    r, _ = router(tok)
    content = post(r, True, logprobs=True, max_tokens=2, return_tokens_as_token_ids=True).json()
    ids = tok.encode("hello world", add_special_tokens=False)[:2]
    assert [c["token"] for c in content["choices"][0]["logprobs"]["content"]] == [f"token_id:{t}" for t in ids]


@pytest.mark.parametrize(
    ("chat", "fields", "param"),
    [
        (True, {"logprobs": True, "top_logprobs": 21}, "logprobs"),  # vLLM's engine names logprobs
        (True, {"top_logprobs": 2}, "top_logprobs"),  # without logprobs
        (True, {"logprobs": True, "top_logprobs": -2}, "top_logprobs"),
        (True, {"logprobs": True, "top_logprobs": -1}, "logprobs"),  # the whole vocabulary: past 20
        (False, {"logprobs": 21}, "logprobs"),
        (False, {"logprobs": -3}, "logprobs"),
    ],
)
def test_logprobs_vllm_refuses_are_400s(tok: Tokenizer, chat: bool, fields: dict[str, Any], param: str) -> None:
    r, decode = router(tok)
    resp = post(r, chat, **fields)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == param, resp.text
    assert decode.calls == []
