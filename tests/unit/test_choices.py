"""n > 1 on one prefill (router/orchestrator.py, generate_choices): one Prefill RPC and one
KV hand-over whatever n is, each choice seeded seed + i, choices interleaved by index,
usage summed, admission charged for every choice."""

from __future__ import annotations

import json
from typing import Any

import pytest

from router.tokenizer import Tokenizer
from tests.helpers.router import ScriptedDecode, ScriptedPrefill, ScriptedRouter, scripted_router, tiny_tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    return tiny_tokenizer(tmp_path_factory.mktemp("tiny"))


def router(tok: Tokenizer) -> tuple[ScriptedRouter, ScriptedPrefill, ScriptedDecode]:
    prefill = ScriptedPrefill(kv={"remote_block_ids": [[1]]})
    decode = ScriptedDecode(tok.encode("hello world", add_special_tokens=False))
    return scripted_router(tok, [prefill], [decode]), prefill, decode


def post(r: ScriptedRouter, chat: bool, **fields: Any) -> Any:
    body = {"model": "tiny", **({"messages": [{"role": "user", "content": "hi"}]} if chat else {"prompt": "hi"})}
    return r.client.post("/v1/chat/completions" if chat else "/v1/completions", json={**body, **fields})


@pytest.mark.parametrize("chat", [True, False])
def test_n_choices_share_one_prefill_and_one_kv_handover(tok: Tokenizer, chat: bool) -> None:
    r, prefill, decode = router(tok)
    body = post(r, chat, n=3, seed=10, max_tokens=4, temperature=0.7).json()
    assert prefill.calls == 1
    assert [c["kv"] is not None for c in decode.calls] == [True, False, False]  # the others prefill locally
    assert sorted(c["spec"].seed for c in decode.calls) == [10, 11, 12]
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    texts = [c["message"]["content"] if chat else c["text"] for c in body["choices"]]
    assert texts == ["hell"] * 3
    assert body["usage"]["completion_tokens"] == 12 and body["usage"]["prompt_tokens"] == len(decode.calls[0]["prompt"])


def test_streamed_choices_interleave_by_index_each_with_its_role_and_finish(tok: Tokenizer) -> None:
    r, prefill, _ = router(tok)
    resp = post(r, True, n=2, max_tokens=6, stream=True, stream_options={"include_usage": True})
    events = [json.loads(ln[6:]) for ln in resp.text.splitlines() if ln.startswith("data: ") and ln != "data: [DONE]"]
    per: dict[int, list[dict[str, Any]]] = {}
    for e in events[:-1]:
        per.setdefault(e["choices"][0]["index"], []).append(e["choices"][0])
    assert sorted(per) == [0, 1] and prefill.calls == 1
    for choices in per.values():
        assert choices[0]["delta"]["role"] == "assistant" and all("role" not in c["delta"] for c in choices[1:])
        assert "".join(c["delta"]["content"] for c in choices) == "hello "
        assert [c["finish_reason"] for c in choices][-1] == "length"
    assert events[-1]["usage"]["completion_tokens"] == 12


def test_unseeded_choices_stay_unseeded(tok: Tokenizer) -> None:
    r, _, decode = router(tok)
    assert post(r, False, n=2, max_tokens=2).status_code == 200
    assert [c["spec"].seed for c in decode.calls] == [None, None]
