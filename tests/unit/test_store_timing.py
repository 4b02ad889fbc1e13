"""The router's wrapper of the shared store tells its caller how long every shared call took
(the pdserve_router_state_store_seconds histogram): succeeded and failed calls alike."""

from __future__ import annotations

from collections.abc import Sequence

from pdserve.state import StoreUnavailable
from pdserve.state.fallback import FallbackStore
from pdserve.state.memory import MemoryStore
from pdserve.types import BlockHash, WorkerId


class DownStore(MemoryStore):
    async def match(self, model: str, hashes: Sequence[BlockHash]) -> dict[WorkerId, int]:
        raise StoreUnavailable("connection refused", kind="connection")


async def test_each_shared_call_is_timed_by_operation() -> None:
    calls: list[tuple[str, float]] = []
    store = FallbackStore(MemoryStore(), on_call=lambda op, s: calls.append((op, s)))
    await store.predict("m", WorkerId("w"), [BlockHash(1)], ttl_s=5)
    assert await store.match("m", [BlockHash(1)]) == {WorkerId("w"): 1}
    assert [op for op, _ in calls] == ["predict", "match"]
    assert all(s >= 0 for _, s in calls)


async def test_a_failed_call_is_timed_and_the_local_view_answers() -> None:
    calls: list[str] = []
    store = FallbackStore(DownStore(), on_call=lambda op, s: calls.append(op))
    await store.predict("m", WorkerId("w"), [BlockHash(1)], ttl_s=5)
    assert await store.match("m", [BlockHash(1)]) == {WorkerId("w"): 1}  # this router's own prediction
    assert calls == ["predict", "match"]
