"""Reasoning and tool calls in chat responses (router/api/chat_output.py over router/parsers):
the server's --reasoning-parser / --tool-call-parser applied to the decode output, whole and
streamed, with vLLM's fields and finish reasons; forced tool choices constrain the output."""

from __future__ import annotations

import json
from typing import Any

import pytest

from router.api.tool_grammar import named_schema, required_schema
from router.chat import ChatOptions
from router.parsers import reasoning
from router.tokenizer import Tokenizer
from tests.helpers.router import ScriptedDecode, ScriptedPrefill, ScriptedRouter, scripted_router, tiny_tokenizer

TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}
HERMES_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    return tiny_tokenizer(tmp_path_factory.mktemp("tiny"))


def cluster(tok: Tokenizer, output: str, options: ChatOptions) -> tuple[ScriptedRouter, ScriptedDecode]:
    decode = ScriptedDecode(tok.encode(output, add_special_tokens=False))
    r = scripted_router(tok, [ScriptedPrefill()], [decode], chat=options, max_model_len=4096)
    return r, decode


def ask(r: ScriptedRouter, stream: bool = False, **fields: Any) -> Any:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 300, **fields}
    resp = r.client.post("/v1/chat/completions", json={**body, "stream": stream})
    assert resp.status_code == 200, resp.text
    if not stream:
        return resp.json()
    return [json.loads(ln[6:]) for ln in resp.text.splitlines() if ln.startswith("data: {")]


def assembled(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """A streamed choice put together as a client does (tool-call deltas merged by index)."""
    out: dict[str, Any] = {"content": "", "reasoning": "", "tool_calls": {}, "finish_reason": None}
    for c in chunks:
        for choice in c["choices"]:
            delta = choice["delta"]
            out["content"] += delta.get("content") or ""
            out["reasoning"] += delta.get("reasoning") or ""
            for call in delta.get("tool_calls", []):
                slot = out["tool_calls"].setdefault(call["index"], {"function": {"arguments": ""}})
                for key in ("id", "type"):
                    if key in call:
                        slot[key] = call[key]
                fn = call.get("function", {})
                if "name" in fn:
                    slot["function"]["name"] = fn["name"]
                slot["function"]["arguments"] += fn.get("arguments") or ""
            out["finish_reason"] = choice["finish_reason"] or out["finish_reason"]
    out["tool_calls"] = [out["tool_calls"][i] for i in sorted(out["tool_calls"])]
    return out


def test_reasoning_is_split_from_the_content_whole_and_streamed(tok: Tokenizer) -> None:
    r, _ = cluster(tok, "<think>Paris is in France.</think>Paris.", ChatOptions(reasoning_parser="deepseek_r1"))
    message = ask(r)["choices"][0]["message"]
    assert (message["reasoning"], message["content"]) == ("Paris is in France.", "Paris.")
    streamed = assembled(ask(r, stream=True))
    assert (streamed["reasoning"], streamed["content"]) == ("Paris is in France.", "Paris.")
    hidden = ask(r, include_reasoning=False, logprobs=True)["choices"][0]
    assert hidden["message"]["reasoning"] is None and hidden["message"]["content"] == "Paris."
    assert hidden["logprobs"] is None  # vLLM leaves logprobs out with the reasoning


def test_auto_tool_calls_are_parsed_and_finish_with_tool_calls(tok: Tokenizer) -> None:
    options = ChatOptions(tool_call_parser="hermes", enable_auto_tool_choice=True)
    r, decode = cluster(tok, HERMES_CALL, options)
    choice = ask(r, tools=[TOOL])["choices"][0]
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("chatcmpl-tool-")
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert choice["finish_reason"] == "tool_calls" and not choice["message"]["content"]
    assert decode.calls[-1]["spec"].structured_outputs == ""  # auto: the model decides, unconstrained
    streamed = assembled(ask(r, stream=True, tools=[TOOL]))
    assert [c["function"] for c in streamed["tool_calls"]] == [call["function"]]
    assert streamed["finish_reason"] == "tool_calls"
    plain, _ = cluster(tok, "No tool needed.", options)
    answer = ask(plain, tools=[TOOL])["choices"][0]
    assert answer["message"]["content"] == "No tool needed." and answer["finish_reason"] == "stop"
    assert "tool_calls" not in answer["message"]


def test_a_named_tool_choice_constrains_the_output_to_its_arguments(tok: Tokenizer) -> None:
    """A parser without a structural-tag format (pythonic): the output is the arguments."""
    r, decode = cluster(tok, '{"city": "Paris"}', ChatOptions(tool_call_parser="pythonic"))
    named = {"type": "function", "function": {"name": "get_weather"}}
    choice = ask(r, tools=[TOOL], tool_choice=named)["choices"][0]
    assert json.loads(decode.calls[-1]["spec"].structured_outputs) == {"json": named_schema([TOOL], "get_weather")}
    (call,) = choice["message"]["tool_calls"]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert choice["finish_reason"] == "stop" and choice["message"]["content"] == ""  # as vLLM for a named tool
    streamed = assembled(ask(r, stream=True, tools=[TOOL], tool_choice=named))
    assert [c["function"] for c in streamed["tool_calls"]] == [call["function"]]


def test_required_tool_choice_constrains_the_output_to_a_list_of_calls(tok: Tokenizer) -> None:
    """A parser without a structural-tag format (mistral): a JSON list of calls."""
    output = '[{"name": "get_weather", "parameters": {"city": "Paris"}}]'
    r, decode = cluster(tok, output, ChatOptions(tool_call_parser="mistral"))
    choice = ask(r, tools=[TOOL], tool_choice="required", parallel_tool_calls=False)["choices"][0]
    schema = json.loads(decode.calls[-1]["spec"].structured_outputs)["json"]
    assert schema == required_schema([TOOL], False) and schema["maxItems"] == 1
    assert [c["function"] for c in choice["message"]["tool_calls"]] == [
        {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    ]
    assert choice["finish_reason"] == "tool_calls"
    streamed = assembled(ask(r, stream=True, tools=[TOOL], tool_choice="required"))
    assert [c["function"]["name"] for c in streamed["tool_calls"]] == ["get_weather"]
    assert streamed["finish_reason"] == "tool_calls"


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_hermes_forced_calls_are_constrained_and_read_in_its_own_syntax(tok: Tokenizer, choice: Any) -> None:
    """hermes has a structural-tag format: a forced call is written as an auto one would be
    (``<tool_call>`` envelopes; the arguments free unless the tool is strict) and read by
    the parser; ``required`` finishes with "tool_calls", a named tool with "stop"."""
    options = ChatOptions(tool_call_parser="hermes", enable_auto_tool_choice=True)
    r, decode = cluster(tok, HERMES_CALL, options)
    choice_out = ask(r, tools=[TOOL], tool_choice=choice, parallel_tool_calls=False)["choices"][0]
    tag = json.loads(json.loads(decode.calls[-1]["spec"].structured_outputs)["structural_tag"])
    assert tag["format"]["type"] == "tags_with_separator" and tag["format"]["stop_after_first"]
    assert {t["begin"] for t in tag["format"]["tags"]} == {
        '<tool_call>\n{"name": "get_weather", "arguments": ',
        '<tool_call>{"name": "get_weather", "arguments": ',
    }
    (call,) = choice_out["message"]["tool_calls"]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert choice_out["message"]["content"] == ""
    finish = "tool_calls" if choice == "required" else "stop"
    assert choice_out["finish_reason"] == finish
    streamed = assembled(ask(r, stream=True, tools=[TOOL], tool_choice=choice))
    assert [c["function"] for c in streamed["tool_calls"]] == [call["function"]]
    assert streamed["finish_reason"] == finish and not streamed["content"]


def test_a_strict_tool_constrains_auto_calls_and_a_plain_one_does_not(tok: Tokenizer) -> None:
    options = ChatOptions(tool_call_parser="hermes", enable_auto_tool_choice=True)
    r, decode = cluster(tok, HERMES_CALL, options)
    ask(r, tools=[TOOL])
    assert decode.calls[-1]["spec"].structured_outputs == ""
    strict = {"type": "function", "function": {**TOOL["function"], "strict": True}}
    choice = ask(r, tools=[strict])["choices"][0]
    tag = json.loads(json.loads(decode.calls[-1]["spec"].structured_outputs)["structural_tag"])
    assert tag["format"]["type"] == "triggered_tags" and tag["format"]["triggers"] == ["<tool_call>"]
    assert tag["format"]["tags"][0]["content"]["json_schema"] == TOOL["function"]["parameters"]
    assert choice["finish_reason"] == "tool_calls"


def test_a_forced_tool_choice_and_another_constraint_are_a_400(tok: Tokenizer) -> None:
    r, decode = cluster(tok, "{}", ChatOptions(tool_call_parser="hermes"))
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "tools": [TOOL]}
    body |= {"tool_choice": "required", "response_format": {"type": "json_object"}}
    resp = r.client.post("/v1/chat/completions", json=body)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "structured_outputs"
    assert decode.calls == []


def test_unknown_parser_names_are_refused_at_start(tmp_path: Any) -> None:
    from router import config

    with pytest.raises(ValueError, match="tool_call_parser"):
        config.from_args(["--decode", "127.0.0.1:1", "--tool-call-parser", "nope"])
    with pytest.raises(ValueError, match="reasoning_parser"):
        config.from_args(["--decode", "127.0.0.1:1", "--reasoning-parser", "nope"])
    with pytest.raises(ValueError, match="enable_auto_tool_choice"):
        config.from_args(["--decode", "127.0.0.1:1", "--enable-auto-tool-choice"])
    ok = config.from_args(["--decode", "127.0.0.1:1", "--tool-call-parser", "hermes", "--enable-auto-tool-choice"])
    assert ok.chat.tool_call_parser == "hermes" and ok.chat.enable_auto_tool_choice


def test_reasoning_tokens_are_reported_in_usage_whole_and_streamed(tok: Tokenizer) -> None:
    text = "<think>Paris is in France.</think>Paris."
    r, _ = cluster(tok, text, ChatOptions(reasoning_parser="qwen3"))
    ids = tok.encode(text, add_special_tokens=False)
    expected = reasoning.qwen3().reasoning_tokens(text, [tok.decode([t], skip_special_tokens=False) for t in ids])
    assert expected > 0
    usage = ask(r)["usage"]
    assert usage["completion_tokens_details"] == {"reasoning_tokens": expected}
    chunks = ask(r, stream=True, stream_options={"include_usage": True, "continuous_usage_stats": True})
    counts = [c["usage"]["completion_tokens_details"]["reasoning_tokens"] for c in chunks if c["choices"]]
    assert counts == sorted(counts) and counts[-1] == expected  # grows as the reasoning streams
    assert chunks[-1]["usage"]["completion_tokens_details"] == {"reasoning_tokens": expected}
    plain, _ = cluster(tok, text, ChatOptions())  # no reasoning parser: no details, as vLLM
    assert ask(plain)["usage"]["completion_tokens_details"] is None


def test_echo_comes_before_the_parsed_content(tok: Tokenizer) -> None:
    """The parsers read the output only; the echoed last message is put before the content."""
    options = ChatOptions(tool_call_parser="hermes", enable_auto_tool_choice=True, reasoning_parser="qwen3")
    r, _ = cluster(tok, "<think>r</think>done", options)
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "<think>"}]
    body = {"messages": messages, "echo": True, "add_generation_prompt": False, "continue_final_message": True}
    message = ask(r, **body)["choices"][0]["message"]
    assert (message["reasoning"], message["content"]) == ("r", "<think>done")
    streamed = assembled(ask(r, stream=True, **body))
    assert (streamed["reasoning"], streamed["content"]) == ("r", "<think>done")


def test_parallel_tool_calls_false_keeps_the_first_call(tok: Tokenizer) -> None:
    options = ChatOptions(tool_call_parser="hermes", enable_auto_tool_choice=True)
    r, _ = cluster(tok, HERMES_CALL + HERMES_CALL.replace("Paris", "Lyon"), options)
    assert len(ask(r, tools=[TOOL])["choices"][0]["message"]["tool_calls"]) == 2
    single = ask(r, tools=[TOOL], parallel_tool_calls=False)["choices"][0]["message"]["tool_calls"]
    assert [c["function"]["arguments"] for c in single] == ['{"city": "Paris"}']
    streamed = assembled(ask(r, stream=True, tools=[TOOL], parallel_tool_calls=False))
    assert [c["function"]["arguments"] for c in streamed["tool_calls"]] == ['{"city": "Paris"}']


@pytest.mark.parametrize(
    ("options", "fields", "ended"),
    [
        (ChatOptions(), {}, None),  # no reasoning parser: the engines' own decide, as vllm serve without one
        (ChatOptions(reasoning_parser="qwen3"), {}, False),  # output starts in reasoning: grammars wait
        (ChatOptions(reasoning_parser="qwen3"), {"chat_template_kwargs": {"enable_thinking": False}}, True),
        (ChatOptions(reasoning_parser="qwen3"), {"include_reasoning": False}, True),
    ],
)
def test_the_workers_learn_whether_reasoning_ended_as_vllms_server_resolves_it(
    tok: Tokenizer, options: ChatOptions, fields: dict[str, Any], ended: bool | None
) -> None:
    r, decode = cluster(tok, "ok", options)
    ask(r, **fields)
    assert decode.calls[-1]["spec"].reasoning_ended is ended
