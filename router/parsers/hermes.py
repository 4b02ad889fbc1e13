"""``hermes``: ``<tool_call>{"name": …, "arguments": {…}}</tool_call>`` (Hermes 2 Pro, Qwen2.5/Qwen3).

Matches vllm/tool_parsers/hermes_tool_parser.py (0.32):
- no ``<tool_call>`` in the output: all of it is content (:76-79);
- each ``<tool_call>…</tool_call>`` body, or the body after a last unclosed ``<tool_call>``,
  is one JSON object with ``name`` and ``arguments`` (:87-107);
- ``arguments`` is ``json.dumps(value, ensure_ascii=False)`` of the model's value (:101-103);
- content is the text before the first ``<tool_call>`` (text after the calls is dropped),
  absent if empty or whitespace only (:109-114, and abstract_parser.py:455-459);
- any body that fails (bad JSON, not an object, a missing key) makes the whole output
  content and no call (:116-120).

Streaming (same results by construction; vLLM streams the model's raw argument text
instead, which differs from its own non-streamed ``json.dumps``): a call starts once its
``name`` string is closed and an ``"arguments"`` key has begun; its arguments are rewritten
into the ``json.dumps`` form as they arrive (``json_stream``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from router.parsers import partial_json
from router.parsers.base import ExtractedToolCalls, FunctionCall, IdFactory, Tool
from router.parsers.ids import openai_tool_call_id
from router.parsers.json_stream import ArgumentStreams
from router.parsers.reasoning import held_back
from router.parsers.toolstream import ReparsingToolStream, Snapshot, with_ids

START = "<tool_call>"
END = "</tool_call>"
_NAME = re.compile(r'"name"\s*:\s*("(?:[^"\\]|\\.)*")')
_ARGS_KEY = re.compile(r'"arguments"\s*:')


def _bodies(text: str) -> list[tuple[str, bool]]:
    """Each call body after ``START``, and whether its ``END`` came."""
    bodies = []
    pos = text.find(START)
    while pos >= 0:
        begin = pos + len(START)
        end = text.find(END, begin)
        if end < 0:
            bodies.append((text[begin:], False))
            break
        bodies.append((text[begin:end], True))
        pos = text.find(START, end + len(END))
    return bodies


def _call(body: str) -> FunctionCall:
    """One finished body; raises ValueError/KeyError/TypeError as vLLM's parse fails."""
    obj = json.loads(body)
    name = obj["name"]
    if not isinstance(name, str):
        raise TypeError("name must be a string")  # vLLM's FunctionCall model refuses it
    return FunctionCall(name=name, arguments=partial_json.dumps(obj["arguments"]))


def _content_before(text: str, index: int) -> str:
    head = text[:index]
    return head if head.strip() else ""


class HermesToolParser:
    def __init__(self, new_id: IdFactory = openai_tool_call_id) -> None:
        self._new_id = new_id

    def parse(self, text: str) -> Snapshot | None:
        if START not in text:
            return None
        try:
            calls = tuple(_call(body) for body, _ in _bodies(text))
        except (ValueError, KeyError, TypeError):
            return None
        return Snapshot(_content_before(text, text.find(START)), calls)

    def snapshot(self, text: str, args: ArgumentStreams) -> Snapshot:
        start = text.find(START)
        if start < 0:
            head = text[: len(text) - held_back(text, (START,))]
            return Snapshot(head if head.strip() else "")
        calls = []
        for index, (body, closed) in enumerate(_bodies(text)):
            call = self._partial_call(body, closed, index, args)
            if call is None:
                break
            calls.append(call)
        return Snapshot(_content_before(text, start), tuple(calls))

    @staticmethod
    def _partial_call(body: str, closed: bool, index: int, args: ArgumentStreams) -> FunctionCall | None:
        if closed:
            try:
                return _call(body)
            except (ValueError, KeyError, TypeError):
                pass  # the whole output will be refused at the end; send no more of this call
        name = _NAME.search(body)
        key = _ARGS_KEY.search(body)
        if name is None or key is None:
            return None
        return FunctionCall(name=json.loads(name.group(1)), arguments=args.prefix(index, body[key.end() :]))

    def extract(self, text: str, tools: Sequence[Tool] = ()) -> ExtractedToolCalls:
        return with_ids(self.parse(text), text, self._new_id)

    def stream(self, tools: Sequence[Tool] = ()) -> ReparsingToolStream:
        args = ArgumentStreams()
        return ReparsingToolStream(lambda text: self.snapshot(text, args), self.parse, self._new_id)
