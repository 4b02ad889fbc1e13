"""The request battery: every case is one request sent unchanged to both servers.

Ids read ``<route>.<field>.<variant>[.stream]`` (route ``chat`` or ``cmpl``), so the known-
differences file can name a case, or a family of cases with a glob. Generating cases are
greedy (``temperature: 0``, or ``top_k: 1``) or seeded, with at most 12 new tokens (16 in
the one case about the completions default), and ask for ``return_token_ids`` so token ids
can be compared; the few that sample without a seed set ``exact=False`` (only the shape and
the prompt's usage are compared). Token ids are SmolLM2's (the default model; vocabulary
49152): other models get other tokens, which is fine for a comparison of two servers on
one model.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
MODEL = "$model"  # replaced by each server's served model name when sent
ABSENT = object()  # a field value meaning "leave the field out of the body"

MESSAGES = [{"role": "user", "content": "Name the capital of France."}]
SHORT_MESSAGES = [{"role": "user", "content": "Answer yes or no: is the sky blue?"}]
PROMPT = "The capital of France is"
PROMPT_IDS = [504, 3575, 282, 4649, 314]  # PROMPT, tokenized by SmolLM2
PARIS, PERIOD, COMMA, EOS = 7042, 30, 28, 2  # " Paris", ".", ",", "<|im_end|>"
PAST_VOCAB = 60000  # SmolLM2's vocabulary has 49152 tokens
BASE: dict[str, Any] = {"model": MODEL, "temperature": 0, "max_tokens": 4, "return_token_ids": True}


@dataclass(frozen=True)
class Case:
    """One request. ``exact``: the output is determined (greedy or seeded), so text, token
    ids, finish reasons, completion usage and logprobs are compared, not only the shape."""

    id: str
    route: str
    body: dict[str, Any]
    stream: bool = False
    exact: bool = True


def _case(route: str, prefix: str, base: dict[str, Any], name: str, stream: bool, exact: bool, fields: Any) -> Case:
    body = {**BASE, **base, **fields}
    body = {k: v for k, v in body.items() if v is not ABSENT}
    if stream:
        body["stream"] = True
    return Case(f"{prefix}.{name}" + (".stream" if stream else ""), route, body, stream, exact)


def chat(name: str, *, stream: bool = False, exact: bool = True, **fields: Any) -> Case:
    return _case(CHAT, "chat", {"messages": MESSAGES}, name, stream, exact, fields)


def cmpl(name: str, *, stream: bool = False, exact: bool = True, **fields: Any) -> Case:
    return _case(COMPLETIONS, "cmpl", {"prompt": PROMPT}, name, stream, exact, fields)


def both(name: str, *, stream: bool = False, exact: bool = True, **fields: Any) -> list[Case]:
    return [chat(name, stream=stream, exact=exact, **fields), cmpl(name, stream=stream, exact=exact, **fields)]


def nulls(field: str) -> list[Case]:
    """``field: null`` on both routes: the field's default, or a 400; one token tells which."""
    fields: dict[str, Any] = {field: None}
    return both(f"{field}.null", max_tokens=1, **fields)


def _basics() -> list[Case]:
    return [
        *both("greedy", max_tokens=8),
        *both("greedy", stream=True, max_tokens=8),
        *both("stream_options.include_usage", stream=True, stream_options={"include_usage": True}),
        *both("stream_options.no_usage", stream=True, stream_options={"include_usage": False}),
        *both("stream_options.continuous_usage", stream=True, stream_options={"continuous_usage_stats": True}),
        *both("stream_options.without_stream", stream_options={"include_usage": True}),
        *both("model.unknown", model="no-such-model"),
        *nulls("model"),
        *both("model.absent", model=ABSENT),
        *both("extra_field.unknown", foo_bar_baz=1),
        *both("return_token_ids.false", return_token_ids=False),
        *both("return_token_ids.false", stream=True, return_token_ids=False),
        *nulls("return_token_ids"),
        *both("user.valid", user="alice"),
        *nulls("user"),
        *both("user.wrong_type", user=5),
    ]


def _temperature_and_seed() -> list[Case]:
    return [
        *both("temperature.null_top_k_1", temperature=None, top_k=1),
        *both("temperature.1_5_top_k_1", temperature=1.5, top_k=1),
        *both("temperature.over_2_top_k_1", temperature=2.5, top_k=1),
        *both("temperature.negative", temperature=-0.5),
        *both("temperature.wrong_type", temperature="hot"),
        *both("temperature.unseeded", exact=False, temperature=0.8),
        *both("seed.sampled", temperature=1.0, seed=1234, max_tokens=6),
        *both("seed.sampled", stream=True, temperature=1.0, seed=1234, max_tokens=6),
        *nulls("seed"),
        *both("seed.negative", temperature=1.0, seed=-7),
        *both("seed.past_int64", seed=2**64),
        *both("seed.wrong_type", seed="abc"),
    ]


def _truncation() -> list[Case]:
    return [
        *both("top_p.seeded", temperature=1.0, top_p=0.5, seed=7, max_tokens=6),
        *nulls("top_p"),
        *both("top_p.zero", top_p=0),
        *both("top_p.over_1", top_p=1.5),
        *both("top_p.wrong_type", top_p="x"),
        *both("top_k.seeded", temperature=1.0, top_k=5, seed=7, max_tokens=6),
        *both("top_k.minus_1", top_k=-1),
        *both("top_k.zero", top_k=0),
        *nulls("top_k"),
        *both("top_k.minus_2", top_k=-2),
        *both("top_k.float", top_k=1.5),
        *both("min_p.seeded", temperature=1.0, min_p=0.2, seed=7, max_tokens=6),
        *nulls("min_p"),
        *both("min_p.over_1", min_p=1.5),
        *both("min_p.negative", min_p=-0.1),
    ]


def _lengths() -> list[Case]:
    short: dict[str, Any] = {"messages": SHORT_MESSAGES}
    return [
        *both("max_tokens.2", max_tokens=2),
        chat("max_tokens.null", max_tokens=None, **short),
        chat("max_tokens.absent", max_tokens=ABSENT, **short),
        cmpl("max_tokens.null_with_stop", max_tokens=None, stop=["."]),
        cmpl("max_tokens.absent", max_tokens=ABSENT),
        *both("max_tokens.zero", max_tokens=0),
        *both("max_tokens.negative", max_tokens=-1),
        *both("max_tokens.wrong_type", max_tokens="ten"),
        *both("max_tokens.past_context", max_tokens=100_000),
        chat("max_completion_tokens.3", max_tokens=ABSENT, max_completion_tokens=3),
        chat("max_completion_tokens.null", max_tokens=1, max_completion_tokens=None),
        chat("max_completion_tokens.zero", max_tokens=ABSENT, max_completion_tokens=0),
        chat("max_completion_tokens.with_max_tokens", max_tokens=8, max_completion_tokens=3),
        chat("min_tokens.past_eos", max_tokens=8, min_tokens=6, **short),
        cmpl("min_tokens.4", min_tokens=4),
        *nulls("min_tokens"),
        *both("min_tokens.negative", min_tokens=-1),
        *both("min_tokens.over_max", min_tokens=20),
        chat("ignore_eos.true", max_tokens=8, ignore_eos=True, **short),
        *nulls("ignore_eos"),
        *both("ignore_eos.wrong_type", ignore_eos=[1]),
    ]


def _stops() -> list[Case]:
    return [
        *both("stop.string", stop=" is", max_tokens=8),
        *both("stop.list", stop=[".", ","], max_tokens=8),
        *both("stop.list", stream=True, stop=[".", ","], max_tokens=8),
        *both("stop.include_stop_str", stop=[".", ","], include_stop_str_in_output=True, max_tokens=8),
        *nulls("stop"),
        *both("stop.empty_list", stop=[]),
        *both("stop.empty_string", stop=""),
        *both("stop.five", stop=["a1", "b2", "c3", "d4", "e5"]),
        *both("stop.wrong_type", stop=123),
        *both("stop_token_ids.period", stop_token_ids=[PERIOD, COMMA], max_tokens=8),
        *both("stop_token_ids.empty", stop_token_ids=[]),
        *nulls("stop_token_ids"),
        *both("stop_token_ids.negative", stop_token_ids=[-1]),
        *both("stop_token_ids.past_vocab", stop_token_ids=[PAST_VOCAB]),
        *both("stop_token_ids.wrong_type", stop_token_ids="x"),
    ]


def _penalties() -> list[Case]:
    cases: list[Case] = []
    for name in ("presence_penalty", "frequency_penalty"):
        values: dict[str, Any] = {"valid": 1.5, "null": None, "out_of_range": 3.0, "wrong_type": "x"}
        for variant, value in values.items():
            extra: dict[str, Any] = {name: value, "max_tokens": {"valid": 8, "null": 1}.get(variant, 4)}
            cases += both(f"{name}.{variant}", **extra)
    return [
        *cases,
        *both("repetition_penalty.valid", max_tokens=8, repetition_penalty=1.3),
        *nulls("repetition_penalty"),
        *both("repetition_penalty.zero", repetition_penalty=0),
        *both("repetition_penalty.negative", repetition_penalty=-1),
    ]


def _token_constraints() -> list[Case]:
    return [
        *both("logit_bias.force_token", logit_bias={str(PARIS): 100}, max_tokens=4),
        *both("logit_bias.ban_token", logit_bias={str(PARIS): -100}, max_tokens=8),
        *both("logit_bias.past_vocab", logit_bias={str(PAST_VOCAB): 5}),
        *both("logit_bias.over_100", logit_bias={str(PARIS): 150}, max_tokens=4),
        *both("logit_bias.under_minus_100", logit_bias={str(PARIS): -150}, max_tokens=8),
        *nulls("logit_bias"),
        *both("logit_bias.non_int_key", logit_bias={"abc": 1}),
        *both("allowed_token_ids.valid", allowed_token_ids=[PARIS, PERIOD, COMMA, EOS], max_tokens=4),
        *both("allowed_token_ids.empty", allowed_token_ids=[]),
        *both("allowed_token_ids.past_vocab", allowed_token_ids=[PAST_VOCAB]),
        *nulls("allowed_token_ids"),
        *both("bad_words.valid", bad_words=["Paris"], max_tokens=8),
        *both("bad_words.empty", bad_words=[]),
        *nulls("bad_words"),
        *both("bad_words.wrong_type", bad_words=[5]),
    ]


def _request_options() -> list[Case]:
    return [
        *both("cache_salt.valid", cache_salt="parity-salt"),
        *both("cache_salt.empty", cache_salt=""),
        *nulls("cache_salt"),
        *both("priority.zero", priority=0),
        *both("priority.one", priority=1),
        *nulls("priority"),
        *both("skip_special_tokens.false", skip_special_tokens=False, max_tokens=10),
        *nulls("skip_special_tokens"),
        *both("truncate_prompt_tokens.3", truncate_prompt_tokens=3),
        *both("truncate_prompt_tokens.minus_1", truncate_prompt_tokens=-1),
        *nulls("truncate_prompt_tokens"),
        *both("truncate_prompt_tokens.minus_5", truncate_prompt_tokens=-5),
        *both("kv_transfer_params.empty", kv_transfer_params={}),
        *nulls("kv_transfer_params"),
        *both("n.1", n=1),
        *both("n.2_greedy", n=2),  # vLLM: n > 1 needs sampling
        *both("n.2", n=2, temperature=1.0, seed=11),
        *both("n.2", stream=True, n=2, temperature=1.0, seed=11),
        *both("n.zero", n=0),
        *nulls("n"),
        *both("n.wrong_type", n="two"),
        *both("use_beam_search.true", use_beam_search=True, n=2, max_tokens=3),
        *both("use_beam_search.false", use_beam_search=False),
        *nulls("use_beam_search"),
        *both("length_penalty.0_5", length_penalty=0.5),
        *nulls("length_penalty"),
    ]


def _logprobs() -> list[Case]:
    return [
        chat("logprobs.top_2", logprobs=True, top_logprobs=2),
        chat("logprobs.top_2", stream=True, logprobs=True, top_logprobs=2),
        chat("logprobs.true", logprobs=True),
        chat("logprobs.false", logprobs=False),
        chat("logprobs.null", max_tokens=1, logprobs=None),
        chat("logprobs.wrong_type", logprobs="x"),
        chat("logprobs.top_without_logprobs", top_logprobs=2),
        chat("logprobs.top_null", logprobs=True, top_logprobs=None),
        chat("logprobs.top_25", logprobs=True, top_logprobs=25),
        chat("logprobs.top_minus_2", logprobs=True, top_logprobs=-2),
        cmpl("logprobs.0", logprobs=0),
        cmpl("logprobs.2", logprobs=2),
        cmpl("logprobs.2", stream=True, logprobs=2),
        cmpl("logprobs.null", max_tokens=1, logprobs=None),
        cmpl("logprobs.minus_2", logprobs=-2),
        cmpl("logprobs.25", logprobs=25),
        *both("prompt_logprobs.1", prompt_logprobs=1),
        *both("prompt_logprobs.0", prompt_logprobs=0),
        *nulls("prompt_logprobs"),
        *both("prompt_logprobs.minus_2", prompt_logprobs=-2),
        *both("prompt_logprobs.2", prompt_logprobs=2),
        *both("prompt_logprobs.1", stream=True, prompt_logprobs=1),  # vLLM streams none: 400
        *both("prompt_logprobs.0", stream=True, prompt_logprobs=0),
        *both("prompt_logprobs.21", prompt_logprobs=21),
        *both("prompt_logprobs.minus_1", prompt_logprobs=-1),
        *both("prompt_logprobs.n_2", prompt_logprobs=1, n=2, temperature=1.0, seed=7),
        chat("prompt_logprobs.with_top_logprobs", prompt_logprobs=1, logprobs=True, top_logprobs=2),
        cmpl("prompt_logprobs.with_logprobs", prompt_logprobs=3, logprobs=1),
    ]


SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


# A structural tag in vLLM 0.32's current shape (an xgrammar format tree) and in the legacy one.
CITY_TAG = {
    "type": "tag",
    "begin": "<city>",
    "content": {"type": "json_schema", "json_schema": SCHEMA},
    "end": "</city>",
}
CITY_STRUCTURE = {"begin": "<city>", "schema": SCHEMA, "end": "</city>"}
LEGACY_TAG = {"type": "structural_tag", "structures": [CITY_STRUCTURE], "triggers": ["<city"]}
UNKNOWN_FORMAT = {"type": "structural_tag", "format": {"type": "bogus"}}  # xgrammar refuses it


def _structural_tags() -> list[Case]:
    tag = {"type": "structural_tag", "format": CITY_TAG}
    return [
        *both("response_format.structural_tag", response_format=tag, max_tokens=12),
        *both("response_format.structural_tag", stream=True, response_format=tag, max_tokens=12),
        *both("response_format.structural_tag_legacy", response_format=LEGACY_TAG, max_tokens=12),
        *both("response_format.structural_tag_malformed", response_format={"type": "structural_tag"}),
        *both("response_format.structural_tag_unknown_format", response_format=UNKNOWN_FORMAT),
        *both(
            "structured_outputs.structural_tag", structured_outputs={"structural_tag": json.dumps(tag)}, max_tokens=12
        ),
        *both("structured_outputs.structural_tag_not_json", structured_outputs={"structural_tag": "{"}),
        *both(
            "structured_outputs.structural_tag_unknown_format",
            structured_outputs={"structural_tag": json.dumps(UNKNOWN_FORMAT)},
        ),
    ]


def _structured() -> list[Case]:
    return [
        *both("response_format.text", response_format={"type": "text"}),
        *both("response_format.json_object", response_format={"type": "json_object"}, max_tokens=8),
        *both(
            "response_format.json_schema",
            response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA}},
            max_tokens=8,
        ),
        *nulls("response_format"),
        *both("response_format.bogus", response_format={"type": "bogus"}),
        *both("structured_outputs.regex", structured_outputs={"regex": "[0-9]{3}"}, max_tokens=8),
        *both("structured_outputs.choice", structured_outputs={"choice": ["yes", "no"]}),
        *nulls("structured_outputs"),
        *_structural_tags(),
        chat("tools.auto", tools=[TOOL]),
        chat("tools.choice_none", tools=[TOOL], tool_choice="none"),
        chat("tools.null", max_tokens=1, tools=None),
    ]


def _prompts() -> list[Case]:
    return [
        cmpl("prompt.token_ids", prompt=PROMPT_IDS),
        cmpl("prompt.token_ids", stream=True, prompt=PROMPT_IDS),
        cmpl("prompt.string_list_of_one", prompt=[PROMPT]),
        cmpl("prompt.empty_string", prompt=""),
        cmpl("prompt.empty_token_ids", prompt=[]),
        cmpl("prompt.token_past_vocab", prompt=[PAST_VOCAB]),
        cmpl("prompt.negative_token", prompt=[-1]),
        cmpl("echo.true", echo=True),
        cmpl("echo.true", stream=True, echo=True),
        cmpl("echo.null", max_tokens=1, echo=None),
        cmpl("echo.max_tokens_0", echo=True, max_tokens=0),
        # BASE asks for return_token_ids, with which vLLM echoes no text: these leave it off
        cmpl("echo.text", echo=True, return_token_ids=False),
        cmpl("echo.text", stream=True, echo=True, return_token_ids=False),
        cmpl("echo.logprobs_1", echo=True, logprobs=1, return_token_ids=False),
        cmpl("echo.logprobs_1", stream=True, echo=True, logprobs=1, return_token_ids=False),
        cmpl("echo.max_tokens_0_logprobs", echo=True, max_tokens=0, logprobs=0, return_token_ids=False),
        cmpl("echo.max_tokens_0", stream=True, echo=True, max_tokens=0, logprobs=0, return_token_ids=False),
        cmpl("echo.token_ids", echo=True, prompt=PROMPT_IDS, logprobs=0, return_token_ids=False),
        cmpl("echo.stop", echo=True, logprobs=0, stop=["Paris"], max_tokens=8, return_token_ids=False),
        cmpl("echo.n_2", echo=True, n=2, temperature=1.0, seed=3, return_token_ids=False),
        chat("echo.assistant_last", echo=True, messages=[*MESSAGES, {"role": "assistant", "content": "It is"}]),
        chat(
            "echo.assistant_last",
            stream=True,
            echo=True,
            messages=[*MESSAGES, {"role": "assistant", "content": "It is"}],
        ),
        chat("echo.user_last", echo=True),
        cmpl("suffix.string", suffix="!"),
        cmpl("best_of.1", best_of=1),
        chat("messages.system", messages=[{"role": "system", "content": "Be brief."}, *MESSAGES]),
        chat("messages.content_parts", messages=[{"role": "user", "content": [{"type": "text", "text": "Hi!"}]}]),
        chat(
            "messages.multi_turn",
            messages=[*MESSAGES, {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "Why?"}],
        ),
        chat("messages.empty", messages=[]),
        chat("messages.bad_role", messages=[{"role": "bogus", "content": "Hi"}]),
        *_chat_rendering(),
        chat("messages.absent", messages=ABSENT),
    ]


CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
CONTINUED = [*MESSAGES, {"role": "assistant", "content": "The capital"}]


def _chat_rendering() -> list[Case]:
    """What reaches the chat template (issue #14 item 1): compared through prompt_token_ids."""
    two_parts = [{"type": "text", "text": "Hi!"}, {"type": "text", "text": "Be brief."}]
    return [
        chat("messages.two_text_parts", messages=[{"role": "user", "content": two_parts}]),
        chat(
            "messages.text_like_parts", messages=[{"role": "user", "content": [{"type": "input_text", "text": "Hi"}]}]
        ),
        chat("messages.name", messages=[{"role": "user", "content": "Hi", "name": "ann"}]),
        chat("messages.developer", messages=[{"role": "developer", "content": "Be brief."}, *MESSAGES]),
        chat("messages.custom_role", messages=[{"role": "critic", "content": "Hmm."}, *MESSAGES]),
        chat(
            "messages.tool_round_trip",
            messages=[
                *MESSAGES,
                {"role": "assistant", "content": None, "tool_calls": [CALL], "reasoning": "Look it up."},
                {"role": "tool", "content": "Paris", "tool_call_id": "call_1"},
            ],
        ),
        chat("add_generation_prompt.false", add_generation_prompt=False),
        chat(
            "continue_final_message.true", messages=CONTINUED, add_generation_prompt=False, continue_final_message=True
        ),
        chat("continue_final_message.with_generation_prompt", messages=CONTINUED, continue_final_message=True),
        chat("chat_template_kwargs.unknown", chat_template_kwargs={"foo": 1}),
        chat("documents.one", documents=[{"title": "Atlas", "text": "Paris is in France."}]),
        chat("reasoning_effort.low", reasoning_effort="low"),
        chat("chat_template.untrusted", chat_template="{{ messages }}"),
        chat("tools.required", tools=[TOOL], tool_choice="required"),
        chat("tools.named", tools=[TOOL], tool_choice={"type": "function", "function": {"name": "get_weather"}}),
        chat("tools.named_unknown", tools=[TOOL], tool_choice={"type": "function", "function": {"name": "nope"}}),
        chat("tools.empty", tools=[]),
        chat("tools.choice_without_tools", tool_choice="auto"),
        *_chat_rendering_more(),
    ]


def _chat_rendering_more() -> list[Case]:
    """More of issue #14: message shapes, template options, and text-level details."""
    assistant_parts = [{"type": "text", "text": "It is"}, {"type": "refusal", "refusal": "no"}]
    return [
        chat(
            "messages.system_parts",
            messages=[{"role": "system", "content": [{"type": "text", "text": "Brief."}]}, *MESSAGES],
        ),
        chat(
            "messages.thinking_part", messages=[{"role": "user", "content": [{"type": "thinking", "thinking": "Hm."}]}]
        ),
        chat(
            "messages.assistant_parts",
            messages=[*MESSAGES, {"role": "assistant", "content": assistant_parts}, *MESSAGES],
        ),
        chat("messages.tool_parts", messages=[*MESSAGES, {"role": "tool", "content": [{"type": "text", "text": "x"}]}]),
        chat("messages.bare_string_part", messages=[{"role": "user", "content": ["Hi"]}]),
        chat("messages.empty_assistant", messages=[*MESSAGES, {"role": "assistant", "content": ""}, *SHORT_MESSAGES]),
        chat("messages.null_user_content", messages=[{"role": "user", "content": None}]),
        chat(
            "messages.two_systems",
            messages=[{"role": "system", "content": "A."}, {"role": "system", "content": "B."}, *MESSAGES],
        ),
        chat("messages.developer_last", messages=[*MESSAGES, {"role": "developer", "content": "Short."}]),
        chat(
            "messages.name_on_assistant",
            messages=[*MESSAGES, {"role": "assistant", "content": "Paris.", "name": "bot"}, *SHORT_MESSAGES],
        ),
        chat("add_special_tokens.true", add_special_tokens=True),
        chat("return_prompt_text.true", return_prompt_text=True),
        chat("return_prompt_text.true", stream=True, return_prompt_text=True),
        chat("documents.two", documents=[{"title": "a", "text": "x"}, {"title": "b", "text": "y"}]),
        chat("reasoning_effort.none", reasoning_effort="none"),
        chat("reasoning_effort.bogus", reasoning_effort="extreme"),
        chat("chat_template_kwargs.null", chat_template_kwargs=None),
        chat("chat_template_kwargs.chat_template_key", chat_template_kwargs={"chat_template": "{{ x }}"}),
        chat("echo.no_generation_prompt", echo=True, messages=CONTINUED, add_generation_prompt=False),
        chat(
            "continue_final_message.stream",
            stream=True,
            messages=CONTINUED,
            add_generation_prompt=False,
            continue_final_message=True,
        ),
        chat(
            "tools.none_history",
            messages=[
                *MESSAGES,
                {"role": "assistant", "tool_calls": [CALL]},
                {"role": "tool", "content": "Paris", "tool_call_id": "call_1"},
            ],
            tools=[TOOL],
            tool_choice="none",
        ),
        chat("tools.wrong_type", tools=[{"type": "retrieval"}]),
        *both("min_tokens.with_stop", stop=[",", "."], min_tokens=3, max_tokens=10),
        *both("stop.overlapping", stop=["Paris", "is"], max_tokens=10),
        *both("stream_options.continuous_usage_alone", stream=True, stream_options={"continuous_usage_stats": True}),
        *both("spaces_between_special_tokens.false", spaces_between_special_tokens=False),
        *both("request_id.custom", request_id="parity-123"),
    ]


def _batches() -> list[Case]:
    """Completions batches: one choice per prompt and choice, numbered prompt index * n + i."""
    ids, texts = [PROMPT_IDS, PROMPT_IDS[:3]], [PROMPT, "Hello"]
    seeded: dict[str, Any] = {"n": 2, "temperature": 1.0, "seed": 11}
    usage: dict[str, Any] = {"stream_options": {"include_usage": True}}
    return [
        cmpl("prompt.token_ids_batch", prompt=ids),
        cmpl("prompt.token_ids_batch", stream=True, prompt=ids, **usage),
        cmpl("prompt.string_batch", prompt=texts),
        cmpl("prompt.string_batch", stream=True, prompt=texts, **usage),
        cmpl("prompt.token_ids_batch_n_2", prompt=ids, **seeded),
        cmpl("prompt.token_ids_batch_n_2", stream=True, prompt=ids, **seeded, **usage),
        cmpl("prompt.string_batch_n_2", prompt=texts, **seeded),
        cmpl("prompt.string_batch_n_2", stream=True, prompt=texts, **seeded, **usage),
        cmpl("prompt.batch_with_empty_string", prompt=[PROMPT, ""]),
        cmpl("prompt.batch_echo", prompt=texts, echo=True, logprobs=1, return_token_ids=False),
        cmpl("prompt.batch_echo", stream=True, prompt=texts, echo=True, logprobs=1, return_token_ids=False),
        cmpl("prompt.batch_prompt_logprobs", prompt=texts, prompt_logprobs=1),
        cmpl("prompt.batch_stop", prompt=texts, stop=[",", "."], max_tokens=8),
        cmpl("suffix.batch", prompt=texts, suffix="!"),
    ]


def battery() -> list[Case]:
    """Every case, ids unique."""
    cases = [
        *_basics(),
        *_temperature_and_seed(),
        *_truncation(),
        *_lengths(),
        *_stops(),
        *_penalties(),
        *_token_constraints(),
        *_request_options(),
        *_logprobs(),
        *_structured(),
        *_prompts(),
        *_batches(),
    ]
    ids = [c.id for c in cases]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ValueError(f"duplicate case ids: {dupes}")
    return cases


WEATHER = [{"role": "user", "content": "What is the weather in Paris? Call the tool."}]
STRICT_TOOL = {"type": "function", "function": {**cast("dict[str, Any]", TOOL["function"]), "strict": True}}
OTHER_TOOL = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}}},
}
NAMED = {"type": "function", "function": {"name": "get_weather"}}
ONE_CALL: dict[str, Any] = {"parallel_tool_calls": False, "max_tokens": 40}


def tools_battery() -> list[Case]:
    """Both servers started with the same tool-capable chat template (ChatML, Hermes tools:
    tests/templates/hermes_tools.jinja) and ``--tool-call-parser hermes
    --enable-auto-tool-choice`` (issue #14): what reaches the template, and how the output is
    split into content and tool calls, whole and streamed."""
    history = [
        *WEATHER,
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "content": '{"sky": "clear"}', "tool_call_id": "call_1"},
    ]
    off: dict[str, Any] = {"chat_template_kwargs": {"enable_thinking": False}}
    cases = [
        chat("suite_tools.plain", max_tokens=12),
        chat("suite_tools.plain", stream=True, max_tokens=12),
        chat("suite_tools.thinking_off", max_tokens=12, **off),
        chat("suite_tools.thinking_off", stream=True, max_tokens=12, **off),
        chat("suite_tools.reasoning_effort_none", max_tokens=12, reasoning_effort="none"),
        chat("suite_tools.include_reasoning_false", max_tokens=12, include_reasoning=False, logprobs=True),
        chat("suite_tools.include_reasoning_false", stream=True, max_tokens=12, include_reasoning=False),
        chat("suite_tools.system", messages=[{"role": "system", "content": "Be brief."}, *MESSAGES], max_tokens=8),
        chat("suite_tools.auto", messages=WEATHER, tools=[TOOL], max_tokens=40, **off),
        chat("suite_tools.auto", stream=True, messages=WEATHER, tools=[TOOL], max_tokens=40, **off),
        chat("suite_tools.auto_thinking", messages=WEATHER, tools=[TOOL], max_tokens=40),
        chat("suite_tools.none", messages=WEATHER, tools=[TOOL], tool_choice="none", max_tokens=20, **off),
        chat("suite_tools.required", messages=WEATHER, tools=[TOOL], tool_choice="required", **ONE_CALL, **off),
        chat(
            "suite_tools.required",
            stream=True,
            messages=WEATHER,
            tools=[TOOL],
            tool_choice="required",
            **ONE_CALL,
            **off,
        ),
        chat("suite_tools.named", messages=WEATHER, tools=[TOOL], tool_choice=NAMED, max_tokens=40, **off),
        chat("suite_tools.named", stream=True, messages=WEATHER, tools=[TOOL], tool_choice=NAMED, max_tokens=40, **off),
        chat("suite_tools.auto_strict", messages=WEATHER, tools=[STRICT_TOOL], max_tokens=40, **off),
        chat("suite_tools.auto_strict", stream=True, messages=WEATHER, tools=[STRICT_TOOL], max_tokens=40, **off),
        chat("suite_tools.auto_single", messages=WEATHER, tools=[TOOL], **ONE_CALL, **off),
        chat("suite_tools.required_strict", messages=WEATHER, tools=[STRICT_TOOL], tool_choice="required", **ONE_CALL),
        chat(
            "suite_tools.required_strict",
            stream=True,
            messages=WEATHER,
            tools=[STRICT_TOOL],
            tool_choice="required",
            **ONE_CALL,
            **off,
        ),
        chat("suite_tools.named_strict", messages=WEATHER, tools=[STRICT_TOOL], tool_choice=NAMED, **ONE_CALL, **off),
        chat(
            "suite_tools.required_two_tools", messages=WEATHER, tools=[TOOL, OTHER_TOOL], tool_choice="required", **off
        ),
        chat(
            "suite_tools.auto_strict_with_schema",
            messages=WEATHER,
            tools=[STRICT_TOOL],
            response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}},
            max_tokens=40,
            **off,
        ),
        chat("suite_tools.named_unknown", tools=[TOOL], tool_choice={"type": "function", "function": {"name": "x"}}),
        chat("suite_tools.history", messages=history, tools=[TOOL], tool_choice="none", max_tokens=16, **off),
        chat("suite_tools.history_auto", messages=history, tools=[TOOL], max_tokens=24, **off),
        chat("suite_tools.developer", messages=[{"role": "developer", "content": "Be brief."}, *MESSAGES], **off),
        chat("suite_tools.names", messages=[{"role": "user", "content": "Hi", "name": "ann"}], max_tokens=8, **off),
        chat("suite_tools.continue", messages=CONTINUED, add_generation_prompt=False, continue_final_message=True),
        chat("suite_tools.n_2", n=2, temperature=1.0, seed=5, max_tokens=12),
        chat("suite_tools.empty_tools", tools=[]),
    ]
    ids = [c.id for c in cases]
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate case ids in the tools suite")
    return cases


SUITES: dict[str, Callable[[], list[Case]]] = {"default": battery, "tools": tools_battery}
