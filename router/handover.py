"""One attempt's timing from prefill to first decode token: what the disaggregation
decider learns from (router/placement/decider.py ``Outcome``) and the handover metric.

The handover is Prefill RPC returned → first decode token seen by the router: the KV
transfer plus the decode's first step and the RPC hops. Only attempts placed as they
ran count: not a pinned choice, nor a prefill retried on another worker or given up
for a local one (what they measured is not what was priced).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from router.placement.decider import Outcome
from router.placer import Placement


@dataclass(frozen=True)
class Handover:
    """A remote prefill's handover at the router and the decode worker's part of it
    (request received → first token: its queue, the KV pull, the first step); the rest
    is the two RPC hops. 0 when the worker did not say (an older worker)."""

    seconds: float
    worker_s: float


class HandoverClock:
    def __init__(self, where: Placement, started: float, remote_ran: bool) -> None:
        """``started``: perf_counter before the Prefill RPC; ``remote_ran``: the placed
        prefill worker returned the KV (no retry). Built once the prefill is done."""
        self._where = where
        self._started = started
        self._done = time.perf_counter()
        self._remote_ran = remote_ran
        self._seen = False

    def first_token(self, worker_s: float = 0.0) -> tuple[Outcome, Handover | None] | None:
        """At each decode token: the first time, what the attempt measured and (remote)
        the handover (``worker_s``: the decode worker's part, from its first chunk);
        afterwards, or for attempts that do not count, None."""
        if self._seen:
            return None
        self._seen = True
        now, where = time.perf_counter(), self._where
        if where.prefill is not None and self._remote_ran:
            handover = now - self._done
            outcome = Outcome(
                where.decode,
                where.prefill,
                self._done - self._started,
                where.prefill_work,
                handover,
                where.transfer_tokens,
            )
            return outcome, Handover(handover, worker_s)
        if where.prefill is None and where.prefill_work:
            return Outcome(where.decode, None, now - self._done, where.prefill_work), None
        return None
