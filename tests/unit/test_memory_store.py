"""MemoryStore's own housekeeping (the behaviour every store shares is in tests/contract)."""

from __future__ import annotations

from pdserve.kv.hashing import block_hashes
from pdserve.state.memory import MemoryStore
from pdserve.types import WorkerId


async def test_predictions_of_prefixes_never_asked_for_again_do_not_pile_up() -> None:
    now = [0.0]
    store = MemoryStore(clock=lambda: now[0])
    for i in range(2000):  # 200 s at 10 requests/s, every prompt new, predictions live 10 s
        now[0] = i / 10
        await store.predict("m", WorkerId("w"), block_hashes("m", [i] * 32, 16), ttl_s=10)
    live_blocks = 2 * 100  # two blocks per request, the last 10 s of requests
    assert len(store._predicted) <= 2 * live_blocks
    assert await store.match("m", block_hashes("m", [1999] * 32, 16)) == {WorkerId("w"): 2}


async def test_a_worker_known_only_from_predictions_matches_beside_indexed_ones() -> None:
    """Predicted-only workers have no bit in the index; a match still names them."""
    store = MemoryStore()
    h = block_hashes("m", list(range(48)), 16)
    await store.add_blocks("m", WorkerId("a"), h)
    await store.add_blocks("m", WorkerId("b"), h[:1])
    await store.predict("m", WorkerId("p"), h[:2], ttl_s=30)
    await store.predict("m", WorkerId("b"), h[1:2], ttl_s=30)  # stored block 0 + predicted block 1
    assert await store.match("m", h) == {WorkerId("a"): 3, WorkerId("b"): 2, WorkerId("p"): 2}
