"""Tool-call parsers (router/parsers/*.py) on recorded-style outputs of each format.

Every output is extracted whole and streamed cut at every character and byte boundary and
in random chunkings; the deltas, merged as an OpenAI client merges them, must equal the
extracted result (ids included: both draw from a fresh counter). Malformed outputs whose
stream cannot match (calls were sent before the output turned out bad) are pinned apart,
in ``DIVERGENT``, with what each side returns.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass

import pytest

from router.parsers import registry
from router.parsers.base import ExtractedToolCalls, FunctionCall, IdFactory, ToolCall, ToolDelta, ToolParser
from router.parsers.toolstream import merge
from tests.unit.parser_splits import all_splits, byte_splits


@dataclass(frozen=True)
class Case:
    parser: str
    text: str
    content: str | None
    calls: tuple[tuple[str, str], ...] = ()

    @property
    def expected(self) -> ExtractedToolCalls:
        calls = tuple(ToolCall(f"call-{i}", FunctionCall(n, a)) for i, (n, a) in enumerate(self.calls))
        return ExtractedToolCalls(self.content, calls)


def counter_ids() -> IdFactory:
    numbers = itertools.count()
    return lambda: f"call-{next(numbers)}"


HERMES = [
    Case(
        "hermes",
        "I'll check the weather.\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>',
        "I'll check the weather.\n",
        (("get_weather", '{"city": "Paris", "unit": "celsius"}'),),
    ),
    Case(  # Qwen3 parallel calls, unicode kept as is (ensure_ascii=False)
        "hermes",
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "東京"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_time", "arguments": {"tz": "Asia/Tokyo"}}\n</tool_call>',
        None,
        (("get_weather", '{"city": "東京"}'), ("get_time", '{"tz": "Asia/Tokyo"}')),
    ),
    Case(  # compact spacing, \u escapes, escaped quotes, nested JSON, an exponent: re-serialized
        "hermes",
        '<tool_call>{"name":"search","arguments":{"q":"caf\\u00e9 \\"best\\"","limit":5,'
        '"filters":{"open":true,"tags":["a","b"]},"score":1.5e3}}</tool_call>',
        None,
        (
            (
                "search",
                '{"q": "café \\"best\\"", "limit": 5, "filters": {"open": true, "tags": ["a", "b"]}, "score": 1500.0}',
            ),
        ),
    ),
    Case(  # text after the calls is dropped, as vLLM drops it
        "hermes",
        '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>\nDone!',
        None,
        (("f", "{}"),),
    ),
    Case("hermes", "Paris is the capital of France.", "Paris is the capital of France."),
    Case("hermes", "A lone <tool_ tag-like text", "A lone <tool_ tag-like text"),
    Case(  # stop string cut the closing tag: the body is complete JSON
        "hermes",
        '<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n',
        None,
        (("f", '{"x": 1}'),),
    ),
    Case(  # whitespace-only content before a call is absent
        "hermes",
        '\n\n<tool_call>{"name":"f","arguments":{"a":[1,2,3]}}</tool_call>',
        None,
        (("f", '{"a": [1, 2, 3]}'),),
    ),
    Case(  # string arguments stay a JSON string
        "hermes",
        '<tool_call>{"name": "run", "arguments": "{\\"cmd\\": \\"ls\\"}"}</tool_call>',
        None,
        (("run", '"{\\"cmd\\": \\"ls\\"}"'),),
    ),
    Case(
        "hermes",
        'Sending 👋\n<tool_call>\n{"name": "send", "arguments": {"text": "He said \\"hi\\" 👋\\nbye", '
        '"meta": {"to": ["ana@example.org"], "cc": null, "n": -3, "ok": false}}}\n</tool_call>',
        "Sending 👋\n",
        (
            (
                "send",
                '{"text": "He said \\"hi\\" 👋\\nbye", '
                '"meta": {"to": ["ana@example.org"], "cc": null, "n": -3, "ok": false}}',
            ),
        ),
    ),
    Case(
        "hermes",
        '<tool_call>{"name": "echo", "arguments": {"s": "<b>bold</b> [1] {x}"}}</tool_call>',
        None,
        (("echo", '{"s": "<b>bold</b> [1] {x}"}'),),
    ),
    Case(  # no "arguments": the whole output is content, streamed too (no call ever started)
        "hermes",
        'Try <tool_call>{"name": "f"}</tool_call>',
        'Try <tool_call>{"name": "f"}</tool_call>',
    ),
]

LLAMA = [
    Case(
        "llama3_json",
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "San Francisco", "days": 3}}',
        None,
        (("get_weather", '{"city": "San Francisco", "days": 3}'),),
    ),
    Case(
        "llama3_json",
        '{"name": "get_weather", "parameters": {"city": "Paris"}}; {"name": "get_time", "parameters": {"tz": "CET"}}',
        None,
        (("get_weather", '{"city": "Paris"}'), ("get_time", '{"tz": "CET"}')),
    ),
    Case(
        "llama3_json",
        '{"name": "f", "arguments": {"a": 1}, "parameters": {"b": 2}}',
        None,
        (("f", '{"a": 1}'),),
    ),
    Case(
        "llama3_json",
        '{"name": "translate", "parameters": {"text": "naïve \\"quote\\" 😀", "opts": {"to": ["de", "ja"], "x": 0.5}}}',
        None,
        (("translate", '{"text": "naïve \\"quote\\" 😀", "opts": {"to": ["de", "ja"], "x": 0.5}}'),),
    ),
    Case(
        "llama3_json",
        '{"name": "f", "parameters": {"x": 1}}\nHope this helps!',
        None,
        (("f", '{"x": 1}'),),
    ),
    Case("llama3_json", "The capital of France is Paris.", "The capital of France is Paris."),
    Case("llama3_json", "Use {curly} braces.", "Use {curly} braces."),
    Case("llama3_json", '{"answer": 42}', '{"answer": 42}'),  # JSON without a name is content
    Case("llama3_json", '<|python_tag|>{"name": "f"}', '<|python_tag|>{"name": "f"}'),
    Case(  # leading prose before a bare "{": content (vLLM's non-streaming path takes the call; docs/parsers.md)
        "llama3_json",
        'Sure! {"name": "f", "parameters": {}}',
        'Sure! {"name": "f", "parameters": {}}',
    ),
    Case(  # <|python_tag|> anywhere starts the calls; the text before it is content
        "llama3_json",
        'Let me check. <|python_tag|>{"name": "get_weather", "parameters": {"city": "Tokyo"}}',
        "Let me check. ",
        (("get_weather", '{"city": "Tokyo"}'),),
    ),
    Case("llama3_json", '\n<|python_tag|>{"name": "f", "parameters": {}}', None, (("f", "{}"),)),
]

MISTRAL = [
    Case(
        "mistral",
        '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris", "unit": "celsius"}',
        None,
        (("get_weather", '{"city": "Paris", "unit": "celsius"}'),),
    ),
    Case(  # v11 keeps the model's own argument text
        "mistral",
        '[TOOL_CALLS]get_weather[ARGS]{"city":"Paris"}[TOOL_CALLS]get_time[ARGS]{"tz":"Europe/Paris"}',
        None,
        (("get_weather", '{"city":"Paris"}'), ("get_time", '{"tz":"Europe/Paris"}')),
    ),
    Case(
        "mistral",
        'Let me look that up.\n\n[TOOL_CALLS]search[ARGS]{"q": "ünïcödé \\"x\\" \\u00e9"}',
        "Let me look that up.",
        (("search", '{"q": "ünïcödé \\"x\\" \\u00e9"}'),),
    ),
    Case(
        "mistral",
        '[TOOL_CALLS]f[ARGS]{"a": [1, {"b": "}"}]} and some trailing words',
        None,
        (("f", '{"a": [1, {"b": "}"}]}'),),
    ),
    Case("mistral", '[TOOL_CALLS]get_weather{"city": "Lyon"}', None, (("get_weather", '{"city": "Lyon"}'),)),
    Case("mistral", "[TOOL_CALLS]ping[ARGS]", None, (("ping", "{}"),)),
    Case("mistral", "Bonjour ! 👋 [1]", "Bonjour ! 👋 [1]"),
    Case("mistral", "[TOOL_CALLS]not json, no name end", "[TOOL_CALLS]not json, no name end"),
    Case(  # pre-v11: a JSON array after the marker, arguments re-serialized
        "mistral",
        '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city":"Paris"}}, '
        '{"name": "get_time", "arguments": {"tz": "CET", "n": 2}}]',
        None,
        (("get_weather", '{"city": "Paris"}'), ("get_time", '{"tz": "CET", "n": 2}')),
    ),
    Case("mistral", '[TOOL_CALLS][{"name": "f"}]', None, (("f", "{}"),)),
    Case("mistral", '[TOOL_CALLS][{"name": "f", "arguments": "{\\"a\\":1}"}]', None, (("f", '{"a":1}'),)),
    Case(
        "mistral",
        'Checking. [TOOL_CALLS][{"name": "f", "arguments": {"a": 1}}, 3, {"x": 1}]',
        "Checking. ",
        (("f", '{"a": 1}'),),
    ),
]

PYTHONIC = [
    Case(
        "pythonic",
        '[get_weather(city="San Francisco", metric="celsius")]',
        None,
        (("get_weather", '{"city": "San Francisco", "metric": "celsius"}'),),
    ),
    Case(
        "pythonic",
        "[get_weather(city='Paris'), get_time(tz=\"Europe/Paris\", offset=-1, scale=+2.5)]",
        None,
        (("get_weather", '{"city": "Paris"}'), ("get_time", '{"tz": "Europe/Paris", "offset": -1, "scale": 2.5}')),
    ),
    Case(
        "pythonic",
        '[book(flight={"from": "SFO", "to": "東京"}, seats=[1, 2], vip=True, note=None, tags={"x"}, size=(800, 600))]',
        None,
        (
            (
                "book",
                '{"flight": {"from": "SFO", "to": "東京"}, "seats": [1, 2], "vip": true, "note": null, '
                '"tags": ["x"], "size": [800, 600]}',
            ),
        ),
    ),
    Case(
        "pythonic",
        '[say(text="a \\"quoted\\" ) ] text", lang=\'en\')]',
        None,
        (("say", '{"text": "a \\"quoted\\" ) ] text", "lang": "en"}'),),
    ),
    Case("pythonic", "[get_time()]", None, (("get_time", "{}"),)),
    Case("pythonic", "[f(a=true, b=null, c=f'x')]", None, (("f", '{"a": true, "b": null, "c": "x"}'),)),
    Case("pythonic", "The weather is sunny.", "The weather is sunny."),
    Case("pythonic", "[1] See the footnote.", "[1] See the footnote."),
    Case("pythonic", " [f(a=1)]", " [f(a=1)]"),
    Case("pythonic", "[]", "[]"),
]

CASES = HERMES + LLAMA + MISTRAL + PYTHONIC


def stream(parser: ToolParser, deltas: list[str]) -> ExtractedToolCalls:
    s = parser.stream()
    out = [s.feed(d) for d in deltas] + [s.flush()]
    check_openai_shape(out)
    return merge(out)


def check_openai_shape(deltas: list[ToolDelta]) -> None:
    """A call's first delta has id, type and name; later ones only index and an argument fragment."""
    seen: set[int] = set()
    for delta in deltas:
        assert delta.content != ""
        for piece in delta.tool_calls:
            if piece.index not in seen:
                assert piece.index == len(seen), "calls start in index order"
                assert piece.id and piece.type == "function" and piece.name is not None
                seen.add(piece.index)
            else:
                assert (piece.id, piece.type, piece.name) == (None, None, None)
                assert piece.arguments, "no empty fragments"


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.parser}:{c.text[:40]}")
def test_extract(case: Case) -> None:
    assert registry.tool_parser(case.parser, counter_ids()).extract(case.text) == case.expected


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.parser}:{c.text[:40]}")
def test_stream_assembles_to_extract(case: Case) -> None:
    for deltas in [*all_splits(case.text), *byte_splits(case.text)]:
        assert stream(registry.tool_parser(case.parser, counter_ids()), deltas) == case.expected, deltas


def test_arguments_stream_in_fragments() -> None:
    """Arguments are sent as they firm up, not only when a call closes."""
    s = registry.tool_parser("hermes", counter_ids()).stream()
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "San Francisco", "days": 12}}\n</tool_call>'
    fragments = [p.arguments for d in [s.feed(ch) for ch in text] for p in d.tool_calls if p.arguments]
    assert len(fragments) > 10
    assert fragments[0].startswith("{")


@pytest.mark.parametrize(
    ("name", "template"),
    [
        ("hermes", '<tool_call>\n{"name": "write", "arguments": ARGS}\n</tool_call>'),
        ("llama3_json", '{"name": "write", "parameters": ARGS}; {"name": "done", "parameters": {}}'),
        ("mistral", "[TOOL_CALLS]write[ARGS]ARGS[TOOL_CALLS]done[ARGS]{}"),
    ],
)
def test_long_arguments_stream_whole(name: str, template: str) -> None:
    """A 20 kB argument (code, escapes, numbers) in 4-character deltas, as a long write_file call streams."""
    code = 'def f(x):\n    return "é\\"" + str(x * 1.5e3)\n' * 400
    args = json.dumps({"path": "src/app.py", "content": code, "mode": 420, "tags": ["a", None, True]})
    text = template.replace("ARGS", args)
    parser = registry.tool_parser(name, counter_ids())
    expected = parser.extract(text)
    assert expected.tool_calls and len(expected.tool_calls[0].function.arguments) > 20_000
    deltas = [text[i : i + 4] for i in range(0, len(text), 4)]
    assert stream(registry.tool_parser(name, counter_ids()), deltas) == expected


# Malformed outputs: vLLM's non-streamed parse refuses the whole output (all content, no call),
# but by then the stream had started a call. As vLLM's streaming parsers, the stream then sends
# nothing more: its content is what came before the call. A stream that started no call ends
# with all of the content.
DIVERGENT = [
    ("hermes", 'x<tool_call>{"name": "f", "arguments": {"a": 1}</tool_call>', "f"),
    ("hermes", '<tool_call>\n{"name": "f", "arguments": {"city": "Par', "f"),  # max_tokens
    ("llama3_json", '{"name": "f", "parameters": {"x": 1}', "f"),
    ("pythonic", "[f(a=b)]", "f"),
]


@pytest.mark.parametrize(("name", "text", "started"), DIVERGENT)
def test_malformed_after_a_call_started(name: str, text: str, started: str) -> None:
    assert registry.tool_parser(name, counter_ids()).extract(text) == ExtractedToolCalls(text)
    for deltas in all_splits(text):
        streamed = stream(registry.tool_parser(name, counter_ids()), deltas)
        if streamed.tool_calls:
            assert [c.function.name for c in streamed.tool_calls] == [started]
            assert text.startswith(streamed.content or "") and started not in (streamed.content or "")
        else:
            assert streamed.content == text


def test_default_ids_follow_vllm() -> None:
    text = '<tool_call>{"name": "f", "arguments": {}}</tool_call>'
    for name in ("hermes", "qwen3_json"):
        (call,) = registry.tool_parser(name).extract(text).tool_calls
        assert re.fullmatch(r"chatcmpl-tool-[0-9a-f]{16}", call.id)
    (call,) = registry.tool_parser("mistral").extract("[TOOL_CALLS]f[ARGS]{}").tool_calls
    assert re.fullmatch(r"[A-Za-z0-9]{9}", call.id)


def test_unknown_name_names_the_choices() -> None:
    with pytest.raises(ValueError, match=r"tool_call_parser: unknown parser 'qwen'; choose one of hermes, llama3_json"):
        registry.tool_parser("qwen")
