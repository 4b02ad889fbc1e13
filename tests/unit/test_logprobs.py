"""Logprobs through the router: asked for as vLLM's server takes them, carried per token
from the decode stream, rendered in vLLM's shapes (chat and completions, whole and
streamed), and trimmed with the text a stop string trims."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pdserve.engine.base import EngineInfo
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


# Prompt logprobs and echo. The scripted prefill scores prompt position p with its token
# first (logprob -token/100, rank 1) and k others (tests/helpers/router.py).


def prompt_ids(tok: Tokenizer, chat: bool) -> list[int]:
    return tok.encode_chat([{"role": "user", "content": "hi"}]) if chat else tok.encode("hi")


@pytest.mark.parametrize("chat", [True, False])
def test_prompt_logprobs_come_from_the_prefill_in_vllms_shape(tok: Tokenizer, chat: bool) -> None:
    prefill, decode = (
        ScriptedPrefill(kv={"remote_block_ids": [[1]]}),
        ScriptedDecode(tok.encode("hello world", add_special_tokens=False)),
    )
    r = scripted_router(tok, [prefill], [decode])
    body = post(r, chat, prompt_logprobs=2, max_tokens=2).json()
    plps = body["prompt_logprobs"] if chat else body["choices"][0]["prompt_logprobs"]
    ids = prompt_ids(tok, chat)
    assert len(ids) > 1 and plps[0] is None and len(plps) == len(ids)
    for pos, token in enumerate(ids[1:], start=1):
        entries = plps[pos]
        assert list(entries) == [str(token), str(token + 1), str(token + 2)]  # the prompt's token first
        name = tok.token_texts([token])[0]
        assert entries[str(token)] == {"logprob": pytest.approx(-token / 100), "rank": 1, "decoded_token": name}
    assert prefill.specs[-1].prompt_logprobs == 2
    assert decode.calls[-1]["kv"] is not None  # the decode pulled the KV: the prefill scored the prompt
    plain = post(r, chat, max_tokens=2).json()
    assert (plain["prompt_logprobs"] if chat else plain["choices"][0]["prompt_logprobs"]) is None


def test_a_local_prefill_scores_the_prompt_on_the_decode_worker(tok: Tokenizer) -> None:
    decode = ScriptedDecode(tok.encode("hello world", add_special_tokens=False))
    r = scripted_router(tok, [], [decode])  # no prefill worker: the decode worker prefills
    plps = post(r, False, prompt_logprobs=0, max_tokens=2).json()["choices"][0]["prompt_logprobs"]
    ids = prompt_ids(tok, False)
    assert decode.calls[-1]["kv"] is None and decode.calls[-1]["spec"].prompt_logprobs == 0
    assert [list(p) for p in plps[1:]] == [[str(t)] for t in ids[1:]]


def test_a_migrated_request_keeps_the_prompt_logprobs_and_does_not_ask_again(tok: Tokenizer) -> None:
    out = tok.encode("hello world again and again", add_special_tokens=False)[:6]
    first = ScriptedDecode(out, "decode:1", fail_after=1)
    second = ScriptedDecode(out, "decode:2", resume=True)
    r = scripted_router(tok, [ScriptedPrefill(kv={"remote_block_ids": [[1]]})], [first, second])
    body = post(r, False, prompt_logprobs=1, max_tokens=6, temperature=0).json()
    assert body["choices"][0]["text"] == tok.decode(out)
    assert len(body["choices"][0]["prompt_logprobs"]) == len(prompt_ids(tok, False))
    resumed = (first.calls + second.calls)[-1]
    assert len(resumed["prompt"]) > len(prompt_ids(tok, False))  # the migration replayed the output
    assert resumed["spec"].prompt_logprobs is None


def test_choices_share_one_scoring_of_the_prompt(tok: Tokenizer) -> None:
    prefill, decode = (
        ScriptedPrefill(kv={"remote_block_ids": [[1]]}),
        ScriptedDecode(tok.encode("hello world", add_special_tokens=False)),
    )
    r = scripted_router(tok, [prefill], [decode])
    body = post(r, False, prompt_logprobs=1, n=3, max_tokens=2, temperature=1.0).json()
    shown = [c["prompt_logprobs"] for c in body["choices"]]
    assert shown[0] is not None and shown == [shown[0]] * 3
    assert [s.prompt_logprobs for s in prefill.specs] == [1]  # one prefill, for choice 0
    assert sorted(c["spec"].prompt_logprobs is None for c in decode.calls) == [False, True, True]


def test_completion_echo_puts_the_prompt_and_its_logprobs_first(tok: Tokenizer) -> None:
    r, _ = router(tok)
    ids = prompt_ids(tok, False)
    choice = post(r, False, echo=True, logprobs=1, max_tokens=2).json()["choices"][0]
    out = tok.encode("hello world", add_special_tokens=False)[:2]
    assert choice["text"] == "hi" + tok.decode(out)
    lp = choice["logprobs"]
    # the prompt's first token has no logprob and is named by decoding it, as vLLM does
    assert lp["tokens"] == [tok.decode([ids[0]], skip_special_tokens=False), *tok.token_texts(ids[1:] + out)]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert lp["token_logprobs"][1:] == pytest.approx([-t / 100 for t in ids[1:] + out])
    assert lp["text_offset"] == [sum(len(t) for t in lp["tokens"][:i]) for i in range(len(lp["tokens"]))]
    assert choice["prompt_logprobs"] is not None  # echo with logprobs scores the prompt


def test_echo_with_max_tokens_0_returns_the_prompt_alone(tok: Tokenizer) -> None:
    r, decode = router(tok)
    body = post(r, False, prompt=[5, 6, 7], echo=True, max_tokens=0, logprobs=0).json()
    choice = body["choices"][0]
    assert choice["text"] == tok.decode([5, 6, 7], skip_special_tokens=False)
    assert len(choice["logprobs"]["tokens"]) == 3  # the prompt's: the generated token is hidden
    assert decode.calls[-1]["spec"].max_tokens == 1 and body["usage"]["completion_tokens"] == 1  # as vLLM


def test_streamed_echo_assembles_to_the_whole_response(tok: Tokenizer) -> None:
    r, _ = router(tok)
    whole = post(r, False, echo=True, logprobs=1, max_tokens=4).json()["choices"][0]
    chunks = [c["choices"][0] for c in events(post(r, False, echo=True, logprobs=1, max_tokens=4, stream=True))]
    assert "".join(c["text"] for c in chunks) == whole["text"]
    assert [t for c in chunks for t in c["logprobs"]["tokens"]] == whole["logprobs"]["tokens"]
    assert [o for c in chunks for o in c["logprobs"]["text_offset"]] == whole["logprobs"]["text_offset"]
    assert chunks[0]["prompt_token_ids"] == prompt_ids(tok, False)  # vLLM sends them with an echo


def test_chat_echo_repeats_the_last_message_when_it_is_the_assistants(tok: Tokenizer) -> None:
    r, _ = router(tok)
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Well,"}]
    body = post(r, True, messages=messages, echo=True, max_tokens=2).json()
    output = tok.decode(tok.encode("hello world", add_special_tokens=False)[:2])
    assert body["choices"][0]["message"]["content"] == "Well," + output
    assert body["prompt_logprobs"] is not None  # chat echo scores the prompt with top_logprobs (0)
    user_last = post(r, True, echo=True, max_tokens=2).json()
    assert user_last["choices"][0]["message"]["content"] == output


def test_the_cap_is_the_fewest_logprobs_any_worker_of_the_model_computes(tok: Tokenizer) -> None:
    """Workers report vLLM's ``max_logprobs`` (``--engine-arg max_logprobs=N``); the pool
    keeps the smallest, and asking for more is vLLM's 400 with that number."""
    decode = ScriptedDecode(tok.encode("hello world", add_special_tokens=False))
    r = scripted_router(tok, [ScriptedPrefill()], [decode], max_logprobs=30)
    assert post(r, False, logprobs=25, max_tokens=2).status_code == 200
    other = ScriptedDecode([1], "decode:2")
    r.pool.add_decode(other, EngineInfo("decode", "tiny", 32, "", 0, 256, "vllm", max_logprobs=5))
    assert r.pool.max_logprobs == 5
    for fields, param in (({"logprobs": 6}, "logprobs"), ({"prompt_logprobs": 6}, "prompt_logprobs")):
        resp = post(r, False, max_tokens=2, **fields)
        assert resp.status_code == 400 and resp.json()["error"]["param"] == param
        assert "max allowed: 5" in resp.json()["error"]["message"]
