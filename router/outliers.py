"""Outlier ejection: which workers of a pool are out of placement, and until when.

As Envoy's outlier detection and the SGLang gateway's circuit breaker:
- a worker is ejected after ``max_errors`` failed requests in a row (a retryable
  status, a broken stream), after ``max_timeouts`` timeouts in a row (a request
  attempt past its per-attempt timeout, a Load poll past its deadline), or at once
  when it is gone (UNAVAILABLE: connection refused, draining, engine dead);
- an ejection lasts ``base_s`` x the worker's ejection count, at most ``max_s``; the
  count drops by one for every ``base_s`` the worker then stays in placement;
- at most ``max_share`` of a role's workers (at least one) are out at once: past that,
  failures still count but eject no one;
- once its time is up an ejected worker is probed — a one-token request through its
  engine (router/probe.py, run by router/fleet.py) — and returns only if that
  succeeds; a failed probe ejects it again, for longer.
A success (a finished request, a good probe) clears the worker's counts. A good Load
poll does not: a wedged engine behind a live server answers it.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

from pdserve.types import WorkerId

log = logging.getLogger(__name__)


class Failure(enum.Enum):
    ERROR = "error"  # the worker failed a request
    TIMEOUT = "timeout"  # an attempt or a Load poll ran past its deadline
    GONE = "gone"  # UNAVAILABLE: nothing serves there now


@dataclass(frozen=True)
class OutlierPolicy:
    max_errors: int = 5  # failed requests in a row that eject a worker
    max_timeouts: int = 2  # timeouts in a row that eject a worker
    base_s: float = 5.0  # first ejection; the n-th lasts n x this
    max_s: float = 300.0  # longest ejection
    max_share: float = 0.5  # of a role's workers out at once (at least one)
    probe_timeout_s: float = 10.0  # the one-token request that lets an ejected worker back

    def __post_init__(self) -> None:
        if self.max_errors < 1 or self.max_timeouts < 1:
            raise ValueError("max_errors and max_timeouts must be ≥ 1")
        if not 0 < self.base_s <= self.max_s:
            raise ValueError("ejection base_s must be > 0 and ≤ max_s")
        if not 0 <= self.max_share <= 1:
            raise ValueError("max_share must be in [0, 1]")
        if self.probe_timeout_s <= 0:
            raise ValueError("probe_timeout_s must be > 0")


@dataclass
class _Record:
    errors: int = 0
    timeouts: int = 0
    ejections: int = 0  # the multiplier of the next ejection's length, less decay
    until: float | None = None  # ejected until then (monotonic); None: in placement
    back_at: float = 0.0  # when it last returned
    probing: bool = False


class Ejections:
    """One pool's ejection state. Event loop only. Records exist for workers with
    something to remember and are dropped when the worker leaves (``forget``)."""

    def __init__(self, policy: OutlierPolicy, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self._clock = clock
        self._records: dict[WorkerId, _Record] = {}

    def __len__(self) -> int:
        return len(self._records)

    @property
    def ejected(self) -> frozenset[WorkerId]:
        return frozenset(w for w, r in self._records.items() if r.until is not None)

    def failed(self, worker: WorkerId, failure: Failure, role: Collection[WorkerId]) -> bool:
        """Count a failure of ``worker`` (one of ``role``'s workers); True if it ejected it."""
        record = self._records.setdefault(worker, _Record())
        if record.until is not None:
            return False
        if failure is Failure.TIMEOUT:
            record.timeouts += 1
        elif failure is Failure.ERROR:
            record.errors += 1
        due = (
            failure is Failure.GONE
            or record.errors >= self.policy.max_errors
            or record.timeouts >= self.policy.max_timeouts
        )
        if not due or not self._room(role):
            return False
        self._eject(worker, record, failure.value)
        return True

    def succeeded(self, worker: WorkerId) -> None:
        record = self._records.get(worker)
        if record is not None and record.until is None:
            record.errors = record.timeouts = 0
            if not record.ejections:
                del self._records[worker]  # nothing left to remember

    def probe_due(self) -> list[WorkerId]:
        """Ejected workers whose time is up and that no probe is testing yet; each is
        marked as being probed (``probed`` ends it)."""
        now = self._clock()
        due = [w for w, r in self._records.items() if r.until is not None and r.until <= now and not r.probing]
        for worker in due:
            self._records[worker].probing = True
        return due

    def probed(self, worker: WorkerId, ok: bool) -> None:
        record = self._records.get(worker)
        if record is None or record.until is None:
            return
        record.probing = False
        if ok:
            record.until, record.errors, record.timeouts = None, 0, 0
            record.back_at = self._clock()
            log.info("worker %s passed its probe and is back in placement", worker)
        else:
            self._eject(worker, record, "failed probe")

    def forget(self, worker: WorkerId) -> None:
        self._records.pop(worker, None)

    def _room(self, role: Collection[WorkerId]) -> bool:
        out = sum(1 for w in role if (r := self._records.get(w)) is not None and r.until is not None)
        return out < max(1, int(self.policy.max_share * len(role)))

    def _eject(self, worker: WorkerId, record: _Record, why: str) -> None:
        now = self._clock()
        if record.until is None:  # back in placement since back_at: the multiplier decays
            record.ejections = max(0, record.ejections - int((now - record.back_at) / self.policy.base_s))
        record.ejections += 1
        seconds = min(self.policy.max_s, self.policy.base_s * record.ejections)
        record.until = now + seconds
        log.warning("worker %s ejected for %.0f s (%s; ejection %d)", worker, seconds, why, record.ejections)
