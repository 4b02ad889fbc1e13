"""``pythonic``: a Python list of calls with keyword arguments, ``[f(a=1), g(b="x")]`` (Llama 3.2/4, ToolACE).

Matches vllm/tool_parsers/pythonic_tool_parser.py (0.32):
- the output must start with ``[`` (no leading whitespace) and be a list of calls with
  keyword arguments (the :49-52 pattern), else it is all content (:75-78);
- the first statement of the parsed output must be a list whose every element is a call
  (:80-95); any failure makes the whole output content (:96-101); with calls, content is absent;
- argument values must be literals: strings, numbers, ``None``/``True``/``False``, the
  names ``null``/``true``/``false``, ``-``/``+`` numbers, dicts with literal keys, lists,
  tuples and sets (as lists), f-strings without placeholders (tool_parsers/utils.py:506-590);
  ``arguments`` is ``json.dumps(kwargs, ensure_ascii=False)`` (utils.py:614-640).

Differences: dotted call names (``a.b(x=1)``) are refused (vLLM's pattern refuses them as the
first call but lets later ones through). Streaming sends a call's name when its ``(``
arrives and its arguments in one piece when its ``)`` closes it (vLLM streams partial
arguments through a repaired-Python re-parse).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence
from typing import Any

from router.parsers import partial_json
from router.parsers.base import ExtractedToolCalls, FunctionCall, IdFactory, Tool
from router.parsers.ids import openai_tool_call_id
from router.parsers.toolstream import ReparsingToolStream, Snapshot, with_ids

_NAME = re.compile(r"[A-Za-z]\w*")
_JSON_NAMES: dict[str, Any] = {"null": None, "true": True, "false": False}


class _NotACall(ValueError):
    """The text is not the pythonic tool-call shape: it is content."""


def _value(node: ast.expr) -> Any:
    if isinstance(node, ast.Constant) and (node.value is None or isinstance(node.value, (str, int, float))):
        return node.value
    if isinstance(node, ast.Dict) and all(isinstance(k, ast.Constant) for k in node.keys):
        return {k.value: _value(v) for k, v in zip(node.keys, node.values, strict=True) if isinstance(k, ast.Constant)}
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        return [_value(e) for e in node.elts]
    if isinstance(node, ast.JoinedStr) and all(isinstance(p, ast.Constant) for p in node.values):
        return "".join(str(p.value) for p in node.values if isinstance(p, ast.Constant))
    if isinstance(node, ast.Name) and node.id in _JSON_NAMES:
        return _JSON_NAMES[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = _value(node.operand)
        if isinstance(operand, (int, float)) and not isinstance(operand, bool):
            return -operand if isinstance(node.op, ast.USub) else operand
    raise _NotACall(f"not a literal: {ast.dump(node)}")


def _call(node: ast.expr) -> FunctionCall:
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name) or not _NAME.fullmatch(node.func.id):
        raise _NotACall("every element must be a call of a plain name")
    if node.args and not node.keywords:
        raise _NotACall("keyword arguments only")
    args = {}
    for keyword in node.keywords:
        if keyword.arg is None:
            raise _NotACall("no **kwargs")
        args[keyword.arg] = _value(keyword.value)
    return FunctionCall(node.func.id, partial_json.dumps(args))


def _parse_calls(text: str) -> tuple[FunctionCall, ...]:
    try:
        body = ast.parse(text).body
    except (SyntaxError, ValueError) as e:
        raise _NotACall(str(e)) from e
    first = body[0] if body else None
    if not isinstance(first, ast.Expr) or not isinstance(first.value, ast.List) or not first.value.elts:
        raise _NotACall("not a list of calls")
    return tuple(_call(e) for e in first.value.elts)


def _closed_calls(text: str) -> tuple[list[tuple[int, int]], str | None]:
    """Spans of the calls closed so far in ``text`` (which starts with ``[``), and the name of
    a call still open. Tracks brackets outside string literals."""
    spans: list[tuple[int, int]] = []
    depth, quote, escaped, start = 0, "", False, -1
    for i, ch in enumerate(text[1:], start=1):
        if quote:
            escaped, quote = (not escaped and ch == "\\"), ("" if ch == quote and not escaped else quote)
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            if depth == 0 and ch == "(":
                start = i
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth < 0:
                break
            if depth == 0 and ch == ")" and start >= 0:
                spans.append((start, i + 1))
                start = -1
    if start < 0:
        return spans, None
    name = re.search(r"([A-Za-z]\w*)\s*$", text[:start])
    return spans, name.group(1) if name else None


def _call_start(text: str, paren: int) -> int:
    name = re.search(r"[A-Za-z]\w*\s*$", text[:paren])
    return name.start() if name else paren


class PythonicToolParser:
    def __init__(self, new_id: IdFactory = openai_tool_call_id) -> None:
        self._new_id = new_id

    def parse(self, text: str) -> Snapshot | None:
        if not text.startswith("["):
            return None
        try:
            return Snapshot("", _parse_calls(text))
        except _NotACall:
            return None

    def snapshot(self, text: str) -> Snapshot:
        if not text.startswith("["):
            return Snapshot(text)
        spans, open_name = _closed_calls(text)
        calls = []
        for paren, end in spans:
            try:
                calls.append(_call(ast.parse(text[_call_start(text, paren) : end], mode="eval").body))
            except (SyntaxError, ValueError):
                return Snapshot("", tuple(calls))
        if open_name is not None:
            calls.append(FunctionCall(open_name, ""))
        return Snapshot("", tuple(calls))

    def extract(self, text: str, tools: Sequence[Tool] = ()) -> ExtractedToolCalls:
        return with_ids(self.parse(text), text, self._new_id)

    def stream(self, tools: Sequence[Tool] = ()) -> ReparsingToolStream:
        return ReparsingToolStream(self.snapshot, self.parse, self._new_id)
