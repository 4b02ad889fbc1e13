"""pdserve's own chained block hash: the one place that defines block identity.

The router hashes a prompt's token ids; workers (or the router, for the
embedded store) re-hash the token ids carried by vLLM's BlockStored events.
Both sides must produce bit-identical values, so this module is pinned by
golden vectors (tests/unit/test_kv_hashing.py). Like llm-d and Dynamo we do
not reproduce vLLM's internal hash: the engine's hashing algorithm and
PYTHONHASHSEED may change without the router knowing.

Definition (scheme ``SCHEME``):
  root(model)      = blake2b-64(b"pdserve-kv-v1\\0" + utf8(model))
  h(parent, block) = blake2b-64(le64(parent) + le32 * token_ids)
over FULL blocks only, chained from ``root(model)``. The model is part of the
chain, so blocks of different models never match.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

from pdserve.types import BlockHash

SCHEME = "pdserve-blake2b64-v1"  # reported by workers, checked by the router


def _digest(data: bytes) -> BlockHash:
    return BlockHash(int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little"))


def root_hash(model: str) -> BlockHash:
    return _digest(b"pdserve-kv-v1\0" + model.encode())


def block_hash(parent: BlockHash, token_ids: Sequence[int]) -> BlockHash:
    """Hash of one full block given its parent's hash (``root_hash`` for the first)."""
    return _digest(struct.pack(f"<Q{len(token_ids)}I", parent, *token_ids))


def block_hashes(
    model: str, token_ids: Sequence[int], block_size: int, parent: BlockHash | None = None
) -> list[BlockHash]:
    """Chained hashes of every full block of ``token_ids``; a partial tail is ignored.

    ``parent`` continues an existing chain (the hash of the block before
    ``token_ids[0]``); by default the chain starts at the model's root.
    """
    if block_size < 1:
        raise ValueError("block_size must be >= 1")
    prev = root_hash(model) if parent is None else parent
    out: list[BlockHash] = []
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        prev = block_hash(prev, token_ids[start : start + block_size])
        out.append(prev)
    return out
