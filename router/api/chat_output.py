"""A chat choice's output text → ``reasoning``, ``content`` and ``tool_calls``, as vLLM's
chat server makes them (vllm/entrypoints/openai/chat_completion/serving.py), whole and
streamed. The parsers are router/parsers/ (``--reasoning-parser``, ``--tool-call-parser``);
this module decides which run for a request and shapes what they return:

- reasoning first, when the server has a reasoning parser; ``include_reasoning: false``
  drops it (and, as vLLM, the choice's logprobs and token ids);
- then tool calls: ``tool_choice`` ``auto`` runs the tool-call parser on the content
  (``finish_reason`` "tool_calls" when it found calls). Forced calls are read as
  api/tool_grammar.py constrained them: in the parser's own syntax (``native``: hermes,
  llama3_json) by the same parser, or by JSON schema (mistral, pythonic), where a named
  tool's output *is* its arguments and ``required`` output is a JSON list of
  ``{"name", "parameters"}``. ``required`` finishes with "tool_calls", a named tool with "stop".
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
    native: bool = False  # forced calls (named, required) come in the parser's syntax (api/tool_grammar.py)
    auto_tools: bool = True  # --enable-auto-tool-choice: vLLM reads native forced calls only then
    single_call: bool = False  # parallel_tool_calls false: vLLM keeps the first call only

    @property
    def parses_calls(self) -> bool:
        """Whether the tool-call parser reads the content (vLLM's ``is_auto_tool_choice``)."""
        return self.mode == "auto" or (self.native and self.auto_tools and self.mode != "none")

    @property
    def suppresses_metadata(self) -> bool:
        """vLLM leaves logprobs and token ids out with ``include_reasoning: false`` whenever the
        server has a parser (reasoning or tool-call), whether or not reasoning was found."""
        return not self.include_reasoning

    def whole(self, text: str, finish_reason: str) -> tuple[dict[str, Any], str]:
        """(message fields, finish reason) of a finished choice."""
        reasoning, content = self._split(text)
        calls: list[dict[str, Any]] = []
        if self.native and self.mode in ("named", "required"):
            if self.parses_calls and content is not None:
                calls, found_content = self._extract(content)
                content = found_content if calls else content
            content = "" if content is None or not content.strip() else content
            if self.mode == "required" and finish_reason == "stop":
                finish_reason = "tool_calls"
        elif self.mode == "auto" and content is not None:
            calls, content = self._extract(content)
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
            fields["tool_calls"] = calls[:1] if self.single_call else calls
        return fields, finish_reason

    def _extract(self, content: str) -> tuple[list[dict[str, Any]], str | None]:
        """The tool-call parser over a whole content: (OpenAI tool calls, the content left)."""
        found = registry.tool_parser(self.tool_parser).extract(content, self.tools)
        return [_call(c.id, c.function.name, c.function.arguments) for c in found.tool_calls], found.content

    def reasoning_tokens(self, text: str, token_texts: Sequence[str], finished: bool = True) -> int | None:
        """A choice's reasoning tokens (``text`` is its output; ``token_texts`` its tokens, each
        decoded on its own), as vLLM reports them; None without a reasoning parser."""
        if not self.reasoning_parser:
            return None
        parser = registry.reasoning_parser(self.reasoning_parser, self.prompt_text, self.template_kwargs)
        return parser.reasoning_tokens(text, token_texts, finished)

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
        if parsing.parses_calls:
            self._tools = registry.tool_parser(parsing.tool_parser).stream(parsing.tools)
        self._called = False
        self._named_id = chat_tool_call_id() if parsing.mode == "named" and not parsing.native else ""
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
        if self._p.native:
            if self._called and self._p.mode != "named" and finish_reason == "stop":
                finish_reason = "tool_calls"  # vLLM: calls streamed, and not for a named tool
        elif self._p.mode == "required":
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
        if self._p.native:
            return {"content": text}
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
        calls = [c for c in d.tool_calls or () if c.index == 0 or not self._p.single_call]
        if calls:
            self._called = True
            out["tool_calls"] = [_openai_delta(c) for c in calls]
        return out

    def _merge(self, reasoning: str | None, rest: dict[str, Any]) -> dict[str, Any]:
        if reasoning and self._p.include_reasoning:
            return join({"reasoning": reasoning}, rest)
        return rest

    def hides_reasoning(self, delta: dict[str, Any]) -> dict[str, Any]:
        """``include_reasoning: false`` in vLLM's streamed deltas: ``reasoning: null`` from a
        server with a tool-call parser only, no ``reasoning`` key from one with a reasoning
        parser (both seen in the parity battery's tools suite, without and with one)."""
        if self._p.include_reasoning:
            return delta
        if self._p.reasoning_parser:
            return {k: v for k, v in delta.items() if k != "reasoning"}
        return {**delta, "reasoning": None}


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
