"""The streaming driver every tool parser here shares: re-parse the text so far, send the difference.

A parser supplies two pure functions of the whole text seen so far:

- ``snapshot(text)``: content and calls that are already certain. Content is a prefix of
  the final content; each call's name is final, its ``arguments`` a prefix of the final
  arguments (the whole of them once the call is closed).
- ``parse(text)``: the final answer for a finished output (what ``extract`` returns, less ids).

``feed`` sends what the new snapshot adds to what was sent; ``flush`` does the same with
``parse``, which sends whatever was held back. Re-parsing costs O(n) per delta; outputs with
tool calls are short, and this keeps one source of truth per format.

Hazard: if the finished output is rejected as a whole (malformed JSON, or a call cut off by
``max_tokens``, after calls were streamed), the calls already sent cannot be taken back;
``flush`` then sends nothing more, as vLLM's streaming parsers send nothing at the end (the
non-streamed answer is all content). With no call sent, it sends the content ``parse``
returns where that extends what was sent, and nothing that contradicts it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from router.parsers.base import ExtractedToolCalls, FunctionCall, IdFactory, ToolCall, ToolCallDelta, ToolDelta


@dataclass(frozen=True)
class Snapshot:
    content: str
    calls: tuple[FunctionCall, ...] = ()


def with_ids(parsed: Snapshot | None, text: str, new_id: IdFactory) -> ExtractedToolCalls:
    """``parse``'s answer as ``extract`` returns it; ``None`` means no call: all of ``text`` is content."""
    if parsed is None or not parsed.calls:
        return ExtractedToolCalls(content=(parsed.content if parsed else text) or None)
    calls = tuple(ToolCall(id=new_id(), function=call) for call in parsed.calls)
    return ExtractedToolCalls(content=parsed.content or None, tool_calls=calls)


class ReparsingToolStream:
    """A ``ToolStream`` (router.parsers.base) over a parser's ``snapshot`` and ``parse``."""

    def __init__(
        self,
        snapshot: Callable[[str], Snapshot],
        parse: Callable[[str], Snapshot | None],
        new_id: IdFactory,
    ) -> None:
        self._snapshot = snapshot
        self._parse = parse
        self._new_id = new_id
        self._text = ""
        self._content = ""
        self._calls: list[FunctionCall] = []
        self._flushed = False

    def feed(self, delta: str) -> ToolDelta:
        self._text += delta
        return self._advance(self._snapshot(self._text))

    def flush(self) -> ToolDelta:
        if self._flushed:
            return ToolDelta()
        self._flushed = True
        final = self._parse(self._text)
        if final is None and self._calls:
            return ToolDelta()
        return self._advance(final if final is not None else Snapshot(self._text))

    def _advance(self, snap: Snapshot) -> ToolDelta:
        content = None
        if snap.content.startswith(self._content) and len(snap.content) > len(self._content):
            content = snap.content[len(self._content) :]
            self._content = snap.content
        deltas = [d for i, call in enumerate(snap.calls) if (d := self._call_delta(i, call)) is not None]
        return ToolDelta(content=content, tool_calls=tuple(deltas))

    def _call_delta(self, index: int, call: FunctionCall) -> ToolCallDelta | None:
        if index > len(self._calls):
            return None  # an earlier call was refused below; keep indices dense
        if index == len(self._calls):
            self._calls.append(call)
            return ToolCallDelta(index, self._new_id(), "function", call.name, call.arguments or None)
        sent = self._calls[index]
        if sent.name != call.name or not call.arguments.startswith(sent.arguments):
            return None
        if len(call.arguments) == len(sent.arguments):
            return None
        self._calls[index] = call
        return ToolCallDelta(index, arguments=call.arguments[len(sent.arguments) :])


def merge(deltas: Sequence[ToolDelta]) -> ExtractedToolCalls:
    """Assemble streamed deltas as an OpenAI client does (used by tests and by anyone checking a stream)."""
    content = "".join(d.content or "" for d in deltas)
    calls: dict[int, tuple[str, str, list[str]]] = {}
    for delta in deltas:
        for piece in delta.tool_calls:
            if piece.id is not None:
                calls[piece.index] = (piece.id, piece.name or "", [])
            calls[piece.index][2].append(piece.arguments or "")
    merged = tuple(
        ToolCall(id=call_id, function=FunctionCall(name, "".join(args)))
        for _, (call_id, name, args) in sorted(calls.items())
    )
    return ExtractedToolCalls(content=content or None, tool_calls=merged)
