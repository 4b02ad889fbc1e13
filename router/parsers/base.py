"""The seam between the chat routes and the output parsers: result types and Protocols.

Who calls what
--------------
The chat route builds one parser object per request from the registries in
``router.parsers.registry`` (``--reasoning-parser`` / ``--tool-call-parser`` names, as
``vllm serve`` spells them). A non-streamed response calls ``split`` / ``extract`` once on
the whole output text. A streamed response calls ``stream()`` once, then ``feed`` with each
text delta in order, then ``flush`` exactly once when the engine says the output ended.
A stream object belongs to one request and one task: nothing here is thread-safe or
shared, and no method awaits.

The order is reasoning first, tools second, as in vLLM's serving layer: the tool parser
sees only the content the reasoning parser let through.

Invariant every implementation keeps (tested by feeding every split of recorded outputs):
concatenating what ``feed`` and ``flush`` return gives what the non-streamed call returns.
For tool calls that means merging deltas by ``index`` as an OpenAI client does (``id``,
``type`` and ``name`` from a call's first delta, ``arguments`` fragments concatenated).
Where a parser cannot keep it (output that turns out malformed after parts were streamed)
its module says so; docs/parsers.md lists those cases.

Values: text is ``str`` as the router's detokenizer produced it; ``None`` means "absent"
and an empty string is never returned in its place by ``split`` / ``extract``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

Tool = Mapping[str, Any]
"""One entry of the request's ``tools`` list, in OpenAI's shape (``{"type": "function", "function": {...}}``)."""

IdFactory = Callable[[], str]
"""Makes a tool call's id; injected so that tests are deterministic."""


@dataclass(frozen=True)
class ReasoningDelta:
    """What one ``feed`` (or the ``flush``) of a reasoning stream adds; either part may be ``None``."""

    reasoning: str | None = None
    content: str | None = None


@dataclass(frozen=True)
class FunctionCall:
    name: str
    arguments: str
    """JSON text, as OpenAI's ``function.arguments`` (a string, not an object)."""


@dataclass(frozen=True)
class ToolCall:
    id: str
    function: FunctionCall
    type: str = "function"


@dataclass(frozen=True)
class ExtractedToolCalls:
    """A non-streamed parse: the content left for ``message.content`` and the calls, in output order."""

    content: str | None
    tool_calls: tuple[ToolCall, ...] = ()


@dataclass(frozen=True)
class ToolCallDelta:
    """One entry of a streamed ``delta.tool_calls``.

    A call's first delta carries ``id``, ``type`` ("function") and ``name``; later ones carry
    only ``index`` and an ``arguments`` fragment. ``arguments`` may ride on the first delta too.
    """

    index: int
    id: str | None = None
    type: str | None = None
    name: str | None = None
    arguments: str | None = None


@dataclass(frozen=True)
class ToolDelta:
    """What one ``feed`` (or the ``flush``) of a tool-call stream adds to ``choices[].delta``."""

    content: str | None = None
    tool_calls: tuple[ToolCallDelta, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.content) or bool(self.tool_calls)


class ReasoningStream(Protocol):
    """Streaming half of a reasoning parser; one per request. Holds back text that may be
    the start of a tag until the next ``feed`` (or ``flush``) decides it."""

    def feed(self, delta: str) -> ReasoningDelta: ...

    def flush(self) -> ReasoningDelta:
        """Called once when the output ended; returns whatever was held back."""
        ...


class ReasoningParser(Protocol):
    """Splits model output into reasoning and content (``--reasoning-parser``).

    Built per request: ``thinking`` says whether the output starts inside reasoning (the
    chat template's ``enable_thinking`` and whether the prompt already closed a ``<think>``
    decide it; see ``reasoning.starts_in_reasoning``).
    """

    def split(self, text: str) -> tuple[str | None, str | None]:
        """``(reasoning, content)`` of a whole output."""
        ...

    def reasoning_tokens(self, text: str, token_texts: Sequence[str], finished: bool = True) -> int:
        """How many of the tokens (each decoded on its own) that make ``text`` are reasoning,
        as vLLM counts them for ``usage.completion_tokens_details.reasoning_tokens``;
        ``finished``: ``text`` is the whole output, not a stream's output so far."""
        ...

    def stream(self) -> ReasoningStream: ...


class ToolStream(Protocol):
    """Streaming half of a tool-call parser; one per request."""

    def feed(self, delta: str) -> ToolDelta: ...

    def flush(self) -> ToolDelta:
        """Called once when the output ended: the held-back content and the rest of every call."""
        ...


class ToolParser(Protocol):
    """Finds tool calls in content (``--tool-call-parser``). ``tools`` is the request's list;
    the parsers here accept calls to any name, as vLLM's parsers of the same names do."""

    def extract(self, text: str, tools: Sequence[Tool] = ()) -> ExtractedToolCalls: ...

    def stream(self, tools: Sequence[Tool] = ()) -> ToolStream: ...
