"""Completions batches (a ``prompt`` list of strings or of token-id lists), as vLLM 0.32's
server answers them: one choice per prompt and choice, numbered prompt index * n + i; each
prompt placed and prefilled on its own; usage and admission summed over the prompts."""

from __future__ import annotations

import json
from typing import Any

import pytest

from router.admission import AdmissionLimits
from router.api.validate import MAX_PROMPTS
from router.tokenizer import Tokenizer
from tests.helpers.router import ScriptedDecode, ScriptedPrefill, ScriptedRouter, scripted_router, tiny_tokenizer

OUTPUT = "hello world"
SAMPLED = {"temperature": 0.7, "seed": 5}


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    return tiny_tokenizer(tmp_path_factory.mktemp("tiny"))


def router(
    tok: Tokenizer, decoders: int = 1, limits: AdmissionLimits | None = None
) -> tuple[ScriptedRouter, ScriptedPrefill, list[ScriptedDecode]]:
    prefill = ScriptedPrefill(kv={"remote_block_ids": [[1]]})
    decodes = [ScriptedDecode(tok.encode(OUTPUT), f"decode:{i}") for i in range(decoders)]
    return scripted_router(tok, [prefill], decodes, limits=limits), prefill, decodes


def complete(r: ScriptedRouter, prompt: Any, **fields: Any) -> Any:
    return r.client.post("/v1/completions", json={"model": "tiny", "prompt": prompt, "max_tokens": 4, **fields})


def events(resp: Any) -> list[dict[str, Any]]:
    return [json.loads(ln[6:]) for ln in resp.text.splitlines() if ln.startswith("data: ") and ln != "data: [DONE]"]


def test_a_string_batch_answers_one_choice_per_prompt_each_prefilled_on_its_own(tok: Tokenizer) -> None:
    r, prefill, (decode,) = router(tok)
    resp = complete(r, ["ab", "cde", "f"], return_token_ids=True)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    prompts = [tok.encode(p) for p in ("ab", "cde", "f")]
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert [c["prompt_token_ids"] for c in body["choices"]] == prompts
    assert [c["text"] for c in body["choices"]] == ["hell"] * 3
    assert prefill.calls == 3 and all(c["kv"] is not None for c in decode.calls)
    assert sorted(c["prompt"] for c in decode.calls) == sorted(prompts)
    usage = body["usage"]
    assert usage["prompt_tokens"] == sum(map(len, prompts)) and usage["completion_tokens"] == 12
    assert usage["total_tokens"] == usage["prompt_tokens"] + 12
    # metrics count every prompt once, with the cache hits its prefill found
    assert r.counter("pdserve_router_prompt_tokens_total") == usage["prompt_tokens"]
    assert r.counter("pdserve_router_cached_tokens_total") == 3 * prefill.cached_tokens


def test_token_id_batches_with_n_number_choices_prompt_index_times_n_plus_i(tok: Tokenizer) -> None:
    r, prefill, decodes = router(tok, decoders=2)
    prompts = [[10, 11, 12], [20, 21]]
    body = complete(r, prompts, n=2, return_token_ids=True, **SAMPLED).json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert [c["prompt_token_ids"] for c in body["choices"]] == [prompts[0], prompts[0], prompts[1], prompts[1]]
    assert body["usage"]["prompt_tokens"] == 5 and body["usage"]["completion_tokens"] == 16
    # one prefill per prompt; each prompt's second choice decodes where its first one did
    # (its prefix cache holds the pulled KV), never on another prompt's pin
    assert prefill.calls == 2
    calls = [(d.worker, c["prompt"], c["kv"] is not None, c["spec"].seed) for d in decodes for c in d.calls]
    assert sorted((p, s) for _, p, _, s in calls) == [(p, s) for p in prompts for s in (5, 6)]  # seed + i
    for worker, prompt, transferred, _ in calls:
        if not transferred:
            assert (worker, prompt, True) in [(w, p, t) for w, p, t, _ in calls]


def test_a_streamed_batch_interleaves_choices_by_index_and_sums_usage(tok: Tokenizer) -> None:
    r, _, _ = router(tok)
    prompts = [tok.encode("ab"), tok.encode("xyz")]
    resp = complete(
        r, ["ab", "xyz"], n=2, stream=True, stream_options={"include_usage": True}, return_token_ids=True, **SAMPLED
    )
    assert resp.status_code == 200, resp.text
    *chunks, last = events(resp)
    per: dict[int, list[dict[str, Any]]] = {}
    for e in chunks:
        (choice,) = e["choices"]
        per.setdefault(choice["index"], []).append(choice)
    assert sorted(per) == [0, 1, 2, 3]
    for index, choices in per.items():
        assert choices[0]["prompt_token_ids"] == prompts[index // 2]  # the choice's own prompt, on its first chunk
        assert all(c["prompt_token_ids"] is None for c in choices[1:])
        assert "".join(c["text"] for c in choices) == "hell" and choices[-1]["finish_reason"] == "length"
    assert last["choices"] == [] and last["usage"]["prompt_tokens"] == sum(map(len, prompts))
    assert last["usage"]["completion_tokens"] == 16


def test_echo_puts_each_prompt_before_its_own_choices(tok: Tokenizer) -> None:
    r, _, _ = router(tok)
    for prompt in (["ab", "xy"], [tok.encode("ab"), tok.encode("xy")]):  # token ids echo decoded
        body = complete(r, prompt, echo=True, n=2, **SAMPLED).json()
        assert [c["text"] for c in body["choices"]] == ["abhell", "abhell", "xyhell", "xyhell"]


def test_prompt_logprobs_are_each_prompts_own(tok: Tokenizer) -> None:
    r, _, _ = router(tok)
    body = complete(r, [[10, 11, 12], [20, 21]], prompt_logprobs=1).json()
    assert [len(c["prompt_logprobs"]) for c in body["choices"]] == [3, 2]
    assert [next(iter(c["prompt_logprobs"][1])) for c in body["choices"]] == ["11", "21"]  # position 1's token


def test_rate_limit_charges_every_prompt_and_choice(tok: Tokenizer) -> None:
    one = len(tok.encode("ab")) + 2 * 4  # a prompt + n * max_tokens
    r, _, _ = router(tok, limits=AdmissionLimits(tokens_per_minute=2 * one - 1))
    assert complete(r, ["ab"], n=2, **SAMPLED).status_code == 200
    refused = complete(r, ["ab", "ab"], n=2, **SAMPLED)
    # more than the whole per-minute limit: no wait would let it through (400, not 429)
    assert refused.status_code == 400 and f"needs {2 * one} tokens" in refused.json()["error"]["message"]


@pytest.mark.parametrize(
    "prompt,message",
    [
        ("", "Either prompt or prompt_embeds must be provided and non-empty."),  # vLLM's words
        (["ab", ""], "the prompt is empty"),
        (["ab", "x" * 300], "maximum context length"),
        (["ab", [1, 2]], "prompt"),
        ([[1, 2], []], "the prompt is empty"),
        (["a"] * (MAX_PROMPTS + 1), f"exceeds the maximum allowed count of {MAX_PROMPTS}"),
    ],
)
def test_bad_prompts_in_a_batch_refuse_the_whole_request(tok: Tokenizer, prompt: Any, message: str) -> None:
    r, prefill, (decode,) = router(tok)
    resp = complete(r, prompt)
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["param"] == "prompt" and message in err["message"]
    assert prefill.calls == 0 and decode.calls == []


def test_suffix_is_refused_as_vllm_refuses_it_for_models_without_fim_rendering(tok: Tokenizer) -> None:
    r, _, _ = router(tok)
    err = complete(r, "ab", suffix="!").json()["error"]
    assert err["param"] == "suffix"
    assert err["message"] == "suffix is only supported for models with FIM completion rendering"
    assert complete(r, "ab", suffix=None).status_code == 200
