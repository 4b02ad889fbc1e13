"""``mistral``: ``[TOOL_CALLS]`` tool calls, in both of the formats vLLM 0.32's parser reads.

- v11+ tokenizers: ``content[TOOL_CALLS]name[ARGS]{…}[TOOL_CALLS]name2[ARGS]{…}``
  (``name{…}`` without ``[ARGS]`` too) — vllm/parser/mistral.py:152-279 and the engine's
  ``_build_extracted_result`` (parser_engine.py:1096-1148): the name is the text before
  ``[ARGS]``/``{``, stripped; the arguments are the model's own text of the first JSON value
  after it (trailing text dropped), the stripped text if it is not JSON, ``{}`` if empty
  (mistral.py:987-1002); with calls, content is stripped and absent if empty
  (parser_engine_config.py:104-107).
- pre-v11 tokenizers: ``content[TOOL_CALLS][{"name": …, "arguments": {…}}, …]``
  (mistral.py:120-149, 562-638): the first non-empty segment after a marker is decoded
  (first JSON value; an object is one call); entries with neither ``name`` nor
  ``arguments`` are skipped; missing arguments are ``{}``, string arguments kept as they
  are, others ``json.dumps``-ed; content is the text before the marker, absent if blank.

vLLM picks the format from the tokenizer (``[ARGS]`` in its vocabulary); the router sees
text only, so here a JSON array or object right after the first ``[TOOL_CALLS]`` means
pre-v11. Differences, listed in docs/parsers.md: a pre-v11 output whose JSON yields no
call is content whole (vLLM keeps only the text after the marker); v11 arguments are not
coerced to the tool's schema types (vLLM's ``_fix_arg_types``); ids are 9 alphanumerics as
vLLM's (mistral.py:98-110).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from router.parsers import partial_json
from router.parsers.base import ExtractedToolCalls, FunctionCall, IdFactory, Tool
from router.parsers.ids import mistral_tool_call_id
from router.parsers.json_stream import ArgumentStreams, CanonicalJsonStream
from router.parsers.reasoning import held_back
from router.parsers.toolstream import ReparsingToolStream, Snapshot, with_ids

BOT = "[TOOL_CALLS]"
ARGS = "[ARGS]"
_DECODER = json.JSONDecoder()


def _is_pre_v11(text: str) -> bool:
    after = text.split(BOT, 1)[1].lstrip() if BOT in text else ""
    return after[:1] in ("[", "{")


# ---- v11+: name[ARGS]{...} ----


def _v11_name(segment: str) -> tuple[str, str] | None:
    """``(name, raw args)`` of one segment after a marker, or ``None`` while the name is open."""
    cut = [i for i in (segment.find(ARGS), segment.find("{")) if i >= 0]
    if not cut:
        return None
    at = min(cut)
    rest = segment[at + len(ARGS) :] if segment.startswith(ARGS, at) else segment[at:]
    return segment[:at].strip(), rest


def _v11_args(raw: str) -> str:
    stripped = raw.strip()
    if not stripped:
        return "{}"
    try:
        _, end = _DECODER.raw_decode(stripped)
    except json.JSONDecodeError:
        return stripped
    return stripped[:end]


def _v11_parse(text: str) -> Snapshot:
    head, *segments = text.split(BOT)
    calls = []
    for segment in segments:
        named = _v11_name(segment)
        if named is not None:  # a name never closed by [ARGS] or "{" is no call
            calls.append(FunctionCall(named[0], _v11_args(named[1])))
    return Snapshot(head.strip() if calls else head, tuple(calls))


def _v11_snapshot(text: str, values: ArgumentStreams) -> Snapshot:
    head, *segments = text.split(BOT)
    calls = [FunctionCall(n[0], _v11_args(n[1])) for s in segments[:-1] if (n := _v11_name(s)) is not None]
    if segments and (last := _v11_name(segments[-1])) is not None:
        calls.append(FunctionCall(last[0], _v11_open_args(last[1], values.feed(len(calls), last[1].lstrip()))))
    return Snapshot(head.rstrip() if segments else _open_content(head), tuple(calls))


def _v11_open_args(raw: str, value: CanonicalJsonStream) -> str:
    """A prefix of the arguments of the call still being written. ``value`` scans the same text
    once per character to find where the first JSON value ends (decoding it on every delta
    made a long argument cost O(n^2)); text after that end is never arguments."""
    stripped = raw.lstrip()
    if value.end is not None:
        return stripped[: value.end]
    return stripped[: len(stripped) - held_back(stripped, (BOT,))].rstrip()


def _open_content(head: str) -> str:
    """Content before any marker: trailing whitespace waits, it is stripped if a call follows."""
    return head[: len(head) - held_back(head, (BOT,))].rstrip()


# ---- pre-v11: [{"name": ..., "arguments": {...}}] ----


def _pre_v11_segment(text: str) -> str:
    return next((s.strip() for s in text.split(BOT)[1:] if s.strip()), "")


def _pre_v11_entries(parsed: Any) -> list[dict[str, Any]]:
    if isinstance(parsed, dict):
        parsed = [parsed]
    if not isinstance(parsed, list):
        return []
    return [e for e in parsed if isinstance(e, dict) and ("name" in e or "arguments" in e)]


def _pre_v11_call(entry: dict[str, Any]) -> FunctionCall:
    name, args = entry.get("name"), entry.get("arguments")
    arguments = "{}" if args is None else args if isinstance(args, str) else partial_json.dumps(args)
    return FunctionCall(name if isinstance(name, str) else "", arguments)


def _pre_v11_parse(text: str) -> Snapshot | None:
    segment = _pre_v11_segment(text)
    try:
        parsed, _ = _DECODER.raw_decode(segment)
    except json.JSONDecodeError:
        return None
    calls = tuple(_pre_v11_call(e) for e in _pre_v11_entries(parsed))
    if not calls:
        return None
    head = text.split(BOT, 1)[0]
    return Snapshot(head if head.strip() else "", calls)


def _pre_v11_snapshot(text: str) -> Snapshot:
    segment = _pre_v11_segment(text)
    head = text.split(BOT, 1)[0]
    content = head if head.strip() else ""
    full = _pre_v11_items(partial_json.parse_partial(segment))
    named = _pre_v11_items(partial_json.parse_partial(segment, partial_json.CLOSED_STRINGS))
    calls = [_pre_v11_call(e) for e in _pre_v11_entries(full[:-1])]
    if full and named and len(named) == len(full) and (call := _pre_v11_open(full[-1], named[-1])) is not None:
        calls.append(call)
    return Snapshot(content, tuple(calls))


def _pre_v11_items(value: Any) -> list[Any]:
    return [value] if isinstance(value, dict) else value if isinstance(value, list) else []


def _pre_v11_open(entry: Any, named: Any) -> FunctionCall | None:
    """The call still being written: only once its name is closed and its arguments began."""
    if not isinstance(entry, dict) or not isinstance(named, dict) or "name" not in named or "arguments" not in entry:
        return None
    args = entry["arguments"]
    if isinstance(args, str):
        return None  # string arguments are returned verbatim: wait for the whole string
    name = named["name"] if isinstance(named["name"], str) else ""
    return FunctionCall(name, partial_json.stable_prefix(args))


class MistralToolParser:
    def __init__(self, new_id: IdFactory = mistral_tool_call_id) -> None:
        self._new_id = new_id

    def parse(self, text: str) -> Snapshot | None:
        if BOT not in text:
            return None
        parsed = _pre_v11_parse(text) if _is_pre_v11(text) else _v11_parse(text)
        return parsed if parsed is not None and parsed.calls else None

    def snapshot(self, text: str, values: ArgumentStreams) -> Snapshot:
        if BOT not in text:
            return Snapshot(_open_content(text))
        if not text.split(BOT, 1)[1].strip():
            return Snapshot(_open_content(text.split(BOT, 1)[0]))  # format not known yet
        return _pre_v11_snapshot(text) if _is_pre_v11(text) else _v11_snapshot(text, values)

    def extract(self, text: str, tools: Sequence[Tool] = ()) -> ExtractedToolCalls:
        return with_ids(self.parse(text), text, self._new_id)

    def stream(self, tools: Sequence[Tool] = ()) -> ReparsingToolStream:
        values = ArgumentStreams()
        return ReparsingToolStream(lambda text: self.snapshot(text, values), self.parse, self._new_id)
