"""What placement sees of a worker, and the picker seam.

Contract: ``Picker.pick`` is called on the router's event loop, once per
request and role, with a non-empty candidate list; it returns one candidate's
id and never blocks. ``Scorer.score`` returns a score in [0, 1] for EVERY
candidate (1 is best); scores are combined as a weighted sum.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from pdserve.types import WorkerId


@dataclass(frozen=True)
class WorkerView:
    worker_id: WorkerId
    inflight: int = 0  # this router's requests on the worker now
    running: int = 0  # engine's running requests at the last Load poll (all routers)
    waiting: int = 0  # engine's queue at the last Load poll
    kv_usage: float = 0.0  # [0, 1]
    prefill_tokens: int = 0  # uncached prompt tokens this router has in flight on it
    matched_blocks: int = 0  # leading blocks of this prompt the worker holds (block index)
    polled_inflight: int = 0  # ``inflight`` when running/waiting were polled

    @property
    def load(self) -> int:
        """Requests on the worker: our fresh count plus what other routers had there at the
        last poll. (The poll is up to a poll interval old: taking the engine's total as is
        would keep counting our own requests that have finished since.)"""
        return self.inflight + max(0, self.running + self.waiting - self.polled_inflight)


@dataclass
class Stream:
    """A decode stream this router runs on a worker, updated as its tokens arrive (router/
    orchestrator.py): what a local prefill's stall would cost its time per output token."""

    max_tokens: int
    started: float = 0.0  # time.monotonic() at its first token; 0 = none yet
    tokens: int = 0  # received so far

    def slack_s(self, now: float, tpot_target_s: float) -> float:
        """Seconds of stall it can take and still finish within ``tpot_target_s`` per
        output token at its own pace so far (infinite before its first token: a stall
        then delays its first token, not its TPOT; negative: it misses already)."""
        if not self.started:
            return float("inf")
        n = max(self.max_tokens, self.tokens)
        elapsed = now - self.started
        pace = elapsed / (self.tokens - 1) if self.tokens > 1 else 0.5 * tpot_target_s
        return tpot_target_s * (n - 1) - elapsed - (n - self.tokens) * pace


@dataclass(frozen=True)
class Request:
    prompt_tokens: int
    prompt_blocks: int  # full blocks in the prompt


class Picker(Protocol):
    def pick(self, candidates: Sequence[WorkerView], request: Request) -> WorkerId: ...


class Scorer(Protocol):
    name: str

    def score(self, candidates: Sequence[WorkerView], request: Request) -> Mapping[WorkerId, float]: ...
