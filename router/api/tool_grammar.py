"""How a chat request's tools constrain its output, as ``vllm serve`` 0.32 decides it
(vllm/parser/abstract_parser.py ``_apply_structural_tag``, tool_parsers/structural_tag_registry.py,
xgrammar/builtin_structural_tag.py). The router builds the constraint; the engine compiles it.

- Parsers whose call syntax has a structural-tag format (hermes and its alias qwen3_json:
  vLLM's ``hermes`` tag; llama3_json: xgrammar's ``llama`` tag) constrain calls in the
  model's own syntax: ``required`` and a named tool always; ``auto`` only when a tool says
  ``strict: true`` or ``--tool-strict-level`` is ``function`` or ``parameter``. Arguments
  follow a tool's schema only where it is strict (or the level is ``parameter``); otherwise
  they are any JSON. ``parallel_tool_calls: false`` stops after the first call. Forced calls
  are then read by the parser like auto ones (``native``), as vLLM reads them once such a
  parser no longer "supports required and named".
- Other parsers (mistral, pythonic): ``required`` output is a JSON list of calls and a named
  tool's output is its arguments, by JSON schema (vLLM's ``get_json_schema_from_tools``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from router.chat import TOOL_STRICT_LEVELS as STRICT_LEVELS
from router.errors import BadRequestError

TAG_FORMATS = {"hermes": "hermes", "qwen3_json": "hermes", "llama3_json": "llama"}
_LLAMA_EXCLUDES = ["<think>", "</think>"]  # xgrammar's _text_excludes for the llama format


@dataclass(frozen=True)
class ToolConstraint:
    structured_outputs: dict[str, Any] | None
    """vLLM ``StructuredOutputsParams`` fields replacing the request's own; None: leave them."""
    native: bool
    """Forced calls come in the parser's own syntax and are read as ``auto`` output is."""


NONE = ToolConstraint(None, False)


def native(parser: str, mode: str) -> bool:
    """Whether forced calls (``mode`` "named" or "required") come in ``parser``'s own syntax."""
    return parser in TAG_FORMATS and mode in ("named", "required")


def constraint(
    parser: str,
    tools: Sequence[Mapping[str, Any]],
    mode: str,
    named: str,
    parallel_tool_calls: bool | None,
    strict_level: str = "auto",
    structured_outputs: Mapping[str, Any] | None = None,
) -> ToolConstraint:
    """The constraint for ``mode`` ("none" | "auto" | "named" | "required"; ``named``: the
    tool) under the server's ``parser`` and ``strict_level``; ``structured_outputs``: the
    request's own constraint, which a structural tag for ``auto`` keeps as an alternative."""
    if mode == "none":
        return NONE
    tag_format = TAG_FORMATS.get(parser)
    if tag_format is None:
        if mode == "named":
            return ToolConstraint({"json": named_schema(tools, named)}, False)
        if mode == "required":
            return ToolConstraint({"json": required_schema(tools, parallel_tool_calls)}, False)
        return NONE
    level = STRICT_LEVELS.index(strict_level)
    single = parallel_tool_calls is False
    if single and not (mode == "auto" and structured_outputs):
        level = max(level, STRICT_LEVELS.index("function"))  # the call count needs the envelope
    if mode == "auto" and level == 0 and not any(_strict(t) for t in tools):
        return NONE
    chosen = [t for t in tools if t["function"]["name"] == named] if mode == "named" else list(tools)
    schemas = [(t["function"]["name"], _arguments_schema(t, level)) for t in chosen]
    forced = "forced" if mode == "named" else mode
    alternative = _format(structured_outputs) if mode == "auto" and structured_outputs else None
    if alternative is not None:
        forced = "required"  # vLLM: the tool branch of "tools or the schema" must call a tool
    build = _hermes if tag_format == "hermes" else _llama
    fmt = build(schemas, forced)
    if single:
        _stop_after_first(fmt)
    if alternative is not None:
        fmt = {"type": "or", "elements": [fmt, alternative]}
    tag = {"type": "structural_tag", "format": fmt}
    return ToolConstraint({"structural_tag": json.dumps(tag)}, native(parser, mode))


def _strict(tool: Mapping[str, Any]) -> bool:
    return tool["function"].get("strict") is True


def _arguments_schema(tool: Mapping[str, Any], level: int) -> Any:
    """A strict tool's (or, at level "parameter", every tool's) parameter schema; else any JSON."""
    if not (_strict(tool) or level >= STRICT_LEVELS.index("parameter")):
        return True
    params = tool["function"].get("parameters")
    return True if params is None else params


def _json(schema: Any) -> dict[str, Any]:
    return {
        "type": "json_schema",
        "json_schema": schema,
        "style": "json",
        "any_order": False,
        "max_whitespace_cnt": None,
        "excludes": [],
    }


def _hermes(schemas: list[tuple[str, Any]], choice: str) -> dict[str, Any]:
    """vLLM's ``hermes`` tag: ``<tool_call>`` + ``{"name": ..., "arguments": ...}`` +
    ``</tool_call>``, with or without the newlines."""
    ends = [("<tool_call>\n", "}\n</tool_call>"), ("<tool_call>", "}</tool_call>")]
    tags = [
        {"type": "tag", "begin": f'{begin}{{"name": "{name}", "arguments": ', "content": _json(schema), "end": end}
        for name, schema in schemas
        for begin, end in ends
    ]
    if choice == "auto":
        if not tags:
            return {"type": "any_text", "excludes": []}
        return {
            "type": "triggered_tags",
            "triggers": ["<tool_call>"],
            "tags": tags,
            "at_least_one": False,
            "stop_after_first": False,
            "excludes": [],
        }
    return {
        "type": "tags_with_separator",
        "tags": tags,
        "separator": "",
        "at_least_one": True,
        "stop_after_first": choice == "forced",
    }


def _llama(schemas: list[tuple[str, Any]], choice: str) -> dict[str, Any]:
    """xgrammar's ``llama`` tag: ``{"name": ..., "parameters": ...}``."""
    tags = [
        {"type": "tag", "begin": f'{{"name": "{name}", "parameters": ', "content": _json(schema), "end": "}"}
        for name, schema in schemas
    ]
    if choice == "forced":
        return tags[0]
    if choice == "auto" and not tags:
        return {"type": "any_text", "excludes": list(_LLAMA_EXCLUDES)}
    return {
        "type": "triggered_tags",
        "triggers": ['{"name": '],
        "tags": tags,
        "at_least_one": choice == "required",
        "stop_after_first": False,
        "excludes": list(_LLAMA_EXCLUDES),
    }


_CALL_LISTS = ("triggered_tags", "tags_with_separator")


def _stop_after_first(node: Any) -> None:
    """vLLM's ``limit_to_single_tool_call``: every list of calls stops after its first."""
    if isinstance(node, dict):
        if node.get("type") in _CALL_LISTS:
            node["stop_after_first"] = True
        for value in node.values():
            _stop_after_first(value)
    elif isinstance(node, list):
        for item in node:
            _stop_after_first(item)


def _format(structured_outputs: Mapping[str, Any]) -> dict[str, Any]:
    """The request's own constraint as an xgrammar format (vLLM's
    ``structured_outputs_to_format``), for "a tool call or this"."""
    if structured_outputs.get("json_object"):
        return _json({"type": "object"})
    if structured_outputs.get("json") is not None:
        schema = structured_outputs["json"]
        return _json(json.loads(schema) if isinstance(schema, str) else schema)
    if structured_outputs.get("regex") is not None:
        return {"type": "regex", "pattern": structured_outputs["regex"]}
    if structured_outputs.get("choice") is not None:
        return {"type": "or", "elements": [{"type": "const_string", "value": c} for c in structured_outputs["choice"]]}
    field = next((k for k, v in structured_outputs.items() if v is not None), "structured_outputs")
    raise BadRequestError(
        f"a {field} constraint cannot be combined with strict tool calls under tool_choice auto; "
        "use json, json_object, regex or choice",
        "structured_outputs",
    )


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
