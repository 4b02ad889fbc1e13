"""Every request field is honoured or refused by name (router/api/schemas.py): what the
router hands its workers for each, through the HTTP app and scripted workers."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from pdserve.engine.base import EngineInfo, SamplingSpec
from pdserve.rpc.convert import sampling_from_pb, sampling_to_pb
from pdserve.state.memory import MemoryStore
from pdserve.types import BlockHash, WorkerId
from router.api.schemas import CHAT_REFUSED, COMPLETION_REFUSED
from router.generation_config import sampling_defaults
from router.tokenizer import Tokenizer
from tests.helpers.router import ScriptedDecode, ScriptedPrefill, ScriptedRouter, scripted_router, tiny_tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    return tiny_tokenizer(tmp_path_factory.mktemp("tiny"))


def router(tok: Tokenizer, output: str = "ab", **kwargs: Any) -> tuple[ScriptedRouter, ScriptedDecode]:
    decode = ScriptedDecode(tok.encode(output, add_special_tokens=False))
    return scripted_router(tok, [ScriptedPrefill(kv={"remote_block_ids": [[1]]})], [decode], **kwargs), decode


def post(r: ScriptedRouter, chat: bool, **fields: Any) -> Any:
    body = {"model": "tiny", **({"messages": [{"role": "user", "content": "hi"}]} if chat else {"prompt": "hi"})}
    return r.client.post("/v1/chat/completions" if chat else "/v1/completions", json={**body, **fields})


def sent(decode: ScriptedDecode) -> SamplingSpec:
    spec = decode.calls[-1]["spec"]
    assert isinstance(spec, SamplingSpec)
    return spec


# A value that asks for something, per refused field.
ASKING: dict[str, Any] = {
    "logprob_token_ids": [1],
    "use_beam_search": True,
    "watermarking": True,
    "session_id": "s",
    "routed_experts_prompt_start": 1,
    "return_token_offsets": True,
    "mm_payload": "none",
    "return_mm_kwargs": True,
    "kv_transfer_params": {"remote_block_ids": [1]},
    "ec_transfer_params": {"x": 1},
    "vllm_xargs": {"a": 1},
    "repetition_detection": {"max_pattern_size": 4},
    "stream_interval": 2,
    "thinking_token_budget": 10,
    "tools": [{"type": "function", "function": {"name": "f"}}],
    "tool_choice": "auto",
    "parallel_tool_calls": False,
    "reasoning_effort": "low",
    "documents": [{"a": "b"}],
    "chat_template": "{{ x }}",
    "chat_template_kwargs": {"a": 1},
    "media_io_kwargs": {"a": {}},
    "mm_processor_kwargs": {"a": 1},
    "suffix": "x",
    "prompt_embeds": "AAAA",
}


@pytest.mark.parametrize(
    ("chat", "name"), [(True, n) for n in sorted(CHAT_REFUSED)] + [(False, n) for n in sorted(COMPLETION_REFUSED)]
)
def test_a_refused_field_asking_for_something_is_a_400_naming_it_and_its_neutral_values_pass(
    tok: Tokenizer, chat: bool, name: str
) -> None:
    r, decode = router(tok)
    refused = post(r, chat, **{name: ASKING[name]})
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["param"] == name
    assert decode.calls == []
    rule = (CHAT_REFUSED if chat else COMPLETION_REFUSED)[name]
    for neutral in rule.neutral:
        assert post(r, chat, **{name: neutral}).status_code == 200, (name, neutral)


@pytest.mark.parametrize("chat", [True, False])
def test_unknown_fields_are_ignored_and_removed_guided_fields_refused(tok: Tokenizer, chat: bool) -> None:
    r, _ = router(tok)
    assert post(r, chat, not_a_vllm_field=1).status_code == 200
    guided = post(r, chat, guided_regex="a+")
    assert guided.status_code == 400 and guided.json()["error"]["param"] == "guided_regex"


def test_sampling_fields_reach_the_workers(tok: Tokenizer) -> None:
    r, decode = router(tok)
    fields = {
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 5,
        "min_p": 0.1,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "repetition_penalty": 1.3,
        "seed": 7,
        "logit_bias": {"5": 3.0, "6": -250},
        "allowed_token_ids": [5, 6, 7],
        "cache_salt": "tenant-a",
    }
    assert post(r, True, **fields).status_code == 200
    spec = sent(decode)
    assert (spec.temperature, spec.top_p, spec.top_k, spec.min_p) == pytest.approx((0.7, 0.9, 5, 0.1))
    assert (spec.presence_penalty, spec.frequency_penalty, spec.repetition_penalty) == pytest.approx((0.5, -0.5, 1.3))
    assert spec.seed == 7 and spec.cache_salt == "tenant-a"
    assert dict(spec.logit_bias) == {5: 3.0, 6: -100.0}  # clamped as vLLM clamps
    assert spec.allowed_token_ids == (5, 6, 7)
    back = sampling_from_pb(sampling_to_pb(spec))  # the wire carries all of it (floats as float32)
    for f in dataclasses.fields(spec):
        mine, theirs = getattr(spec, f.name), getattr(back, f.name)
        assert theirs == (pytest.approx(mine, rel=1e-6) if isinstance(mine, float) else mine), f.name


def test_greedy_turns_the_filters_off_as_vllm_does(tok: Tokenizer) -> None:
    r, decode = router(tok)
    assert post(r, False, temperature=0, top_p=0.5, top_k=3, min_p=0.2).status_code == 200
    spec = sent(decode)
    assert (spec.top_p, spec.top_k, spec.min_p) == (1.0, 0, 0.0)


def test_null_means_the_generation_config_default_and_a_value_wins(tok: Tokenizer) -> None:
    defaults = {"temperature": 0.6, "top_p": 0.95, "repetition_penalty": 1.1, "max_tokens": 7}
    r, decode = router(tok, sampling_defaults=defaults)
    assert post(r, True, temperature=None, top_p=None, max_tokens=None).status_code == 200
    spec = sent(decode)
    assert (spec.temperature, spec.top_p, spec.repetition_penalty) == pytest.approx((0.6, 0.95, 1.1))
    assert spec.max_tokens == 7  # max_new_tokens caps it
    assert post(r, True, temperature=0.2, top_p=0.5, repetition_penalty=1.0).status_code == 200
    spec = sent(decode)
    assert (spec.temperature, spec.top_p, spec.repetition_penalty) == pytest.approx((0.2, 0.5, 1.0))


def test_without_a_generation_config_null_is_vllms_neutral_value(tok: Tokenizer) -> None:
    r, decode = router(tok)
    nulls = ["temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty"]
    assert post(r, False, **dict.fromkeys(nulls)).status_code == 200
    spec = sent(decode)
    assert spec == SamplingSpec(max_tokens=spec.max_tokens, stop_token_ids=spec.stop_token_ids)


def test_generation_config_is_read_as_vllm_reads_it(tmp_path: Path) -> None:
    (tmp_path / "generation_config.json").write_text(
        '{"temperature": 0.6, "top_p": 0.9, "max_new_tokens": 64, "do_sample": true, "eos_token_id": 2}'
    )
    assert sampling_defaults("auto", tmp_path) == {"temperature": 0.6, "top_p": 0.9, "max_tokens": 64}
    assert sampling_defaults("vllm", tmp_path) == {}
    assert sampling_defaults(str(tmp_path), "/nonexistent") == {"temperature": 0.6, "top_p": 0.9, "max_tokens": 64}
    assert sampling_defaults("auto", tmp_path / "none") == {}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"logit_bias": {"999999": 1.0}}, "logit_bias"),
        ({"logit_bias": {"abc": 1.0}}, "logit_bias"),
        ({"allowed_token_ids": []}, "allowed_token_ids"),
        ({"allowed_token_ids": [999999]}, "allowed_token_ids"),
        ({"bad_words": [""]}, "bad_words"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": -3}, "frequency_penalty"),
        ({"min_p": 1.5}, "min_p"),
        ({"top_k": -2}, "top_k"),
        ({"max_tokens": 300}, "max_tokens"),  # past the 256-token context
        ({"truncate_prompt_tokens": 300}, "truncate_prompt_tokens"),
        ({"cache_salt": ""}, "cache_salt"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),  # without stream
        ({"n": 2, "temperature": 0}, "n"),  # greedy choices would all be the same
        ({"n": 129}, "n"),
        ({"prompt_logprobs": 1, "stream": True}, "prompt_logprobs"),  # vLLM streams none
        ({"prompt_logprobs": -2}, "prompt_logprobs"),
        ({"prompt_logprobs": 21}, "prompt_logprobs"),  # past vLLM's max_logprobs (20)
        ({"prompt_logprobs": -1}, "prompt_logprobs"),  # the whole vocabulary: past it too
        ({"echo": True, "logprobs": 21}, "logprobs"),
        ({"max_tokens": 0}, "max_tokens"),  # only an echo may ask for no tokens
    ],
)
def test_values_vllm_refuses_are_400s_naming_the_field(tok: Tokenizer, fields: dict[str, Any], param: str) -> None:
    r, decode = router(tok)
    resp = post(r, False, **fields)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == param
    assert decode.calls == []


@pytest.mark.parametrize("policy", ["priority", "fcfs"])
def test_priority_reaches_the_workers(tok: Tokenizer, policy: str) -> None:
    """A first-come-first-served engine ignores it, as vLLM 0.32's server does (no 400)."""
    r, decode = router(tok, scheduling_policy=policy)
    assert post(r, False, priority=-3).status_code == 200
    assert sent(decode).priority == -3


@pytest.mark.parametrize(("side", "kept"), [(None, slice(-3, None)), ("left", slice(-3, None)), ("right", slice(0, 3))])
def test_truncate_prompt_tokens_keeps_k_tokens(tok: Tokenizer, side: str | None, kept: slice) -> None:
    r, decode = router(tok)
    prompt = list(range(40, 50))
    assert post(r, False, prompt=prompt, truncate_prompt_tokens=3, truncation_side=side).status_code == 200
    assert decode.calls[-1]["prompt"] == prompt[kept]


def test_bad_words_are_tokenized_as_vllm_does(tok: Tokenizer) -> None:
    r, decode = router(tok)
    assert post(r, False, bad_words=["ab", "ab", "c"]).status_code == 200
    plain = tok.encode("ab", add_special_tokens=False)
    assert sent(decode).bad_words[0] == tuple(plain)
    assert tuple(tok.encode("c", add_special_tokens=False)) in sent(decode).bad_words
    assert sent(decode).bad_words == tok.bad_words_ids(["ab", "c"])  # duplicates once


@pytest.mark.parametrize("include", [False, True])
def test_include_stop_str_in_output(tok: Tokenizer, include: bool) -> None:
    r, _ = router(tok, output="hello world")
    resp = post(r, False, stop=["wor"], include_stop_str_in_output=include)
    assert resp.json()["choices"][0]["text"] == ("hello wor" if include else "hello ")


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.matches = 0

    async def match(self, model: str, hashes: Sequence[BlockHash]) -> dict[WorkerId, int]:
        self.matches += 1
        return await super().match(model, hashes)


def test_a_salted_request_is_placed_without_the_prefix_index(tok: Tokenizer) -> None:
    store = CountingStore()
    r, _ = router(tok, policy="prefix-aware", store=store)
    prompt = "x" * 100  # full blocks to look up
    assert post(r, False, prompt=prompt).status_code == 200
    assert store.matches == 1
    assert post(r, False, prompt=prompt, cache_salt="s1").status_code == 200
    assert store.matches == 1  # the salted request did not look


@pytest.mark.parametrize("chat", [True, False])
def test_request_id_names_the_response_as_in_vllm(tok: Tokenizer, chat: bool) -> None:
    r, _ = router(tok)
    body = post(r, chat, request_id="abc123").json()
    assert body["id"] == ("chatcmpl-abc123" if chat else "cmpl-abc123")


def test_the_clients_request_id_names_the_engine_requests_per_role(tok: Tokenizer) -> None:
    """X-Request-Id (over the body's request_id, as vLLM) names the response and, prefixed
    by role and suffixed to stay unique, the prefill and decode engine requests."""
    prefill, decode = ScriptedPrefill(kv={"remote_block_ids": [[1]]}), ScriptedDecode(tok.encode("ab"))
    r = scripted_router(tok, [prefill], [decode])
    body = {"model": "tiny", "prompt": "hi", "request_id": "from-body"}
    resp = r.client.post("/v1/completions", json=body, headers={"X-Request-Id": "trace-42"})
    assert resp.json()["id"] == "cmpl-trace-42"
    assert prefill.ids[-1].startswith("prefill-trace-42-") and decode.calls[-1]["id"].startswith("decode-trace-42-")
    assert prefill.ids[-1].removeprefix("prefill-") == decode.calls[-1]["id"].removeprefix("decode-")
    again = r.client.post("/v1/completions", json=body, headers={"X-Request-Id": "trace-42"})
    assert again.status_code == 200 and prefill.ids[-1] != prefill.ids[-2]  # a reused id stays apart


@pytest.mark.parametrize(
    ("fields", "sent_as"),
    [
        ({"response_format": {"type": "json_object"}}, {"json_object": True}),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": "object"}}}},
            {"json": {"type": "object"}},
        ),
        ({"structured_outputs": {"regex": "a+"}}, {"regex": "a+"}),
        ({"structured_outputs": {"choice": ["yes", "no"]}}, {"choice": ["yes", "no"]}),
        ({"structured_outputs": {"grammar": "root ::= 'a'"}}, {"grammar": "root ::= 'a'"}),
        ({"structured_outputs": {"regex": "a+"}, "response_format": {"type": "text"}}, {"regex": "a+"}),
        ({"response_format": {"type": "text"}}, None),
    ],
)
def test_constraints_reach_the_workers_as_vllm_builds_them(
    tok: Tokenizer, fields: dict[str, Any], sent_as: dict[str, Any] | None
) -> None:
    r, decode = router(tok)
    assert post(r, True, **fields).status_code == 200
    got = sent(decode).structured_outputs
    assert (json.loads(got) if got else None) == sent_as


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"response_format": {"type": "json_schema"}}, "response_format"),
        ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs"),
        ({"structured_outputs": {"regex": "a"}, "response_format": {"type": "json_object"}}, "structured_outputs"),
        ({"structured_outputs": {}}, "structured_outputs"),
        ({"structured_outputs": {"choice": []}}, "structured_outputs"),
        ({"structured_outputs": {"nonsense": 1}}, "structured_outputs.nonsense"),
    ],
)
def test_constraints_vllm_refuses_are_400s(tok: Tokenizer, fields: dict[str, Any], param: str) -> None:
    r, decode = router(tok)
    resp = post(r, True, **fields)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == param
    assert decode.calls == []


def test_a_constrained_stream_is_not_migrated_mid_document(tok: Tokenizer) -> None:
    """A migration replays the output as prompt, where the grammar would start over."""
    failing = ScriptedDecode(tok.encode("abcdef", add_special_tokens=False), "decode:1", fail_after=1)
    spare = ScriptedDecode(tok.encode("abcdef", add_special_tokens=False), "decode:2", resume=True)
    r = scripted_router(tok, [ScriptedPrefill(kv={"remote_block_ids": [[1]]})], [failing, spare])
    body = {"model": "tiny", "prompt": "hi", "stream": True, "structured_outputs": {"regex": "[a-f]+"}}
    text = r.client.post("/v1/completions", json=body).text
    assert '"error"' in text  # the stream ends with an error event
    assert len(failing.calls) + len(spare.calls) == 1  # one decode, no migration
    plain = r.client.post("/v1/completions", json={**body, "structured_outputs": None}).text
    assert '"error"' not in plain  # the same failure, unconstrained, migrates


def test_stop_reason_names_the_stop_string_or_token_and_the_stop_token_text_is_left_out(tok: Tokenizer) -> None:
    r, _ = router(tok, output="hello world")
    choice = post(r, False, stop=["wor"]).json()["choices"][0]
    assert (choice["text"], choice["finish_reason"], choice["stop_reason"]) == ("hello ", "stop", "wor")
    stop_id = tok.encode("o", add_special_tokens=False)[0]
    # the scripted engine ends on the request's last stop id: with ignore_eos, the user's
    ended = post(r, False, stop_token_ids=[stop_id], ignore_eos=True, return_token_ids=True).json()["choices"][0]
    assert ended["finish_reason"] == "stop" and ended["text"] == "hello world"  # the stop token's text is not shown
    assert ended["token_ids"][-1] == stop_id and ended["stop_reason"] == stop_id
    eos = post(r, False).json()["choices"][0]
    assert eos["stop_reason"] is None  # EOS is no stop_reason, as in vLLM


def test_stop_strings_wait_for_min_tokens(tok: Tokenizer) -> None:
    """A stop string that completes within the first min_tokens tokens does not stop, as in vLLM."""
    r, _ = router(tok, "hello world, hello world")
    first = post(r, False, stop=["o"], max_tokens=12).json()["choices"][0]
    assert first["text"] == "hell" and first["stop_reason"] == "o"
    later = post(r, False, stop=["o"], max_tokens=12, min_tokens=6).json()["choices"][0]
    assert later["text"].startswith("hello w") and later["stop_reason"] == "o"


def test_continuous_usage_stats_put_running_counts_on_every_chunk(tok: Tokenizer) -> None:
    r, _ = router(tok, "hello world")
    options = {"include_usage": True, "continuous_usage_stats": True}
    resp = post(r, False, stream=True, max_tokens=6, stream_options=options)
    chunks = [json.loads(ln[6:]) for ln in resp.text.splitlines() if ln.startswith("data: {")]
    counts = [c["usage"]["completion_tokens"] for c in chunks if c["choices"]]
    assert counts == sorted(counts) and counts[-1] == 6  # cumulative, ending at the total
    prompt = chunks[0]["usage"]["prompt_tokens"]
    assert all(c["usage"]["total_tokens"] == prompt + c["usage"]["completion_tokens"] for c in chunks if c["choices"])
    plain = post(r, False, stream=True, max_tokens=6, stream_options={"include_usage": True})
    assert all(json.loads(ln[6:])["usage"] is None for ln in plain.text.splitlines() if '"choices":[{' in ln)


def test_responses_carry_the_decode_workers_system_fingerprint(tok: Tokenizer) -> None:
    """As vLLM's server: on whole responses, and on a choice's last chunk (or on the usage
    chunk when one follows). Workers that disagree leave it null."""
    r, decode = router(tok, "hello world")
    assert post(r, False, max_tokens=2).json()["system_fingerprint"] is None  # no worker reported one
    info = EngineInfo("decode", "tiny", 32, "", 0, 256, "vllm", system_fingerprint="vllm-0.32.0-abcd1234")
    r.pool.remove(decode.worker)
    r.pool.add_decode(decode, info)
    assert post(r, True, max_tokens=2).json()["system_fingerprint"] == "vllm-0.32.0-abcd1234"
    chunks = [json.loads(ln[6:]) for ln in post(r, False, max_tokens=4, stream=True).text.splitlines() if "{" in ln]
    assert [c.get("system_fingerprint") for c in chunks] == [None] * (len(chunks) - 1) + ["vllm-0.32.0-abcd1234"]
    usage = post(r, False, max_tokens=4, stream=True, stream_options={"include_usage": True}).text.splitlines()
    last = json.loads([ln for ln in usage if "{" in ln][-1][6:])
    assert last["choices"] == [] and last["system_fingerprint"] == "vllm-0.32.0-abcd1234"
    other = ScriptedDecode([1], "decode:2")
    r.pool.add_decode(other, dataclasses.replace(info, system_fingerprint="vllm-0.32.0-ffff0000"))
    assert r.pool.system_fingerprint is None


def test_return_prompt_text_shows_the_rendered_prompt(tok: Tokenizer) -> None:
    r, _ = router(tok)
    rendered = r.client.post("/tokenize", json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}]})
    text = tok.decode(rendered.json()["tokens"], skip_special_tokens=False)
    assert "hi" in text
    assert post(r, True, return_prompt_text=True).json()["prompt_text"] == text
    assert post(r, True).json()["prompt_text"] is None
    lines = post(r, True, return_prompt_text=True, stream=True).text.splitlines()
    chunks = [json.loads(ln[6:]) for ln in lines if ln.startswith("data: {")]
    assert [c["prompt_text"] for c in chunks] == [text] + [None] * (len(chunks) - 1)  # the first chunk only
