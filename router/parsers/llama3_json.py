"""``llama3_json``: Llama 3.x JSON tool calls, ``{"name": …, "parameters": {…}}``, optionally after
``<|python_tag|>``, several separated by ``;``.

Matches vllm/tool_parsers/llama_tool_parser.py (0.32) in what a call is:
- every top-level ``{`` starts a JSON object (``raw_decode``), objects inside one already
  read are skipped (:89-110); the text between them is ignored;
- each object needs ``name`` and ``arguments`` or ``parameters`` (``arguments`` wins) (:112-116);
  ``arguments`` is ``json.dumps(value, ensure_ascii=False)`` (:121-124);
- one object that fails (bad JSON, a missing key) makes the whole output content (:126-147);
- text after the calls is dropped (:157-160).

Where calls may start differs, to keep streaming and non-streaming equal. vLLM's streaming
path looks for calls only when the output starts with ``<|python_tag|>`` or ``{`` (:178-181);
its non-streaming path takes a ``{`` anywhere and drops all text around the calls. Here calls
start at an output-initial ``{`` or at ``<|python_tag|>`` anywhere; text before the tag is
content (absent if blank), and leading prose before a bare ``{`` keeps the output content.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from router.parsers import partial_json
from router.parsers.base import ExtractedToolCalls, FunctionCall, IdFactory, Tool
from router.parsers.ids import openai_tool_call_id
from router.parsers.reasoning import held_back
from router.parsers.toolstream import ReparsingToolStream, Snapshot, with_ids

BOT = "<|python_tag|>"
_NAME = re.compile(r'"name"\s*:\s*("(?:[^"\\]|\\.)*")')
_ARGS_KEY = re.compile(r'"(?:arguments|parameters)"\s*:')
_DECODER = json.JSONDecoder()


def _call(obj: object) -> FunctionCall:
    if not isinstance(obj, dict):
        raise TypeError("a call is a JSON object")
    name = obj["name"]
    if not isinstance(name, str):
        raise TypeError("name must be a string")
    args = obj["arguments"] if "arguments" in obj else obj["parameters"]
    return FunctionCall(name=name, arguments=partial_json.dumps(args))


def _objects(text: str) -> tuple[list[object], str | None]:
    """Complete top-level objects from the first ``{`` on, and the unfinished tail if any."""
    objects: list[object] = []
    pos = text.find("{")
    while pos >= 0:
        try:
            obj, end = _DECODER.raw_decode(text, pos)
        except json.JSONDecodeError:
            return objects, text[pos:]
        objects.append(obj)
        pos = text.find("{", end)
    return objects, None


def _call_region(text: str) -> tuple[str, str] | None:
    """``(content before the calls, text holding them)``, or ``None`` if no call may start."""
    if text.startswith("{"):
        return "", text  # a later <|python_tag|> is inside the JSON strings
    if BOT in text:
        head, region = text.split(BOT, 1)
        return (head if head.strip() else ""), region
    return None


class Llama3JsonToolParser:
    def __init__(self, new_id: IdFactory = openai_tool_call_id) -> None:
        self._new_id = new_id

    def parse(self, text: str) -> Snapshot | None:
        split = _call_region(text)
        if split is None:
            return None
        objects, tail = _objects(split[1])
        if tail is not None or not objects:
            return None
        try:
            return Snapshot(split[0], tuple(_call(obj) for obj in objects))
        except (KeyError, TypeError):
            return None

    def snapshot(self, text: str) -> Snapshot:
        split = _call_region(text)
        if split is None:
            head = text[: len(text) - held_back(text, (BOT,))]  # "<|py" may become the tag
            return Snapshot(head if head.strip() else "")  # blank content before a call is absent
        objects, tail = _objects(split[1])
        try:
            calls = [_call(obj) for obj in objects]
        except (KeyError, TypeError):
            return Snapshot(split[0], ())  # refused at the end; send nothing more
        if tail is not None and (partial := self._partial_call(tail)) is not None:
            calls.append(partial)
        return Snapshot(split[0], tuple(calls))

    @staticmethod
    def _partial_call(tail: str) -> FunctionCall | None:
        name = _NAME.search(tail)
        if name is None or _ARGS_KEY.search(tail) is None:
            return None
        obj = partial_json.parse_partial(tail)
        if not isinstance(obj, dict):
            return None
        args = obj.get("arguments", obj.get("parameters"))
        prefix = partial_json.stable_prefix(args) if args is not None else ""
        return FunctionCall(name=json.loads(name.group(1)), arguments=prefix)

    def extract(self, text: str, tools: Sequence[Tool] = ()) -> ExtractedToolCalls:
        return with_ids(self.parse(text), text, self._new_id)

    def stream(self, tools: Sequence[Tool] = ()) -> ReparsingToolStream:
        return ReparsingToolStream(self.snapshot, self.parse, self._new_id)
