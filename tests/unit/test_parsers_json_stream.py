"""router/parsers/json_stream.py: a JSON value rewritten, as it streams in, into json.dumps form."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from router.parsers.json_stream import CanonicalJsonStream

_CHARS = ["a", "é", "😀", '"', "\\", "\n", "\x01", "/", " ", "日", "\u2028", "\ud83d"]
_STYLES: list[dict[str, Any]] = [
    {},
    {"separators": (",", ":")},
    {"indent": 2},
    {"ensure_ascii": True},
    {"ensure_ascii": True, "separators": (",", ":")},
]


def _value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randint(0, 8 if depth < 3 else 4)
    if kind == 0:
        return rng.choice([0, -3, 12345678901234567890, 1.5, -0.0, 1e300, 2.5e-5, 100])
    if kind == 1:
        return rng.choice([True, False, None])
    if kind in (2, 3):
        return "".join(rng.choice(_CHARS) for _ in range(rng.randint(0, 6)))
    if kind in (4, 5, 6):
        return {f"k{i}" + rng.choice(["", "é", '"']): _value(rng, depth + 1) for i in range(rng.randint(0, 4))}
    return [_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]


@pytest.mark.parametrize("seed", range(4))
def test_every_prefix_is_a_prefix_of_the_dumps(seed: int) -> None:
    """Random values written in five styles (compact, indented, \\u-escaped, exponents in
    capitals), fed one character at a time: what is emitted is always a prefix of
    json.dumps(value, ensure_ascii=False), and all of it once the value closes."""
    rng = random.Random(seed)
    for _ in range(300):
        value = {"root": _value(rng)}
        final = json.dumps(value, ensure_ascii=False)
        raw = json.dumps(value, **rng.choice(_STYLES)).replace("e+", "E")
        stream = CanonicalJsonStream()
        for ch in raw:
            stream.feed(ch)
            assert final.startswith(stream.text), raw
        assert (stream.text, stream.done, stream.end) == (final, True, len(raw))


@pytest.mark.parametrize(
    ("raw", "text", "end"),
    [
        ('  {"a" :1 } trailing', '{"a": 1}', 11),
        ("5 and more", "5", 1),
        ('"x\\u00e9\\ud83d\\ude00" more', '"xé😀"', 21),
        ("[1,2", "[1, ", None),  # the 2 may grow into 20: held back
        ('{"a": "par', '{"a": "par', None),
    ],
)
def test_value_end_and_held_back_scalars(raw: str, text: str, end: int | None) -> None:
    stream = CanonicalJsonStream()
    for ch in raw:
        stream.feed(ch)
    assert (stream.text, stream.end) == (text, end)
