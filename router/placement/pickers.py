"""Pickers: round-robin, least-loaded, and the weighted-scorer picker."""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pdserve.types import WorkerId
from router.placement.base import Request, WorkerView
from router.placement.scorers import SCORERS


class RoundRobin:
    def __init__(self) -> None:
        self._counter = itertools.count()

    def pick(self, candidates: Sequence[WorkerView], request: Request) -> WorkerId:
        return candidates[next(self._counter) % len(candidates)].worker_id


class LeastLoaded:
    """Fewest requests; ties broken at random so router replicas do not all pick
    the same idle worker."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def pick(self, candidates: Sequence[WorkerView], request: Request) -> WorkerId:
        low = min(c.load for c in candidates)
        return self._rng.choice([c.worker_id for c in candidates if c.load == low])


@dataclass(frozen=True)
class Guard:
    """Imbalance guard: a worker whose load exceeds ``ratio`` * mean + ``slack`` is
    not a candidate while another one is below it. Bounds the busiest worker near
    the mean however strongly the prefix score pulls (one shared system prompt).
    ``slack`` keeps it out of the way at low load, where two requests on the worker
    that holds the prefix are batching, not a hot spot."""

    ratio: float = 1.25
    slack: int = 2

    def allowed(self, candidates: Sequence[WorkerView]) -> list[WorkerView]:
        mean = sum(c.load for c in candidates) / len(candidates)
        limit = self.ratio * mean + self.slack
        return [c for c in candidates if c.load <= limit] or list(candidates)


class Weighted:
    """Weighted sum of scorers; the winner is drawn at random among the candidates
    within ``tie`` of the best total that hold the most of the prompt."""

    def __init__(
        self,
        weights: Mapping[str, float],
        guard: Guard | None = None,
        tie: float = 0.02,
        rng: random.Random | None = None,
    ) -> None:
        self.weights = {name: w for name, w in weights.items() if w > 0}
        self._scorers = [SCORERS[name]() for name in self.weights]
        self._guard = guard or Guard()
        self._tie = tie
        self._rng = rng or random.Random()

    @property
    def uses_prefix(self) -> bool:
        return "prefix" in self.weights

    def totals(self, candidates: Sequence[WorkerView], request: Request) -> dict[WorkerId, float]:
        """Combined score per candidate, in [0, 1]."""
        norm = sum(self.weights.values()) or 1.0
        totals = {c.worker_id: 0.0 for c in candidates}
        for scorer in self._scorers:
            weight = self.weights[scorer.name] / norm
            for worker, value in scorer.score(candidates, request).items():
                totals[worker] += weight * value
        return totals

    def pick(self, candidates: Sequence[WorkerView], request: Request) -> WorkerId:
        allowed = self._guard.allowed(candidates)
        totals = self.totals(allowed, request)
        best = max(totals.values())
        tied = [c for c in allowed if totals[c.worker_id] >= best - self._tie]
        # Near-ties go to the workers holding most of the prompt (the cache is used, not
        # recomputed elsewhere), at random among those: equal workers share the traffic.
        most = max(c.matched_blocks for c in tied)
        return self._rng.choice([c.worker_id for c in tied if c.matched_blocks == most])
