"""The router constrains tool calls as vLLM 0.32's chat server does: for each parser with a
structural-tag format, tool choice, strict level, ``parallel_tool_calls`` and the request's
own structured output, router/api/tool_grammar.py builds the structural tag that vLLM's
``_apply_structural_tag`` (vllm/parser/abstract_parser.py) puts on the same request."""

from __future__ import annotations

import functools
import json
import types
from typing import Any

import pytest

from router.api import tool_grammar

vllm_parser = pytest.importorskip("vllm.parser.abstract_parser")
vllm_protocol = pytest.importorskip("vllm.entrypoints.openai.chat_completion.protocol")
vllm_tools = pytest.importorskip("vllm.tool_parsers.abstract_tool_parser")
vllm_levels = pytest.importorskip("vllm.tool_parsers.tool_strict_level")

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
STRICT = {"type": "function", "function": {"name": "lookup", "strict": True, "parameters": {"type": "object"}}}
BARE = {"type": "function", "function": {"name": "ping"}}  # no parameters
NAMED = {"type": "function", "function": {"name": "get_weather"}}
FORMATS = {"hermes": "hermes", "qwen3_json": "hermes", "llama3_json": "llama"}


def vllm_constraint(parser: str, level: str, request: dict[str, Any]) -> dict[str, Any] | None:
    """The structured outputs vLLM's serving layer sets on ``request`` (None: untouched)."""
    tool_parser = types.SimpleNamespace(structural_tag_model=FORMATS[parser], default_tool_strict_level=None)
    tool_parser.get_structural_tag = functools.partial(vllm_tools.ToolParser.get_structural_tag, tool_parser)
    server = types.SimpleNamespace(
        _tool_parser=tool_parser, tool_strict_level=vllm_levels.ToolStrictLevel.from_name(level)
    )
    req = vllm_protocol.ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], **request}
    )
    before = req.structured_outputs
    vllm_parser.DelegatingParser._apply_structural_tag(server, req)
    if req.structured_outputs is before:
        return None
    return {"structural_tag": json.loads(req.structured_outputs.structural_tag)}


def router_constraint(parser: str, level: str, request: dict[str, Any]) -> dict[str, Any] | None:
    choice = request.get("tool_choice", "auto")
    mode, named = ("named", choice["function"]["name"]) if isinstance(choice, dict) else (choice, "")
    own = {"json": request["response_format"]["json_schema"]["schema"]} if "response_format" in request else None
    found = tool_grammar.constraint(
        parser, request["tools"], mode, named, request.get("parallel_tool_calls"), level, own
    ).structured_outputs
    if found is None:
        return None
    return {"structural_tag": json.loads(found["structural_tag"])}


SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}}}
REQUESTS = {
    "auto": {"tools": [WEATHER, BARE], "tool_choice": "auto"},
    "auto.strict_tool": {"tools": [WEATHER, STRICT], "tool_choice": "auto"},
    "auto.single": {"tools": [WEATHER, BARE], "tool_choice": "auto", "parallel_tool_calls": False},
    "auto.strict_tool.with_schema": {
        "tools": [WEATHER, STRICT],
        "tool_choice": "auto",
        "response_format": SCHEMA_FORMAT,
    },
    "required": {"tools": [WEATHER, STRICT, BARE], "tool_choice": "required"},
    "required.single": {"tools": [WEATHER, STRICT], "tool_choice": "required", "parallel_tool_calls": False},
    "named": {"tools": [WEATHER, STRICT], "tool_choice": NAMED},
    "named.single": {"tools": [WEATHER], "tool_choice": NAMED, "parallel_tool_calls": False},
}


@pytest.mark.parametrize("level", ["auto", "function", "parameter"])
@pytest.mark.parametrize("parser", sorted(FORMATS))
@pytest.mark.parametrize("case", sorted(REQUESTS))
def test_the_router_builds_vllms_structural_tag(case: str, parser: str, level: str) -> None:
    request = REQUESTS[case]
    assert router_constraint(parser, level, request) == vllm_constraint(parser, level, request)


def test_unconstrained_auto_is_left_alone_and_forced_choices_are_not() -> None:
    """The cases above cover both outcomes (a test that only ever compares None is no test)."""
    assert vllm_constraint("hermes", "auto", REQUESTS["auto"]) is None
    assert vllm_constraint("hermes", "auto", REQUESTS["required"]) is not None
