from __future__ import annotations

import random
from collections import Counter

import pytest

from pdserve.types import WorkerId
from router.placement import LeastLoaded, RoundRobin, make_picker

W = [WorkerId("a:1"), WorkerId("b:1"), WorkerId("c:1")]


def test_round_robin_cycles_through_candidates() -> None:
    rr = RoundRobin()
    assert [rr.pick(W, {}) for _ in range(6)] == W + W


def test_least_loaded_picks_the_idle_worker() -> None:
    assert LeastLoaded().pick(W, {W[0]: 3, W[1]: 0, W[2]: 1}) == W[1]


def test_least_loaded_breaks_ties_at_random() -> None:
    picker = LeastLoaded(random.Random(7))
    counts = Counter(picker.pick(W, {}) for _ in range(300))
    assert set(counts) == set(W) and min(counts.values()) > 60


def test_unknown_policy_names_the_choices() -> None:
    with pytest.raises(ValueError, match="least-loaded"):
        make_picker("nope")
