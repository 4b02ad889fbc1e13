"""A chat choice's output text → ``reasoning``, ``content`` and ``tool_calls``, as vLLM's
chat server makes them (vllm/entrypoints/openai/chat_completion/serving.py), whole and
streamed. The parsers are router/parsers/ (``--reasoning-parser``, ``--tool-call-parser``);
this module decides which run for a request and shapes what they return:

- reasoning first, when the server has a reasoning parser; ``include_reasoning: false``
  drops it (and, as vLLM, the choice's logprobs and token ids);
- then tool calls: ``tool_choice`` ``auto`` runs the tool-call parser on the content
  (``finish_reason`` "tool_calls" when it found calls); a named tool's output *is* its
  arguments (constrained by that tool's parameter schema); ``required`` output is a JSON
  list of ``{"name", "parameters"}`` (constrained by vLLM's schema of it), "tool_calls".
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from router.parsers import registry
from router.parsers.base import ReasoningStream, ToolStream
from router.parsers.ids import openai_tool_call_id as chat_tool_call_id

ToolMode = Literal["none", "auto", "named", "required"]


@dataclass(frozen=True)
class ChatParsing:
    """What one chat request's output goes through."""

    reasoning_parser: str = ""  # "" = none
    tool_parser: str = ""  # used with mode "auto"
    mode: ToolMode = "none"
    named: str = ""  # the tool of mode "named"
    tools: tuple[Mapping[str, Any], ...] = ()
    include_reasoning: bool = True
    prompt_text: str = ""  # where the output starts (inside reasoning or not) depends on it
    template_kwargs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def suppresses_metadata(self) -> bool:
        """vLLM leaves logprobs and token ids out with ``include_reasoning: false`` whenever the
        server has a parser (reasoning or tool-call), whether or not reasoning was found."""
        return not self.include_reasoning

    def whole(self, text: str, finish_reason: str) -> tuple[dict[str, Any], str]:
        """(message fields, finish reason) of a finished choice."""
        reasoning, content = self._split(text)
        calls: list[dict[str, Any]] = []
        if self.mode == "auto" and content is not None:
            found = registry.tool_parser(self.tool_parser).extract(content, self.tools)
            content = found.content
            calls = [_call(c.id, c.function.name, c.function.arguments) for c in found.tool_calls]
            if calls:
                finish_reason = "tool_calls"
        elif self.mode == "named":
            calls = [_call(chat_tool_call_id(), self.named, content or "")]
            content = ""
        elif self.mode == "required":
            calls = [_call(chat_tool_call_id(), n, a) for n, a in _required_calls(content or "")]
            content = ""
            if finish_reason == "stop":
                finish_reason = "tool_calls"
        fields: dict[str, Any] = {"content": content, "reasoning": reasoning if self.include_reasoning else None}
        if calls:
            fields["tool_calls"] = calls
        return fields, finish_reason

    def stream(self) -> ChoiceStream:
        return ChoiceStream(self)

    def _split(self, text: str) -> tuple[str | None, str | None]:
        if not self.reasoning_parser:
            return None, text
        parser = registry.reasoning_parser(self.reasoning_parser, self.prompt_text, self.template_kwargs)
        return parser.split(text)


class ChoiceStream:
    """One choice's streamed deltas: ``feed`` each text chunk, ``finish`` once at the end."""

    def __init__(self, parsing: ChatParsing) -> None:
        self._p = parsing
        self._reasoning: ReasoningStream | None = None
        if parsing.reasoning_parser:
            parser = registry.reasoning_parser(parsing.reasoning_parser, parsing.prompt_text, parsing.template_kwargs)
            self._reasoning = parser.stream()
        self._tools: ToolStream | None = None
        if parsing.mode == "auto":
            self._tools = registry.tool_parser(parsing.tool_parser).stream(parsing.tools)
        self._called = False
        self._named_id = chat_tool_call_id() if parsing.mode == "named" else ""
        self._held: list[str] = []  # mode "required": the JSON list, parsed at the end

    def feed(self, text: str) -> dict[str, Any]:
        """The delta fields for this text (``content``, ``reasoning``, ``tool_calls``)."""
        if self._reasoning is None:
            return self._content(text)
        d = self._reasoning.feed(text)
        return self._merge(d.reasoning, self._content(d.content) if d.content else {})

    def finish(self, finish_reason: str) -> tuple[dict[str, Any], str]:
        """What was held back, and the finish reason vLLM reports."""
        fields: dict[str, Any] = {}
        if self._reasoning is not None:
            d = self._reasoning.flush()
            fields = self._merge(d.reasoning, self._content(d.content) if d.content else {})
        if self._tools is not None:
            fields = join(fields, self._tool_delta(self._tools.flush()))
        if self._p.mode == "required":
            calls = _required_calls("".join(self._held))
            deltas = [_delta_call(i, chat_tool_call_id(), n, a) for i, (n, a) in enumerate(calls)]
            fields = join(fields, {"tool_calls": deltas} if deltas else {})
            if finish_reason == "stop":
                finish_reason = "tool_calls"
        elif self._called:
            finish_reason = "tool_calls"
        return fields, finish_reason

    def _content(self, text: str) -> dict[str, Any]:
        if not text:
            return {}
        if self._tools is not None:
            return self._tool_delta(self._tools.feed(text))
        if self._p.mode == "named":
            first = not self._called
            self._called = True
            call = (
                _delta_call(0, self._named_id, self._p.named, text)
                if first
                else {"index": 0, "function": {"arguments": text}}
            )
            return {"tool_calls": [call]}
        if self._p.mode == "required":
            self._held.append(text)
            return {}
        return {"content": text}

    def _tool_delta(self, d: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if d.content:
            out["content"] = d.content
        if d.tool_calls:
            self._called = True
            out["tool_calls"] = [_openai_delta(c) for c in d.tool_calls]
        return out

    def _merge(self, reasoning: str | None, rest: dict[str, Any]) -> dict[str, Any]:
        if reasoning and self._p.include_reasoning:
            return join({"reasoning": reasoning}, rest)
        return rest

    def hides_reasoning(self, delta: dict[str, Any]) -> dict[str, Any]:
        """vLLM's streamed deltas say ``reasoning: null`` when it is not included."""
        return delta if self._p.include_reasoning else {**delta, "reasoning": None}


def join(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for key, value in b.items():
        if key == "tool_calls":
            out["tool_calls"] = [*out.get("tool_calls", []), *value]
        elif key in out:
            out[key] += value
        else:
            out[key] = value
    return out


def _call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _delta_call(index: int, call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"index": index, "id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _openai_delta(c: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"index": c.index}
    if c.id is not None:
        out["id"] = c.id
    if c.type is not None:
        out["type"] = c.type
    function: dict[str, Any] = {}
    if c.name is not None:
        function["name"] = c.name
    if c.arguments is not None:
        function["arguments"] = c.arguments
    out["function"] = function
    return out


def _required_calls(text: str) -> list[tuple[str, str]]:
    """``tool_choice: required`` output (a JSON list of name/parameters objects, as vLLM's
    schema constrains it) → (name, arguments JSON) pairs; [] if it is not that."""
    try:
        items = json.loads(text)
    except json.JSONDecodeError:
        return []
    if not isinstance(items, list):
        return []
    return [
        (str(item["name"]), json.dumps(item.get("parameters", {}), ensure_ascii=False))
        for item in items
        if isinstance(item, dict) and "name" in item
    ]


def required_schema(tools: Sequence[Mapping[str, Any]], parallel_tool_calls: bool | None) -> dict[str, Any]:
    """vLLM's ``_get_json_schema_from_tools``: a non-empty list of calls to the given tools."""
    defs: dict[str, Any] = {}
    schemas = []
    for tool in tools:
        function = dict(tool["function"])
        params = dict(function.get("parameters") or {}) or {"type": "object", "properties": {}}
        defs.update(params.pop("$defs", {}) or {})
        schemas.append(
            {
                "properties": {"name": {"type": "string", "enum": [function["name"]]}, "parameters": params},
                "required": ["name", "parameters"],
            }
        )
    schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"type": "object", "anyOf": schemas}}
    if parallel_tool_calls is False:
        schema["maxItems"] = 1
    if defs:
        schema["$defs"] = defs
    return schema


def named_schema(tools: Sequence[Mapping[str, Any]], name: str) -> dict[str, Any]:
    """The named tool's parameter schema (an empty object schema when it has none)."""
    for tool in tools:
        if tool["function"]["name"] == name:
            return dict(tool["function"].get("parameters") or {}) or {"type": "object", "properties": {}}
    raise KeyError(name)
