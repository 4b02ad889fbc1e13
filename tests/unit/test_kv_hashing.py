"""Golden vectors pin pdserve's block hash: router and workers must agree bit for bit."""

from __future__ import annotations

import hashlib
import struct

import pytest

from pdserve.kv.hashing import SCHEME, block_hash, block_hashes, root_hash
from pdserve.types import to_hex

# Computed once and frozen: changing them means every deployed index is invalid.
GOLDEN = {
    "root_m": "a38d34db12c22d33",
    "m_0_10_bs4": ["07e6dc95b00d5ac1", "cd4ed3ebf489f968"],
    "smollm2_123": "e7accc7e71c241c9",
}


def test_scheme_name() -> None:
    assert SCHEME == "pdserve-blake2b64-v1"


def test_golden_vectors() -> None:
    assert to_hex(root_hash("m")) == GOLDEN["root_m"]
    assert [to_hex(h) for h in block_hashes("m", list(range(10)), 4)] == GOLDEN["m_0_10_bs4"]
    assert to_hex(block_hash(root_hash("smollm2"), [1, 2, 3])) == GOLDEN["smollm2_123"]


def test_definition_written_in_the_module_docstring() -> None:
    root = int.from_bytes(hashlib.blake2b(b"pdserve-kv-v1\0m", digest_size=8).digest(), "little")
    first = hashlib.blake2b(struct.pack("<Q4I", root, 0, 1, 2, 3), digest_size=8).digest()
    assert root_hash("m") == root
    assert block_hashes("m", [0, 1, 2, 3], 4) == [int.from_bytes(first, "little")]


def test_only_full_blocks_are_hashed() -> None:
    assert len(block_hashes("m", list(range(10)), 4)) == 2
    assert block_hashes("m", list(range(3)), 4) == []


def test_chain_depends_on_every_earlier_token_and_the_model() -> None:
    a = block_hashes("m", [1, 2, 3, 4, 5, 6, 7, 8], 4)
    b = block_hashes("m", [9, 2, 3, 4, 5, 6, 7, 8], 4)
    assert a[1] != b[1]  # same second block, different first block
    assert block_hashes("other", [1, 2, 3, 4], 4) != a[:1]


def test_continuing_a_chain_equals_hashing_at_once() -> None:
    tokens = list(range(32))
    whole = block_hashes("m", tokens, 8)
    assert block_hashes("m", tokens[16:], 8, parent=whole[1]) == whole[2:]


def test_large_token_ids_and_bad_block_size() -> None:
    assert len(block_hashes("m", [2**32 - 1] * 4, 4)) == 1
    with pytest.raises(ValueError, match="block_size"):
        block_hashes("m", [1], 0)
