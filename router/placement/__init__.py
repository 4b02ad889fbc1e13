"""Placement policies, named in one registry and chosen by config.

Contract: ``pick`` is called on the router's event loop, once per request and
role, with a non-empty candidate list and the router's count of requests in
flight per worker; it returns one of the candidates and never blocks.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from pdserve.types import WorkerId


class Picker(Protocol):
    def pick(self, candidates: Sequence[WorkerId], inflight: Mapping[WorkerId, int]) -> WorkerId: ...


class RoundRobin:
    def __init__(self) -> None:
        self._counter = itertools.count()

    def pick(self, candidates: Sequence[WorkerId], inflight: Mapping[WorkerId, int]) -> WorkerId:
        return candidates[next(self._counter) % len(candidates)]


class LeastLoaded:
    """Fewest requests in flight from this router; ties broken at random so that
    replicas of the router do not all pick the same idle worker."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def pick(self, candidates: Sequence[WorkerId], inflight: Mapping[WorkerId, int]) -> WorkerId:
        low = min(inflight.get(w, 0) for w in candidates)
        return self._rng.choice([w for w in candidates if inflight.get(w, 0) == low])


POLICIES: dict[str, Callable[[], Picker]] = {
    "round-robin": RoundRobin,
    "least-loaded": LeastLoaded,
}


def make_picker(name: str) -> Picker:
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(f"policy: unknown placement policy {name!r}; choose one of {sorted(POLICIES)}") from None
