"""BlockIndex: the bitset layout behind MemoryStore (the behaviour every store shares is in
tests/contract/test_state_store.py; its speed and size in ``pdserve bench index``)."""

from __future__ import annotations

import pytest

from pdserve.state.block_index import BlockIndex
from pdserve.types import BlockHash, WorkerId

A, B, C = WorkerId("a:1"), WorkerId("b:1"), WorkerId("c:1")


def hs(*values: int) -> list[BlockHash]:
    return [BlockHash(v) for v in values]


def holders(index: BlockIndex, model: str, h: int) -> set[WorkerId]:
    return set(index.bits.workers(index.holders(model, BlockHash(h))))


def test_one_entry_per_block_whoever_holds_it() -> None:
    index = BlockIndex()
    index.add("m", A, hs(1, 2, 3))
    index.add("m", B, hs(2, 3, 4))
    index.add("m", B, hs(2))  # again: a no-op
    assert len(index) == 4
    assert holders(index, "m", 2) == {A, B} and holders(index, "m", 4) == {B}
    assert index.live("m", B) == 3
    index.remove("m", A, hs(2, 99))  # 99: absent, a no-op
    assert holders(index, "m", 2) == {B} and index.live("m", A) == 2
    index.remove("m", B, hs(4))
    assert len(index) == 3  # a block nobody holds leaves the table


def test_models_are_separate_tables() -> None:
    index = BlockIndex()
    index.add("m1", A, hs(1))
    index.add("m2", A, hs(1, 2))
    index.clear("m1", A)
    assert holders(index, "m1", 1) == set() and holders(index, "m2", 1) == {A}
    assert index.models(A) == ["m2"]


def test_a_released_bit_is_reused_without_naming_its_old_worker() -> None:
    index = BlockIndex()
    index.add("m", A, hs(1))
    index.add("m", B, hs(2))
    bit_a = index.bits.get(A)
    index.clear("m", A)
    assert index.bits.get(A) is None  # holds nothing: forgotten
    index.add("m", C, hs(3))
    assert index.bits.get(C) == bit_a  # the lowest free bit: masks stay small
    assert holders(index, "m", 1) == set() and holders(index, "m", 3) == {C}


def test_churn_keeps_the_removal_log_bounded_and_clear_exact() -> None:
    index = BlockIndex()
    index.add("m", B, hs(7))
    for round_ in range(50):  # the same blocks evicted and stored again, and new ones
        index.add("m", A, hs(*range(round_, round_ + 100)))
        index.remove("m", A, hs(*range(round_, round_ + 50)))
    live = index.live("m", A)
    assert live == len([h for h in range(200) if A in holders(index, "m", h)])
    assert len(index._log[("m", A)]) <= 2 * live + 64
    index.clear("m", A)
    assert index.live("m", A) == 0 and len(index) == 1 and holders(index, "m", 7) == {B}


def test_full_64_bit_hashes_and_nothing_half_applied_past_them() -> None:
    index = BlockIndex()
    top = (1 << 64) - 1
    index.add("m", A, hs(top, 0))
    with pytest.raises(OverflowError):
        index.add("m", A, hs(5, 1 << 64))  # not a pdserve block hash
    assert index.live("m", A) == 3 and len(index) == 3  # 5 went in; the bad one never did
    index.clear("m", A)
    assert len(index) == 0
