"""Conditional disaggregation: is a remote prefill worth it for this request?

Contract: called once per request on the event loop, after the decode worker is
chosen, with that worker's uncached prompt tokens and the prefill candidates'
views; returns a ``Decision`` whose ``reason`` labels the metric.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from router.placement.base import WorkerView


@dataclass(frozen=True)
class Decision:
    remote: bool
    reason: str  # remote | short_prompt | prefill_saturated | no_prefill_workers


class ThresholdDecider:
    """Prefill locally on the decode worker when the part of the prompt it has not
    cached is shorter than ``min_remote_tokens`` (a transfer costs more than it
    saves), or when every prefill worker has ``saturated_waiting`` or more
    requests queued (Dynamo's and llm-d's rule)."""

    def __init__(self, min_remote_tokens: int = 0, saturated_waiting: int = 8) -> None:
        if min_remote_tokens < 0 or saturated_waiting < 1:
            raise ValueError("disagg: min_remote_tokens must be >= 0 and saturated_waiting >= 1")
        self.min_remote_tokens = min_remote_tokens
        self.saturated_waiting = saturated_waiting

    def decide(self, uncached_tokens: int, prefill: Sequence[WorkerView]) -> Decision:
        if not prefill:
            return Decision(False, "no_prefill_workers")
        if uncached_tokens < self.min_remote_tokens:
            return Decision(False, "short_prompt")
        if all(max(c.waiting, c.inflight - c.running) >= self.saturated_waiting for c in prefill):
            return Decision(False, "prefill_saturated")
        return Decision(True, "remote")
