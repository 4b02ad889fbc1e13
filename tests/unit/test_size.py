"""A prompt that cannot fit the context is refused before it is templated or tokenized
(router/api/size.py): 400, quickly, no worker asked."""

from __future__ import annotations

import time

import pytest

from router.tokenizer import Tokenizer
from tests.helpers.router import ScriptedDecode, ScriptedPrefill, scripted_router, tiny_tokenizer

CONTEXT = 256  # the scripted model's max_model_len; bound: 32 characters a token


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    return tiny_tokenizer(tmp_path_factory.mktemp("tiny"))


@pytest.mark.parametrize(
    "path,body,param",
    [
        ("/v1/completions", {"prompt": "x" * (32 * CONTEXT + 1)}, "prompt"),
        ("/v1/completions", {"prompt": ["ab", "x" * (32 * CONTEXT + 1)]}, "prompt"),
        ("/v1/completions", {"prompt": list(range(1, CONTEXT + 2))}, "prompt"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x" * (32 * CONTEXT)}]}, "messages"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}] * (CONTEXT + 1)}, "messages"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "x" * (32 * CONTEXT)}]}]},
            "messages",
        ),
    ],
)
def test_a_prompt_surely_over_the_context_is_a_400_before_tokenizing(
    tok: Tokenizer, path: str, body: dict, param: str
) -> None:
    decode = ScriptedDecode([300, 301])
    r = scripted_router(tok, [ScriptedPrefill()], [decode])
    started = time.monotonic()
    resp = r.client.post(path, json={"model": "tiny", "max_tokens": 1, **body})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == param
    assert "refused before tokenizing" in resp.json()["error"]["message"]
    assert time.monotonic() - started < 2 and not decode.calls


@pytest.mark.parametrize("prompt", [[], [[]], [""], ""])
def test_empty_prompts_are_left_to_validation(tok: Tokenizer, prompt: object) -> None:
    r = scripted_router(tok, [ScriptedPrefill()], [ScriptedDecode([300, 301])])
    resp = r.client.post("/v1/completions", json={"model": "tiny", "max_tokens": 1, "prompt": prompt})
    assert resp.status_code == 400, resp.text


def test_a_prompt_within_the_bound_is_tokenized_as_before(tok: Tokenizer) -> None:
    r = scripted_router(tok, [ScriptedPrefill()], [ScriptedDecode([300, 301])])
    resp = r.client.post("/v1/completions", json={"model": "tiny", "max_tokens": 1, "prompt": "x " * 500})
    assert resp.status_code == 400  # over the context once tokenized: vLLM's own message
    assert "refused before tokenizing" not in resp.json()["error"]["message"]
