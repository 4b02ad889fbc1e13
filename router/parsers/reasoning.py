"""Reasoning parsers of the ``<think>…</think>`` family, by vLLM 0.32's ``--reasoning-parser`` names.

One state machine serves every parser here; a ``ThinkRules`` says where they differ.
``split`` runs the streaming machine over the whole text, so streamed and non-streamed
results agree by construction (vLLM's own two paths disagree in corner cases; docs/parsers.md).

- ``deepseek_r1`` (vllm/reasoning/deepseek_r1_reasoning_parser.py, basic_parsers.py:153-176):
  output starts inside reasoning whether or not ``<think>`` comes; the first ``<think>`` is
  dropped; reasoning ends at the first ``</think>``; everything after it is content, verbatim.
  No ``</think>`` at all: the whole output is reasoning and content is absent.
- ``qwen3`` (vllm/parser/qwen3.py:90-202, 250-256, an engine grammar in 0.32): output starts
  inside reasoning unless ``enable_thinking`` is false (then all of it is content, verbatim).
  Every ``<think>`` inside reasoning is dropped; ``</think>`` ends reasoning, and so does
  ``<tool_call>``, which stays in the content for the tool parser; a later ``</think>`` in
  content is dropped. No end at all: all reasoning. No trailing-whitespace stripping.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from router.parsers.base import ReasoningDelta

THINK_START = "<think>"
THINK_END = "</think>"


@dataclass(frozen=True)
class ThinkRules:
    """How one parser treats its tags (all literal text, matched in the detokenized output)."""

    drop_every_start: bool
    """True: every ``<think>`` inside reasoning is dropped; False: only the first one."""
    drop_end_in_content: bool
    """True: a ``</think>`` after reasoning ended is dropped from content."""
    implicit_ends: tuple[str, ...] = ()
    """Tags that end reasoning and stay in the content (qwen3: ``<tool_call>``)."""
    turn_boundaries: tuple[str, ...] = ()
    """Prompt markers that stop the backwards scan in ``starts_in_reasoning``."""
    obeys_enable_thinking: bool = False
    """Whether ``chat_template_kwargs.enable_thinking = false`` makes the whole output content."""


DEEPSEEK_R1 = ThinkRules(drop_every_start=False, drop_end_in_content=False)
QWEN3 = ThinkRules(
    drop_every_start=True,
    drop_end_in_content=True,
    implicit_ends=("<tool_call>",),
    turn_boundaries=("<|im_start|>", "<|im_end|>"),
    obeys_enable_thinking=True,
)


def held_back(text: str, tags: tuple[str, ...]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of one of ``tags``."""
    longest = 0
    for tag in tags:
        for n in range(min(len(tag) - 1, len(text)), longest, -1):
            if text.endswith(tag[:n]):
                longest = n
                break
    return longest


def first_tag(text: str, tags: tuple[str, ...]) -> tuple[int, str] | None:
    """The earliest occurrence of any of ``tags`` in ``text``, as ``(index, tag)``."""
    found = [(i, tag) for tag in tags if (i := text.find(tag)) >= 0]
    return min(found) if found else None


class ThinkStream:
    """Streaming machine: ``feed`` deltas, then ``flush`` once. Text that may begin a tag is
    held until the next delta decides it, so no tag ever leaks split across deltas."""

    def __init__(self, rules: ThinkRules, thinking: bool) -> None:
        self._rules = rules
        self._in_reasoning = thinking
        self._verbatim = not thinking  # reasoning closed before the output began: no tag is special
        self._start_dropped = False
        self._pending = ""
        self._at = 0  # where ``_pending`` starts in the whole text fed
        self.spans: list[tuple[int, int]] = []  # [start, end) of each piece of reasoning in that text

    def _tags(self) -> tuple[str, ...]:
        if self._verbatim:
            return ()
        if not self._in_reasoning:
            return (THINK_END,) if self._rules.drop_end_in_content else ()
        starts = (THINK_START,) if self._rules.drop_every_start or not self._start_dropped else ()
        return (*starts, THINK_END, *self._rules.implicit_ends)

    def feed(self, delta: str) -> ReasoningDelta:
        self._pending += delta
        reasoning: list[str] = []
        content: list[str] = []
        while True:
            out = reasoning if self._in_reasoning else content
            tags = self._tags()
            hit = first_tag(self._pending, tags)
            if hit is None:
                self._emit(out, len(self._pending) - held_back(self._pending, tags))
                break
            index, tag = hit
            self._emit(out, index)
            self._pending = self._pending[len(tag) :]
            self._at += len(tag)
            self._on_tag(tag, content)
        return ReasoningDelta("".join(reasoning) or None, "".join(content) or None)

    def _emit(self, out: list[str], n: int) -> None:
        """Move the first ``n`` pending characters to ``out``."""
        if n and self._in_reasoning:
            self.spans.append((self._at, self._at + n))
        out.append(self._pending[:n])
        self._pending = self._pending[n:]
        self._at += n

    def _on_tag(self, tag: str, content: list[str]) -> None:
        if not self._in_reasoning:
            return  # a stray </think> in content: dropped
        if tag == THINK_START:
            self._start_dropped = True
            return
        self._in_reasoning = False
        if tag != THINK_END:
            content.append(tag)  # an implicit end (<tool_call>) belongs to the content

    def flush(self) -> ReasoningDelta:
        rest: list[str] = []
        self._emit(rest, len(self._pending))
        if not rest[0]:
            return ReasoningDelta()
        return ReasoningDelta(rest[0], None) if self._in_reasoning else ReasoningDelta(None, rest[0])


class ThinkReasoningParser:
    """A ``ReasoningParser`` (router.parsers.base) for one request."""

    def __init__(self, rules: ThinkRules, *, thinking: bool = True) -> None:
        self._rules = rules
        self._thinking = thinking

    def stream(self) -> ThinkStream:
        return ThinkStream(self._rules, self._thinking)

    def reasoning_tokens(self, text: str, token_texts: Sequence[str], finished: bool = True) -> int:
        """How many of the output's tokens are reasoning, as vLLM counts them for
        ``usage.completion_tokens_details.reasoning_tokens``:

        - ``deepseek_r1`` (basic_parsers.py ``count_reasoning_tokens``): tokens between a
          ``<think>`` and its ``</think>`` in the *output* (depth counted; vLLM needs both tags
          to be single tokens), so reasoning the prompt opened counts 0;
        - ``qwen3`` (parser engine, incremental_lexer.py ``_char_token_counts``): each token
          belongs to the character where its own text is found in the output, searching on
          from the previous one (a token not found counts at the first character); the
          tokens of reasoning characters count, the tags' do not. Before the output is
          ``finished``, text that may still begin a tag is not counted yet.
        """
        if not self._rules.drop_every_start:  # deepseek_r1
            count = depth = 0
            for piece in token_texts:
                if piece == THINK_START:
                    depth += 1
                elif piece == THINK_END:
                    depth = max(depth - 1, 0)
                elif depth:
                    count += 1
            return count
        stream = self.stream()
        stream.feed(text)
        if finished:
            stream.flush()
        counts = char_token_counts(text, token_texts)
        return sum(sum(counts[a:b]) for a, b in stream.spans)

    def split(self, text: str) -> tuple[str | None, str | None]:
        stream = self.stream()
        first, last = stream.feed(text), stream.flush()
        reasoning = (first.reasoning or "") + (last.reasoning or "")
        content = (first.content or "") + (last.content or "")
        return reasoning or None, content or None


def char_token_counts(text: str, token_texts: Sequence[str]) -> list[int]:
    """vLLM's ``_char_token_counts``: how many tokens start at each character of ``text``."""
    counts = [0] * len(text)
    if not text:
        return counts
    pos = assigned = 0
    for piece in token_texts:
        found = text.find(piece, pos) if piece else -1
        if found < 0:
            continue
        counts[found] += 1
        assigned += 1
        pos = found + len(piece)
    counts[0] += len(token_texts) - assigned
    return counts


def starts_in_reasoning(rules: ThinkRules, prompt: str, chat_template_kwargs: Mapping[str, Any]) -> bool:
    """Whether the output begins inside reasoning, given the rendered prompt.

    vLLM's serving layer asks the parser whether the prompt already ended reasoning
    (vllm/parser/abstract_parser.py:861-866; basic_parsers.py:71-80, and for engine parsers
    parser_engine.py:658-680): scanning the prompt backwards, an end tag before any
    ``<think>`` (or turn boundary) means the template closed reasoning, e.g. Qwen3 with
    ``enable_thinking=false`` renders ``<think>\\n\\n</think>\\n\\n``.
    """
    if rules.obeys_enable_thinking and not chat_template_kwargs.get("enable_thinking", True):
        return False
    ends = (THINK_END, *rules.implicit_ends)
    markers = [(prompt.rfind(tag), tag) for tag in (*ends, THINK_START, *rules.turn_boundaries)]
    index, tag = max(markers)
    return index < 0 or tag not in ends


def deepseek_r1(*, thinking: bool = True) -> ThinkReasoningParser:
    return ThinkReasoningParser(DEEPSEEK_R1, thinking=thinking)


def qwen3(*, thinking: bool = True) -> ThinkReasoningParser:
    return ThinkReasoningParser(QWEN3, thinking=thinking)
