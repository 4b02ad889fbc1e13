"""One attempt's timing from prefill to first decode token: what the disaggregation
decider learns from (router/placement/decider.py ``Outcome``) and the handover metric.

The handover is Prefill RPC returned → first decode token seen by the router: the KV
transfer plus the decode's first step and the RPC hops. Only attempts placed as they
ran count: not a pinned choice, nor a prefill retried on another worker or given up
for a local one (what they measured is not what was priced).
"""

from __future__ import annotations

import time

from router.placement.decider import Outcome
from router.placer import Placement


class HandoverClock:
    def __init__(self, where: Placement, started: float, remote_ran: bool) -> None:
        """``started``: perf_counter before the Prefill RPC; ``remote_ran``: the placed
        prefill worker returned the KV (no retry). Built once the prefill is done."""
        self._where = where
        self._started = started
        self._done = time.perf_counter()
        self._remote_ran = remote_ran
        self._seen = False

    def first_token(self) -> tuple[Outcome, float | None] | None:
        """At each decode token: the first time, what the attempt measured and (remote)
        the handover seconds; afterwards, or for attempts that do not count, None."""
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
            return outcome, handover
        if where.prefill is None and where.prefill_work:
            return Outcome(where.decode, None, now - self._done, where.prefill_work), None
        return None
