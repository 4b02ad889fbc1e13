"""Reasoning parsers (router/parsers/reasoning.py) on recorded-style ``<think>`` outputs.

Each output is parsed whole and streamed cut at every byte boundary (and every character,
and random chunkings); the stream must assemble to the whole-text result.
"""

from __future__ import annotations

import pytest

from router.parsers import registry
from router.parsers.base import ReasoningParser
from tests.unit.parser_splits import all_splits, byte_splits

# DeepSeek's chat markers use FULLWIDTH VERTICAL LINE (U+FF5C).
DEEPSEEK_PROMPT = "<\uff5cUser\uff5c>hi<\uff5cAssistant\uff5c>"

# (parser, output, expected reasoning, expected content)
CASES = [
    # DeepSeek-R1: the template opens <think> in the prompt, so the output often lacks it.
    (
        "deepseek_r1",
        "<think>\nThe user asks 2+2.\n</think>\n\nThe answer is **4**.",
        "\nThe user asks 2+2.\n",
        "\n\nThe answer is **4**.",
    ),
    ("deepseek_r1", "Okay, 2+2: add them.\n</think>\n\n4", "Okay, 2+2: add them.\n", "\n\n4"),
    ("deepseek_r1", "<think>\nStill weighing the options", "\nStill weighing the options", None),
    ("deepseek_r1", "A plain answer, no tags.", "A plain answer, no tags.", None),
    ("deepseek_r1", "<think>only thought</think>", "only thought", None),
    ("deepseek_r1", "<think></think>Hi", None, "Hi"),
    ("deepseek_r1", "<think>日本語で考える 🤔 é</think>答え: 42 ✅", "日本語で考える 🤔 é", "答え: 42 ✅"),
    ("deepseek_r1", "<think>a</think>b<think>c</think>d", "a", "b<think>c</think>d"),
    ("deepseek_r1", "<think>x <think> y</think>z", "x <think> y", "z"),
    ("deepseek_r1", "<think>a < b and </thin is not a tag</think>ok", "a < b and </thin is not a tag", "ok"),
    ("deepseek_r1", "<think>ends on a partial tag </thi", "ends on a partial tag </thi", None),
    ("deepseek_r1", "", None, None),
    # vLLM's non-streamed path drops text before <think> ("r") and partitions at a <think> found
    # after </think> ("ghi", None); its streamed path gives what we give (docs/parsers.md).
    ("deepseek_r1", "pre<think>r</think>c", "prer", "c"),
    ("deepseek_r1", "abc</think>def<think>ghi", "abc", "def<think>ghi"),
    # Qwen3: thinking on by default; <tool_call> ends reasoning and stays in content.
    ("qwen3", "<think>\nLet me reason.\n</think>\n\nParis.", "\nLet me reason.\n", "\n\nParis."),
    ("qwen3", "<think>\nr\n</think>\n\nans</think>wer", "\nr\n", "\n\nanswer"),
    ("qwen3", "<think>\nplan <think> more</think>a", "\nplan  more", "a"),
    (
        "qwen3",
        '<think>\nI need the weather.\n<tool_call>\n{"name": "w", "arguments": {}}\n</tool_call>',
        "\nI need the weather.\n",
        '<tool_call>\n{"name": "w", "arguments": {}}\n</tool_call>',
    ),
    ("qwen3", "<think>\ntruncated by max_tokens", "\ntruncated by max_tokens", None),
    ("qwen3", "no tags at all", "no tags at all", None),
    ("qwen3", "<think>\n思考中… «ü»\n</think>\n\n答案 🎉<think>", "\n思考中… «ü»\n", "\n\n答案 🎉<think>"),
    ("qwen3", "<think>\n\n</think>\n\n", "\n\n", "\n\n"),
    ("qwen3", "pre<think>r</think>c", "prer", "c"),
    ("qwen3", "a\n<tool_call>{}</tool_call></think>z", "a\n", "<tool_call>{}</tool_call>z"),
]


def _stream(parser: ReasoningParser, deltas: list[str]) -> tuple[str | None, str | None]:
    stream = parser.stream()
    pieces = [stream.feed(d) for d in deltas] + [stream.flush()]
    for piece in pieces:
        assert piece.reasoning != "" and piece.content != ""  # None, never empty text
    reasoning = "".join(p.reasoning or "" for p in pieces)
    content = "".join(p.content or "" for p in pieces)
    return reasoning or None, content or None


@pytest.mark.parametrize(("name", "text", "reasoning", "content"), CASES)
def test_split(name: str, text: str, reasoning: str | None, content: str | None) -> None:
    assert registry.reasoning_parser(name).split(text) == (reasoning, content)


@pytest.mark.parametrize(("name", "text", "reasoning", "content"), CASES)
def test_stream_cut_at_every_byte(name: str, text: str, reasoning: str | None, content: str | None) -> None:
    parser = registry.reasoning_parser(name)
    for deltas in byte_splits(text):
        assert _stream(parser, deltas) == (reasoning, content), deltas


@pytest.mark.parametrize(("name", "text", "reasoning", "content"), CASES)
def test_stream_chunkings(name: str, text: str, reasoning: str | None, content: str | None) -> None:
    parser = registry.reasoning_parser(name)
    for deltas in all_splits(text):
        assert _stream(parser, deltas) == (reasoning, content), deltas


def test_stream_sends_reasoning_as_it_comes() -> None:
    stream = registry.reasoning_parser("deepseek_r1").stream()
    assert stream.feed("<think>Step one").reasoning == "Step one"
    assert stream.feed(" and </th").reasoning == " and "  # "</th" waits: it may be the end tag
    last = stream.feed("ink>Done")
    assert (last.reasoning, last.content) == (None, "Done")
    assert stream.flush() == type(last)()


@pytest.mark.parametrize(
    ("name", "prompt", "kwargs", "thinking"),
    [
        # Qwen3 with enable_thinking=false renders an empty, closed think block in the prompt.
        ("qwen3", "<|im_start|>assistant\n<think>\n\n</think>\n\n", {}, False),
        ("qwen3", "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", {}, True),
        ("qwen3", "<|im_start|>assistant\n", {"enable_thinking": False}, False),
        # An earlier turn's closed block is behind a turn boundary: the new turn still thinks.
        ("qwen3", "<think>a</think>b<|im_end|>\n<|im_start|>assistant\n", {}, True),
        ("deepseek_r1", DEEPSEEK_PROMPT + "<think>\n", {}, True),
        ("deepseek_r1", DEEPSEEK_PROMPT + "</think>", {}, False),
        ("deepseek_r1", DEEPSEEK_PROMPT, {"enable_thinking": False}, True),
    ],
)
def test_prompt_decides_where_output_starts(name: str, prompt: str, kwargs: dict[str, bool], thinking: bool) -> None:
    parser = registry.reasoning_parser(name, prompt, kwargs)
    text = "<think>x</think>y"
    assert parser.split(text) == (("x", "y") if thinking else (None, text))


def test_unknown_name_names_the_choices() -> None:
    with pytest.raises(ValueError, match=r"reasoning_parser: unknown parser 'r1'; choose one of deepseek_r1, qwen3"):
        registry.reasoning_parser("r1")
