"""The sim engine's KV block pool: finite, prefix-reusing, LRU-evicting, vLLM-shaped events.

Mirrors vLLM's ``BlockPool`` where the router can observe it:
- a full block is identified by a chained hash of its tokens and its parent's hash
  (the engine's own hash: not the router's, which re-hashes the events' token ids);
- a request's leading full blocks already in the pool are reused (a prefix hit);
  at least one prompt token is always computed, as in vLLM;
- a freed block keeps its hash and stays reusable until it is evicted; eviction takes
  the least recently freed block, and a request's blocks are freed tail first so its
  prefix outlives its suffix;
- every block that gets a hash is announced with ``BlockStored`` (token ids,
  parent, block size) and every evicted one with ``BlockRemoved``.

Not modelled: preemption (a request reserves blocks for its prompt plus
``max_tokens`` when admitted), offload tiers, LoRA. Single-threaded: owned by one
event loop, no awaits inside.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from pdserve.kv.events import BlockRemoved, BlockStored, KvEvent

_ROOT = int.from_bytes(hashlib.blake2b(b"pdserve-sim-engine", digest_size=8).digest(), "little")


def salted_root(salt: str) -> int:
    """The parent of a request's first block: a salt (vLLM's ``cache_salt``) starts a
    chain no request with another salt, or none, shares."""
    if not salt:
        return _ROOT
    return int.from_bytes(hashlib.blake2b(b"pdserve-sim-engine\0" + salt.encode(), digest_size=8).digest(), "little")


def engine_hash(parent: int, tokens: Sequence[int]) -> int:
    """The sim engine's block hash (64-bit, like the low bits vLLM publishes)."""
    data = parent.to_bytes(8, "little") + b"".join(t.to_bytes(4, "little") for t in tokens)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


@dataclass
class Allocation:
    """The blocks one request holds, in sequence order."""

    blocks: list[int] = field(default_factory=list)
    hashed: int = 0  # leading blocks that carry a hash (reused or stored)
    parent: int = _ROOT  # hash of the last hashed block
    cached_tokens: int = 0  # prompt tokens served from reused blocks
    salted: bool = False  # its blocks are announced as keyed (vLLM: extra_keys)


class BlockPool:
    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be >= 1")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._ref = [0] * num_blocks
        self._hash: list[int | None] = [None] * num_blocks
        self._by_hash: dict[int, int] = {}  # hash → block (in use or cached)
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))  # never hashed, or hash dropped
        self._cached: OrderedDict[int, None] = OrderedDict()  # free blocks with a hash, LRU first
        self.events: list[KvEvent] = []  # drained by the engine once per step

    @property
    def used(self) -> int:
        return self.num_blocks - len(self._free) - len(self._cached)

    def usage(self) -> float:
        return self.used / self.num_blocks

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def prefix_hits(self, tokens: Sequence[int], salt: str = "") -> list[int]:
        """Blocks holding the leading full blocks of ``tokens`` (at least one token left
        over), computed by requests with the same ``salt``."""
        hits: list[int] = []
        parent = salted_root(salt)
        for start in range(0, len(tokens) - 1 - self.block_size + 1, self.block_size):
            parent = engine_hash(parent, tokens[start : start + self.block_size])
            block = self._by_hash.get(parent)
            if block is None:
                break
            hits.append(block)
        return hits

    def allocate(self, prompt: Sequence[int], total_tokens: int, salt: str = "") -> Allocation | None:
        """Reserve blocks for ``total_tokens`` (prompt + max output), reusing the prompt's
        cached prefix (of requests with the same ``salt``); None when the pool cannot
        hold it right now (nothing changes)."""
        hits = self.prefix_hits(prompt, salt)
        fresh = self.blocks_for(total_tokens) - len(hits)
        evictable = len(self._free) + len(self._cached) - sum(1 for b in hits if b in self._cached)
        if fresh > evictable:
            return None
        for block in hits:
            self._ref[block] += 1
            self._cached.pop(block, None)
        alloc = Allocation(blocks=list(hits), hashed=len(hits), cached_tokens=len(hits) * self.block_size)
        alloc.parent, alloc.salted = salted_root(salt), bool(salt)
        if hits:
            alloc.parent = self._hash[hits[-1]] or alloc.parent
        alloc.blocks.extend(self._take() for _ in range(fresh))
        return alloc

    def _take(self) -> int:
        if self._free:
            block = self._free.pop()
        else:
            block, _ = self._cached.popitem(last=False)
            old = self._hash[block]
            assert old is not None
            del self._by_hash[old]
            self._hash[block] = None
            self.events.append(BlockRemoved(engine_hashes=(old,)))
        self._ref[block] = 1
        return block

    def commit(self, alloc: Allocation, tokens: Sequence[int]) -> None:
        """``tokens`` (the sequence so far) are computed: hash and announce every newly full block."""
        run: list[int] = []  # consecutive newly stored hashes, announced as one BlockStored
        run_parent = alloc.parent
        run_tokens: list[int] = []
        while (alloc.hashed + 1) * self.block_size <= len(tokens):
            start = alloc.hashed * self.block_size
            chunk = tokens[start : start + self.block_size]
            h = engine_hash(alloc.parent, chunk)
            block = alloc.blocks[alloc.hashed]
            alloc.hashed += 1
            if h in self._by_hash:  # another request computed the same block: keep ours unhashed
                self._announce(run, run_parent, run_tokens, alloc.salted)
                run, run_tokens, run_parent = [], [], h
            else:
                self._hash[block] = h
                self._by_hash[h] = block
                run.append(h)
                run_tokens.extend(chunk)
            alloc.parent = h
        self._announce(run, run_parent, run_tokens, alloc.salted)

    def _announce(self, hashes: list[int], parent: int, token_ids: list[int], salted: bool) -> None:
        if hashes:
            # a salted chain is keyed, as vLLM's extra_keys: the router's index leaves it out
            keyed = (True,) * len(hashes) if salted else ()
            root = None if parent == _ROOT else parent
            self.events.append(BlockStored(tuple(hashes), root, tuple(token_ids), self.block_size, keyed))

    def release(self, alloc: Allocation) -> None:
        """Drop a request's hold; hashed blocks stay reusable, tail evicted first."""
        for block in reversed(alloc.blocks):
            self._ref[block] -= 1
            if self._ref[block] > 0:
                continue
            if self._hash[block] is None:
                self._free.append(block)
            else:
                self._cached[block] = None
        alloc.blocks = []

    def drain_events(self) -> list[KvEvent]:
        events, self.events = self.events, []
        return events
