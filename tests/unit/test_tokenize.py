"""/tokenize (its completion and chat forms) and /detokenize, as vLLM 0.32's server answers
them; the chat form answers exactly the prompt ids a chat completion of the same messages
generates from."""

from __future__ import annotations

from typing import Any

import pytest

from router.tokenizer import TokenIdsOnly, Tokenizer
from tests.helpers.router import ScriptedDecode, ScriptedPrefill, ScriptedRouter, scripted_router, tiny_tokenizer

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    return tiny_tokenizer(tmp_path_factory.mktemp("tiny"))


def router(
    tok: Tokenizer | TokenIdsOnly, *, prefill: bool = True, decode: bool = True, **kw: Any
) -> tuple[ScriptedRouter, ScriptedDecode]:
    worker = ScriptedDecode([5, 6])
    r = scripted_router(tok, [ScriptedPrefill()] if prefill else [], [worker] if decode else [], **kw)
    return r, worker


def test_tokenize_a_prompt_as_a_completion_would(tok: Tokenizer) -> None:
    r, _ = router(tok)
    body = r.client.post("/tokenize", json={"model": "tiny", "prompt": "Hi there"}).json()
    ids = tok.encode("Hi there")
    assert body == {"count": len(ids), "max_model_len": 256, "tokens": ids, "token_strs": None}
    strs = r.client.post("/tokenize", json={"prompt": "Hi there", "return_token_strs": True}).json()["token_strs"]
    assert strs == ["H", "i", "Ġ", "t", "h", "e", "r", "e"]  # vocabulary entries, byte-level spaces kept
    bos = r.client.post("/tokenize", json={"prompt": "", "add_special_tokens": False, "ignored": 1}).json()
    assert bos["tokens"] == [] and bos["count"] == 0  # no length or emptiness check, as vLLM's tokenize


@pytest.mark.parametrize(
    "messages",
    [
        MESSAGES,
        [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
        [*MESSAGES, {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Why?"}],
    ],
)
def test_tokenize_chat_messages_answers_the_prompt_ids_a_chat_completion_uses(
    tok: Tokenizer, messages: list[dict[str, Any]]
) -> None:
    r, decode = router(tok)
    tokens = r.client.post("/tokenize", json={"model": "tiny", "messages": messages}).json()["tokens"]
    done = r.client.post("/v1/chat/completions", json={"model": "tiny", "messages": messages, "max_tokens": 2})
    assert done.status_code == 200, done.text
    assert tokens == decode.calls[0]["prompt"] and done.json()["usage"]["prompt_tokens"] == len(tokens)


@pytest.mark.parametrize(
    "fields",
    [
        {"add_generation_prompt": False},
        {"add_special_tokens": True},
        {"chat_template_kwargs": {"enable_thinking": False}},
        {"messages": [{"role": "bogus", "content": "x"}]},
    ],
)
def test_tokenize_renders_template_options_as_the_chat_completion_does(tok: Tokenizer, fields: dict[str, Any]) -> None:
    r, decode = router(tok)
    body = {"model": "tiny", "messages": MESSAGES, **fields}
    tokens = r.client.post("/tokenize", json=body).json()["tokens"]
    assert r.client.post("/v1/chat/completions", json={**body, "max_tokens": 2}).status_code == 200
    assert tokens == decode.calls[-1]["prompt"]


def test_tokenize_renders_tools_without_a_tool_choice(tok: Tokenizer) -> None:
    """vLLM's /tokenize has no tool_choice: tools are rendered (a chat completion with tools and
    no choice means "auto", which needs a tool-call parser)."""
    r, _ = router(tok)
    tools = [{"type": "function", "function": {"name": "f"}}]
    assert r.client.post("/tokenize", json={"model": "tiny", "messages": MESSAGES, "tools": tools}).status_code == 200


@pytest.mark.parametrize(
    "fields",
    [
        {"continue_final_message": True},  # with add_generation_prompt (on by default)
        {"chat_template": "{{ messages }}"},  # not trusted
        {"messages": [{"role": "user", "content": 5}]},
        {"messages": []},
    ],
)
def test_tokenize_refuses_chat_requests_as_the_chat_completion_does(tok: Tokenizer, fields: dict[str, Any]) -> None:
    r, decode = router(tok)
    body = {"model": "tiny", "messages": MESSAGES, **fields}
    tokenized = r.client.post("/tokenize", json=body)
    completed = r.client.post("/v1/chat/completions", json=body)
    assert tokenized.status_code == completed.status_code == 400, tokenized.text
    assert tokenized.json()["error"]["param"] == completed.json()["error"]["param"]
    assert decode.calls == []


def test_detokenize_decodes_as_the_tokenizer_does_special_tokens_kept(tok: Tokenizer) -> None:
    r, _ = router(tok)
    ids = [*tok.encode("naïve café"), *tok.eos_token_ids]
    body = r.client.post("/detokenize", json={"model": "tiny", "tokens": ids}).json()
    assert body == {"prompt": "naïve café<|im_end|>"}
    past = r.client.post("/detokenize", json={"tokens": [*tok.encode("ok"), tok.vocab_size + 5]}).json()
    assert past == {"prompt": "ok"}  # an id past the vocabulary decodes to nothing, as in vLLM


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/detokenize", {"tokens": [2**40]}, 400, "tokens"),
        ("/detokenize", {"tokens": [-1]}, 400, "tokens"),
        ("/detokenize", {"tokens": "abc"}, 400, "tokens"),
        ("/detokenize", {"model": "other", "tokens": [1]}, 404, "model"),
        ("/tokenize", {"model": "other", "prompt": "x"}, 404, "model"),
        ("/tokenize", {"model": "tiny"}, 400, None),  # neither a prompt nor messages
        ("/tokenize", {"prompt": 5}, 400, None),
    ],
)
def test_tokenize_errors_are_openai_shaped(
    tok: Tokenizer, path: str, body: dict[str, Any], status: int, param: str | None
) -> None:
    r, _ = router(tok)
    resp = r.client.post(path, json=body)
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param is not None:
        assert err["param"] == param


def test_a_model_without_a_tokenizer_tokenizes_nothing() -> None:
    r, _ = router(TokenIdsOnly(vocab_size=1000))
    for path, body, param in [
        ("/tokenize", {"prompt": "x"}, "prompt"),
        ("/tokenize", {"messages": MESSAGES}, "messages"),
        ("/detokenize", {"tokens": [1, 2]}, "tokens"),
    ]:
        resp = r.client.post(path, json=body)
        assert resp.status_code == 400 and resp.json()["error"]["param"] == param, resp.text


def test_tokenize_needs_no_api_key_as_in_vllm(tok: Tokenizer) -> None:
    r, _ = router(tok, api_keys=("sesame",))
    assert r.client.post("/tokenize", json={"prompt": "x"}).status_code == 200  # vLLM guards /v1/* only
    assert r.client.get("/v1/models").status_code == 401
