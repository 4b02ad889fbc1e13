"""Ways to cut one recorded output into stream deltas, shared by the parser tests.

Deltas are what the router's incremental detokenizer hands on: ``str`` pieces. Cutting the
UTF-8 bytes anywhere and decoding incrementally (as a detokenizer does with a split
multi-byte character) gives the pieces a real stream can carry, empty ones included.
"""

from __future__ import annotations

import codecs
import random
from collections.abc import Iterator


def byte_splits(text: str) -> Iterator[list[str]]:
    """Two deltas, cut at every byte boundary of the UTF-8 text."""
    raw = text.encode()
    for cut in range(len(raw) + 1):
        decoder = codecs.getincrementaldecoder("utf-8")()
        yield [decoder.decode(raw[:cut]), decoder.decode(raw[cut:], final=True)]


def char_splits(text: str) -> Iterator[list[str]]:
    """Two deltas at every character boundary, then one delta per character."""
    for cut in range(len(text) + 1):
        yield [text[:cut], text[cut:]]
    yield list(text)


def random_splits(text: str, count: int = 25) -> Iterator[list[str]]:
    """Seeded random chunkings of 1 to 8 characters, the same on every machine."""
    for seed in range(count):
        rng = random.Random(seed)
        pieces, pos = [], 0
        while pos < len(text):
            step = rng.randint(1, 8)
            pieces.append(text[pos : pos + step])
            pos += step
        yield pieces


def all_splits(text: str) -> Iterator[list[str]]:
    yield [text]
    yield from char_splits(text)
    yield from random_splits(text)
