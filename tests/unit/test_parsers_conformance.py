"""canitoolcall's recorded corpus (a conformance suite for tool-call and reasoning parsers)
replayed through router/parsers, as its vLLM adapter replays vLLM's own parsers.

Families and parser choices follow canitoolcall's vLLM adapter (``PARSERS`` in
canitoolcall/adapters/vllm.py): qwen3-hermes through ``hermes`` with ``qwen3``,
``deepseek_r1`` or no reasoning parser by model; llama through ``llama3_json``; mistral's
non-reasoning models through ``mistral``. Fixtures for parsers not written here (Llama 4's
``llama4_pythonic``, Mistral's reasoning parser) are left out, not skipped: see SKIPPED.

The corpus carries token ids, but these machines have no tokenizers (no model hub), so the
stream is replayed in characters: canitoolcall's ``char`` strategies (one character per
delta, and seeded 1-8 character groups), harsher than any token split.

Each fixture must parse as canitoolcall expects (``assert_conforms``), and every chunking must
give the non-streamed parse (``assert_equivalent``). Where vLLM's rules (which the parsers
follow) differ from the corpus's expectation, the fixture is listed in KNOWN with the reason;
xfail is strict, so a fixture that starts passing must leave the list. docs/parsers.md has
the counts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
from canitoolcall.chunking import ChunkStrategy, split_text
from canitoolcall.fixtures import Fixture, load_fixtures
from canitoolcall.pytest_plugin import assert_conforms, assert_equivalent, family_for
from canitoolcall.results import ParsedToolCall, ParseResult

from router.parsers import registry
from router.parsers.base import ReasoningParser, ToolParser
from router.parsers.toolstream import merge


@dataclass(frozen=True)
class Choice:
    tool_parser: str
    reasoning_parser: str | None


# (family, model pattern, choice); the first match wins, as in canitoolcall's vLLM adapter.
RULES: list[tuple[str, str, Choice | None]] = [
    ("qwen3-hermes", r"Qwen3-.*Instruct-2507", Choice("hermes", None)),
    ("qwen3-hermes", r"Qwen3-.*Thinking-2507", Choice("hermes", "deepseek_r1")),
    ("qwen3-hermes", r"Qwen2\.5", Choice("hermes", None)),
    ("qwen3-hermes", r"Qwen3", Choice("hermes", "qwen3")),
    ("llama", r"Llama-4", None),  # llama4_pythonic: not written here
    ("llama", r"Llama-3", Choice("llama3_json", None)),
    ("mistral", r"Magistral|Mistral-Medium-3\.5|Mistral-Small-4|Ministral-3-.*Reasoning", None),  # mistral reasoning
    ("mistral", r"mistral|ministral|devstral", Choice("mistral", None)),
]
FAMILIES = sorted({family for family, _, _ in RULES})
STRATEGIES = [ChunkStrategy("char", seed=s) for s in range(4)]


def choice_for(fixture: Fixture) -> Choice | None:
    for family, pattern, choice in RULES:
        if family == fixture.family and re.search(pattern, fixture.reference_model, re.IGNORECASE):
            return choice
    return None


FIXTURES = [f for f in load_fixtures(families=FAMILIES) if choice_for(f) is not None]
SKIPPED = [f.id for f in load_fixtures(families=FAMILIES) if choice_for(f) is None]

# Fixture id -> why our parse differs from the corpus's expectation: vLLM 0.32's rule, kept on purpose.
_ALL_OR_NOTHING = (
    "one call that fails makes the whole output content, as vLLM's hermes does (hermes_tool_parser.py:116-120)"
)
KNOWN: dict[str, str] = {
    "mistral/llamacpp-v11-call-id": "vLLM 0.32 has no [CALL_ID] handling: the name keeps '[CALL_ID]<id>',"
    " as vLLM's does",
    "mistral/llamacpp-v11-call-id-parallel": "vLLM 0.32 has no [CALL_ID] handling (as above)",
    "qwen3-hermes/marker-in-arguments": "'</tool_call>' inside a JSON string ends the body, as vLLM's non-greedy"
    " pattern does (hermes_tool_parser.py:38-40); the cut JSON fails, so all is content",
    "qwen3-hermes/truncated-second-parallel-call": _ALL_OR_NOTHING,
}

# Fixture id -> why the stream cannot equal the non-streamed parse: a call was sent before the
# output turned out malformed or cut, and the non-streamed parse then refuses every call.
_SENT_TOO_EARLY = "the call was streamed before its body proved invalid; non-streamed: " + _ALL_OR_NOTHING
KNOWN_STREAM: dict[str, str] = {
    "llama/l3-truncated-inside-parameters": "the call was streamed before max_tokens cut it; non-streamed, one bad"
    " object makes the whole output content, as vLLM's llama3_json does (llama_tool_parser.py:126-147)",
    "qwen3-hermes/bug-sglang-30480-truncated-mid-arguments": _SENT_TOO_EARLY,
    "qwen3-hermes/marker-in-arguments": _SENT_TOO_EARLY,
    "qwen3-hermes/vllm-invalid-json-missing-brace": _SENT_TOO_EARLY,
    "qwen3-hermes/truncated-mid-arguments-no-thinking": _SENT_TOO_EARLY,
    "qwen3-hermes/truncated-mid-arguments-thinking": _SENT_TOO_EARLY,
    "qwen3-hermes/truncated-second-parallel-call": _SENT_TOO_EARLY,
}


def generation_prompt(fixture: Fixture) -> str:
    if fixture.generation_prompt is not None:
        return fixture.generation_prompt
    family = family_for(fixture)
    model = family.reference_for(fixture.reference_model) if family else None
    return (model.default_generation_prompt or "") if model else ""


def parsers(fixture: Fixture, choice: Choice) -> tuple[ReasoningParser | None, ToolParser]:
    kwargs = {} if fixture.thinking is None else {"enable_thinking": fixture.thinking}
    reasoning = (
        registry.reasoning_parser(choice.reasoning_parser, generation_prompt(fixture), kwargs)
        if choice.reasoning_parser
        else None
    )
    return reasoning, registry.tool_parser(choice.tool_parser)


def result(reasoning: str | None, content: str | None, calls: list[tuple[str, str]]) -> ParseResult:
    tool_calls = tuple(ParsedToolCall(name, args) for name, args in calls)
    return ParseResult(content=content, reasoning_content=reasoning, tool_calls=tool_calls)


def parse(fixture: Fixture, choice: Choice) -> ParseResult:
    reasoning_parser, tool_parser = parsers(fixture, choice)
    reasoning, content = reasoning_parser.split(fixture.raw_output) if reasoning_parser else (None, fixture.raw_output)
    extracted = tool_parser.extract(content or "", fixture.tools)
    calls = [(c.function.name, c.function.arguments) for c in extracted.tool_calls]
    return result(reasoning, extracted.content, calls)


def parse_stream(fixture: Fixture, choice: Choice, deltas: list[str]) -> ParseResult:
    reasoning_parser, tool_parser = parsers(fixture, choice)
    reasoning_stream = reasoning_parser.stream() if reasoning_parser else None
    tool_stream = tool_parser.stream(fixture.tools)
    reasoning: list[str] = []
    tool_deltas = []
    for delta in [*deltas, None]:
        if reasoning_stream is None:
            content = delta
        else:
            piece = reasoning_stream.feed(delta) if delta is not None else reasoning_stream.flush()
            reasoning.append(piece.reasoning or "")
            content = piece.content
        if content:
            tool_deltas.append(tool_stream.feed(content))
    tool_deltas.append(tool_stream.flush())
    merged = merge(tool_deltas)
    calls = [(c.function.name, c.function.arguments) for c in merged.tool_calls]
    return result("".join(reasoning) or None, merged.content, calls)


def _params(known: dict[str, str]) -> list[object]:
    marks = {fid: pytest.mark.xfail(reason=why, strict=True) for fid, why in known.items()}
    return [pytest.param(f, id=f.id, marks=marks.get(f.id, ())) for f in FIXTURES]


@pytest.mark.parametrize("fixture", _params(KNOWN))
def test_fixture_conforms(fixture: Fixture) -> None:
    choice = choice_for(fixture)
    assert choice is not None
    assert_conforms(fixture, parse(fixture, choice), soft=True)


@pytest.mark.parametrize("fixture", _params(KNOWN_STREAM))
def test_stream_equals_nonstream(fixture: Fixture) -> None:
    choice = choice_for(fixture)
    assert choice is not None
    whole = parse(fixture, choice)
    for strategy in STRATEGIES:
        assert_equivalent(whole, parse_stream(fixture, choice, split_text(fixture.raw_output, strategy)))


def test_corpus_counts() -> None:
    """The counts docs/parsers.md reports (canitoolcall 0.1.1); a new corpus changes them on purpose."""
    assert (len(FIXTURES), len(SKIPPED)) == (106, 25)
    assert set(KNOWN) | set(KNOWN_STREAM) <= {f.id for f in FIXTURES}
