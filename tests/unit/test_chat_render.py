"""Chat rendering (router/chat.py) through the HTTP route: what reaches the chat template,
and what is refused, as vLLM's server renders a chat request. The rendered prompt is read
back from the ids the scripted decode worker was sent. tests/contract/test_chat_render.py
holds the same rendering against vLLM's own renderer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from router.chat import ChatOptions, load_template, loops_over_content
from router.tokenizer import Tokenizer
from tests.helpers.router import ScriptedDecode, ScriptedPrefill, ScriptedRouter, scripted_router, tiny_tokenizer

HERMES = Path(__file__).resolve().parents[1] / "templates/hermes_tools.jinja"
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
PARTS_TEMPLATE = "{% for m in messages %}{% for p in m['content'] %}[{{ p['text'] }}]{% endfor %}{% endfor %}"


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    return tiny_tokenizer(tmp_path_factory.mktemp("tiny"))


def cluster(tok: Tokenizer, options: ChatOptions | None = None) -> tuple[ScriptedRouter, ScriptedDecode]:
    decode = ScriptedDecode(tok.encode("ok", add_special_tokens=False))
    prefill = [ScriptedPrefill(kv={"remote_block_ids": [[1]]})]
    r = scripted_router(tok, prefill, [decode], chat=options, max_model_len=4096)  # a byte-level tokenizer
    return r, decode


def hermes() -> ChatOptions:
    return ChatOptions(template=load_template(str(HERMES)))


def rendered(tok: Tokenizer, options: ChatOptions | None = None, **fields: Any) -> str:
    """The prompt the decode worker got for a chat request, as text."""
    r, decode = cluster(tok, options)
    body = {"model": "tiny", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}], **fields}
    resp = r.client.post("/v1/chat/completions", json=body)
    assert resp.status_code == 200, resp.text
    return tok.decode(decode.calls[-1]["prompt"], skip_special_tokens=False)


def refused(tok: Tokenizer, options: ChatOptions | None = None, **fields: Any) -> dict[str, Any]:
    r, decode = cluster(tok, options)
    body = {"model": "tiny", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}], **fields}
    resp = r.client.post("/v1/chat/completions", json=body)
    assert resp.status_code == 400, resp.text
    assert decode.calls == []
    return dict(resp.json()["error"])


def test_text_parts_are_joined_with_newlines_for_a_string_template(tok: Tokenizer) -> None:
    parts = [{"type": "text", "text": "first"}, {"type": "thinking", "thinking": "second"}]
    assert "first\nsecond" in rendered(tok, messages=[{"role": "user", "content": parts}])
    # a role vLLM's request models do not type takes any text-like part, and bare strings
    custom = [{"type": "input_text", "text": "a"}, "b"]
    assert "a\nb" in rendered(tok, messages=[{"role": "critic", "content": custom}])


@pytest.mark.parametrize("part", [{"type": "input_text", "text": "a"}, {"type": "output_text", "text": "a"}, "a"])
def test_parts_outside_openais_types_are_refused_for_its_roles(tok: Tokenizer, part: Any) -> None:
    """vLLM's request models type a user/assistant/system/tool/developer message's parts as
    OpenAI's chat parts: Responses-API parts and bare strings are a 400 there."""
    err = refused(tok, messages=[{"role": "user", "content": [part]}])
    assert "messages.0.content.0" in err["message"]


def test_a_template_that_loops_over_content_gets_the_parts(tok: Tokenizer) -> None:
    assert loops_over_content(PARTS_TEMPLATE) and not loops_over_content(tok.chat_template())
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    text = rendered(tok, ChatOptions(template=PARTS_TEMPLATE), messages=[{"role": "user", "content": parts}])
    assert text == "[a][b]"
    forced = ChatOptions(template="{{ messages[0]['content'] }}", content_format="openai")
    assert rendered(tok, forced, messages=[{"role": "user", "content": "x"}]) == str([{"type": "text", "text": "x"}])


def test_names_tool_calls_tool_results_and_reasoning_reach_the_template(tok: Tokenizer) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    messages = [
        {"role": "user", "content": "Weather?", "name": "ann"},
        {"role": "assistant", "content": None, "tool_calls": [call], "reasoning": "I should call it."},
        {"role": "tool", "content": [{"type": "text", "text": "18C"}], "tool_call_id": "call_1"},
    ]
    text = rendered(tok, hermes(), messages=messages)
    assert "<|im_start|>user name=ann\nWeather?" in text
    assert "<think>\nI should call it.\n</think>" in text
    # arguments reach the template as an object (tojson of a dict), not the client's JSON string
    assert '{"name": "get_weather", "arguments": {"city": "Paris"}}' in text
    assert '<tool_response id="call_1">\n18C\n</tool_response>' in text


def test_malformed_tool_call_arguments_become_an_empty_object(tok: Tokenizer) -> None:
    call = {"type": "function", "function": {"name": "f", "arguments": "{not json"}}
    text = rendered(
        tok, hermes(), messages=[{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [call]}]
    )
    assert '"arguments": {}' in text


def test_tools_are_rendered_when_the_choice_is_none(tok: Tokenizer) -> None:
    text = rendered(tok, hermes(), tools=[TOOL], tool_choice="none")
    # each tool as vLLM's model dumps it: an unset description as null
    function = '{"name": "get_weather", "description": null, "parameters": {"type": "object"}}'
    assert f'<tools>\n{{"type": "function", "function": {function}}}\n</tools>' in text
    assert "get_weather" not in rendered(tok, hermes())


@pytest.mark.parametrize(
    ("fields", "param", "says"),
    [
        ({"tools": [TOOL]}, None, '"auto" tool choice requires'),  # tools alone mean "auto"
        ({"tools": [TOOL], "tool_choice": "required"}, None, 'tool_choice="required" requires --tool-call-parser'),
        (
            {"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
            None,
            'function "get_weather" requires',
        ),
        ({"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice", "match"),
        ({"tool_choice": "auto"}, "tool_choice", "`tools` must be set"),
        ({"tools": []}, "tools", "must not be an empty array"),
    ],
)
def test_tool_choices_that_need_a_parser_are_refused_as_vllm_without_one(
    tok: Tokenizer, fields: dict[str, Any], param: str | None, says: str
) -> None:
    err = refused(tok, hermes(), **fields)
    assert err["param"] == param and says in err["message"]


def test_a_developer_message_becomes_the_system_message_when_the_template_has_no_developer_role(tok: Tokenizer) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "developer", "content": "Answer in French."},
    ]
    text = rendered(tok, hermes(), messages=messages)
    assert text.startswith("<|im_start|>system\nBe brief.\n\nAnswer in French.<|im_end|>\n<|im_start|>user\nhi")
    assert "developer" not in text


def test_a_role_vllm_does_not_know_goes_to_the_template(tok: Tokenizer) -> None:
    assert "<|im_start|>critic\nhmm" in rendered(tok, hermes(), messages=[{"role": "critic", "content": "hmm"}])


def test_generation_prompt_and_continuing_the_final_message(tok: Tokenizer) -> None:
    base = [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hel"}]
    assert rendered(tok, hermes(), messages=base[:1]).endswith("<|im_start|>assistant\n")
    assert not rendered(tok, hermes(), messages=base[:1], add_generation_prompt=False).endswith("assistant\n")
    continued = rendered(tok, hermes(), messages=base, add_generation_prompt=False, continue_final_message=True)
    assert continued.endswith("<|im_start|>assistant\nHel")  # no end of turn: the model goes on from "Hel"
    both = refused(tok, hermes(), messages=base, continue_final_message=True)  # add_generation_prompt defaults on
    assert "Cannot set both" in both["message"]


def test_template_kwargs_and_reasoning_effort(tok: Tokenizer) -> None:
    off = rendered(tok, hermes(), chat_template_kwargs={"enable_thinking": False, "unknown_knob": 1})
    assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert rendered(tok, hermes(), reasoning_effort="none") == off  # reasoning_effort none turns thinking off
    assert rendered(tok, hermes(), reasoning_effort="high").endswith("<|im_start|>assistant\n")
    assert refused(tok, hermes(), chat_template_kwargs={"tokenize": True})["param"] == "chat_template_kwargs"


def test_a_request_template_needs_the_trust_flag(tok: Tokenizer) -> None:
    mine = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    err = refused(tok, chat_template=mine)
    assert err["param"] == "chat_template" and "--trust-request-chat-template" in err["message"]
    assert rendered(tok, ChatOptions(trust_request_template=True), chat_template=mine) == "<user>hi"


@pytest.mark.parametrize(
    ("part", "param"),
    [
        ({"type": "image_url", "image_url": {"url": "http://x/cat.png"}}, "messages.0.content.1.type"),
        ({"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}, "messages.0.content.1.type"),
        ({"type": "hologram"}, "messages.0.content.1.type"),
    ],
)
def test_parts_the_router_cannot_serve_are_refused_naming_the_part(
    tok: Tokenizer, part: dict[str, Any], param: str
) -> None:
    content = [{"type": "text", "text": "Look:"}, part]
    assert refused(tok, messages=[{"role": "user", "content": content}])["param"] == param


def test_a_template_that_raises_is_a_400_with_its_reason(tok: Tokenizer) -> None:
    strict = ChatOptions(template="{{ raise_exception('roles must alternate') }}")
    err = refused(tok, strict)
    assert "roles must alternate" in err["message"] and "Traceback" not in err["message"]


def test_the_router_flags_reach_the_options(tmp_path: Path) -> None:
    from router import config

    (tmp_path / "t.jinja").write_text("{{ messages[0]['content'] }}")
    base = ["--decode", "127.0.0.1:1", "--chat-template", str(tmp_path / "t.jinja")]
    cfg = config.from_args([*base, "--trust-request-chat-template", "--chat-template-content-format", "openai"])
    assert cfg.chat == ChatOptions("{{ messages[0]['content'] }}", True, "openai")
    assert config.from_args(["--decode", "127.0.0.1:1", "--chat-template", "{{ x }}"]).chat.template == "{{ x }}"
    with pytest.raises(ValueError, match="chat template"):
        config.from_args(["--decode", "127.0.0.1:1", "--chat-template", "no_such_file.jinja"])


@pytest.mark.parametrize(
    "message",
    [{"role": "user", "content": None}, {"role": "user"}, {"role": "critic", "content": None}, {"role": "tool"}],
)
def test_content_may_be_null_or_absent_only_where_vllm_allows(tok: Tokenizer, message: dict[str, Any]) -> None:
    """vLLM's request models: an assistant's content may be null or absent, a custom role's
    absent; OpenAI's other roles need it."""
    assert refused(tok, messages=[message])["param"] == "messages"


def test_an_assistant_without_content_and_a_custom_role_without_it_render(tok: Tokenizer) -> None:
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None}, {"role": "critic"}]
    assert "<|im_start|>critic\n" in rendered(tok, hermes(), messages=messages)
