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
from router.parsers.json_stream import ArgumentStreams
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
    scan = _Scan()
    return scan.advance(text, settled=True)


class _Scan:
    """The objects of one stream's growing text that are already complete, kept between deltas."""

    def __init__(self) -> None:
        self.objects: list[object] = []
        self._end = 0

    def advance(self, text: str, settled: bool = False) -> tuple[list[object], str | None]:
        # Streaming (not settled) decodes only when the text ends with "}": an object can only
        # have just closed there, and decoding the open tail on every delta made a long argument
        # cost O(n^2). One that closed mid-delta waits for a later "}" or the final parse.
        pos = text.find("{", self._end)
        may_close = settled or text.rstrip().endswith("}")
        while pos >= 0:
            if not may_close:
                return self.objects, text[pos:]
            try:
                obj, end = _DECODER.raw_decode(text, pos)
            except json.JSONDecodeError:
                return self.objects, text[pos:]
            self.objects.append(obj)
            self._end = end
            pos = text.find("{", end)
        return self.objects, None


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

    def snapshot(self, text: str, scan: _Scan, args: ArgumentStreams) -> Snapshot:
        split = _call_region(text)
        if split is None:
            head = text[: len(text) - held_back(text, (BOT,))]  # "<|py" may become the tag
            return Snapshot(head if head.strip() else "")  # blank content before a call is absent
        objects, tail = scan.advance(split[1])
        try:
            calls = [_call(obj) for obj in objects]
        except (KeyError, TypeError):
            return Snapshot(split[0], ())  # refused at the end; send nothing more
        if tail is not None and (partial := self._partial_call(tail, len(calls), args)) is not None:
            calls.append(partial)
        return Snapshot(split[0], tuple(calls))

    @staticmethod
    def _partial_call(tail: str, index: int, args: ArgumentStreams) -> FunctionCall | None:
        name = _NAME.search(tail)
        key = _ARGS_KEY.search(tail)
        if name is None or key is None:
            return None
        return FunctionCall(name=json.loads(name.group(1)), arguments=args.prefix(index, tail[key.end() :]))

    def extract(self, text: str, tools: Sequence[Tool] = ()) -> ExtractedToolCalls:
        return with_ids(self.parse(text), text, self._new_id)

    def stream(self, tools: Sequence[Tool] = ()) -> ReparsingToolStream:
        scan, args = _Scan(), ArgumentStreams()
        return ReparsingToolStream(lambda text: self.snapshot(text, scan, args), self.parse, self._new_id)
