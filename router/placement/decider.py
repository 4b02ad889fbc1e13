"""Conditional disaggregation: is a remote prefill worth it for this request?

Contract (``DisaggDecider``): ``decide`` is called once per placement on the router's
event loop, after the decode worker is chosen, with a ``Query`` holding that worker's
view, the prefill candidates' views (possibly empty) and the prompt's sizes; it never
blocks and returns a ``Decision`` whose ``reason`` labels the
``pdserve_router_disagg_decisions`` metric (a small fixed set per decider). When it names
a ``prefill`` worker, that worker must be one of the candidates and the placer uses it;
otherwise the placement policy picks. ``observe`` is called on the same loop with what a
finished request measured (``Outcome``); a decider that learns nothing ignores it. No
method is called concurrently with another (one event loop).

Registry: router/placement/deciders.py names the implementations (``--disagg-decider``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from pdserve.types import WorkerId
from router.placement.base import Stream, WorkerView


@dataclass(frozen=True)
class Decision:
    remote: bool
    reason: str  # threshold: remote | short_prompt | prefill_saturated | no_prefill_workers
    prefill: WorkerId | None = None  # the prefill worker the decision priced, if any


@dataclass(frozen=True)
class Query:
    prompt_tokens: int
    uncached_tokens: int  # prompt tokens the decode worker does not hold (block index)
    decode: WorkerView
    prefill: Sequence[WorkerView]  # live prefill candidates
    block_size: int
    streams: Sequence[Stream] = ()  # this router's decode streams on ``decode`` now


@dataclass(frozen=True)
class Outcome:
    """What one request measured at the router, by placement.

    Remote: ``prefill_s`` = the Prefill RPC, ``prefill_work`` = uncached tokens queued on
    that worker ahead of it plus its own; ``handover_s`` = prefill returned → first decode
    token, ``transfer_tokens`` = prompt tokens the decode worker lacked. Local:
    ``prefill_s`` = Decode RPC start → first token, ``prefill_work`` as above on the decode
    worker; ``prefill`` is None and ``handover_s`` 0."""

    decode: WorkerId
    prefill: WorkerId | None
    prefill_s: float
    prefill_work: int
    handover_s: float = 0.0
    transfer_tokens: int = 0


class DisaggDecider(Protocol):
    def decide(self, query: Query) -> Decision: ...

    def observe(self, outcome: Outcome) -> None: ...


class ThresholdDecider:
    """Prefill locally on the decode worker when the part of the prompt it has not
    cached is shorter than ``min_remote_tokens`` (a transfer costs more than it
    saves), or when every prefill worker has ``saturated_waiting`` or more
    requests queued (Dynamo's and llm-d's rule). Learns nothing."""

    def __init__(self, min_remote_tokens: int = 0, saturated_waiting: int = 8) -> None:
        if min_remote_tokens < 0 or saturated_waiting < 1:
            raise ValueError("disagg: min_remote_tokens must be >= 0 and saturated_waiting >= 1")
        self.min_remote_tokens = min_remote_tokens
        self.saturated_waiting = saturated_waiting

    def decide(self, query: Query) -> Decision:
        if not query.prefill:
            return Decision(False, "no_prefill_workers")
        if query.uncached_tokens < self.min_remote_tokens:
            return Decision(False, "short_prompt")
        if all(max(c.waiting, c.inflight - c.running) >= self.saturated_waiting for c in query.prefill):
            return Decision(False, "prefill_saturated")
        return Decision(True, "remote")

    def observe(self, outcome: Outcome) -> None:
        pass


class FixedDecider:
    """Always remote (while a prefill worker is live) or always local: the baselines the
    benchmarks compare the other deciders with."""

    def __init__(self, remote: bool) -> None:
        self.remote = remote

    def decide(self, query: Query) -> Decision:
        if not query.prefill:
            return Decision(False, "no_prefill_workers")
        return Decision(True, "remote") if self.remote else Decision(False, "always_local")

    def observe(self, outcome: Outcome) -> None:
        pass
