"""A disaggregation decision that prices the KV transfer (``--disagg-decider priced``).

Per request it predicts the time to first token two ways and takes the smaller:

- remote, for every live prefill candidate: prefill time for the uncached tokens
  queued on it plus this prompt's uncached part there, then the handover (prefill
  returned → first decode token: the KV transfer plus the decode's first step) for the
  prompt tokens the decode worker lacks, on that (prefill, decode) pair;
- local, on the decode worker: prefill time for its queued prefill tokens plus the
  prompt's uncached part, plus ``stall_weight`` x its own prefill time x the streams on
  that worker, this request's own counted (each waits for that prefill: chunked prefill
  shares the steps; and this request's decode waits behind the next local prefill as the
  others wait behind this one).

The times come from ``Fit``s learned online from what the requests measured (router/
orchestrator.py reports an ``Outcome`` per request): one per role for prefill seconds
per queued token, one per worker pair (and one fleet-wide) for handover seconds per
transferred token. Until both a prefill fit and a handover fit have ``MIN_SAMPLES``
samples the threshold decider decides (the cold start). A pair priced out (local wins)
sends no more samples: a pair unmeasured for ``probe_s`` gets one remote request
(reason ``probe``), so a path that recovers is seen again: one whose predicted TTFT
remote is at most ``PROBE_BUDGET_S`` worse than local (a short prompt), or any once the
pair has gone unmeasured twice the longest interval. While its probes find the pair
still priced out, the interval doubles, up to ``PROBE_BACKOFF`` x ``probe_s``.

With a TTFT target (``ttft_target_s``, the SLO operators hold the service to), a request
whose remote TTFT and local cost (TTFT plus stall charge) both exceed it goes remote
(reason ``over_target``): it misses the target either way, and remote does not stall the
decode worker's streams (under overload on a slow path, local prefills ruin everyone's TPOT).

With a TPOT target as well (``tpot_target_s``: the whole SLO), the choice counts requests
that meet it instead of adding seconds: remote is worth 1 if its predicted TTFT meets the
target; local is worth 1 if its predicted TTFT does, less one for every stream on the
decode worker whose slack (``Stream.slack_s``: the stall it can take and still meet the
TPOT target at its own pace) the local prefill would use up (streams past it, or past it
once the local prefills queued ahead have run, are lost either way). The larger wins
(reasons ``slo_remote``, ``slo_local``); a tie falls back to the predicted seconds above.
This is what keeps a slow path from wrecking TPOT at high load: each local prefill stalls
every stream, and when the streams have no slack left the prompts that cannot meet their
TTFT remotely go remote anyway.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from pdserve.types import WorkerId
from router.placement.base import WorkerView
from router.placement.decider import Decision, DisaggDecider, Outcome, Query

log = logging.getLogger(__name__)

MIN_SAMPLES = 4
PROBE_BACKOFF = 8  # a pair that stays slow is probed at most every probe_s x this
PROBE_BUDGET_S = 0.5  # a probe takes a request whose predicted TTFT it worsens by at most this


class Fit:
    """y ≈ a + b·x with exponentially decaying weights (``alpha`` per sample): weighted
    least squares on decayed moments; through the origin (y/x ratio) while the x seen
    are too alike to tell a slope from an intercept, or always with ``origin``.
    Predictions are >= 0."""

    def __init__(self, alpha: float, origin: bool = False) -> None:
        self.alpha = alpha
        self.origin = origin
        self.samples = 0
        self._m = (0.0, 0.0, 0.0, 0.0)  # E[x], E[y], E[x²], E[xy]

    def add(self, x: float, y: float) -> None:
        a = 1.0 if not self.samples else self.alpha
        mx, my, mxx, mxy = self._m
        self._m = (mx + a * (x - mx), my + a * (y - my), mxx + a * (x * x - mxx), mxy + a * (x * y - mxy))
        self.samples += 1

    def predict(self, x: float) -> float:
        mx, my, mxx, mxy = self._m
        var = mxx - mx * mx
        if not self.origin and var > 0.01 * mx * mx and self.samples > 2:
            slope = max(0.0, (mxy - mx * my) / var)
            return max(0.0, my - slope * mx) + slope * x
        return my / mx * x if mx > 0 else my


@dataclass(frozen=True)
class Estimate:
    remote_s: float  # TTFT, remote on ``prefill``
    local_s: float  # TTFT local plus the stall charge
    prefill: WorkerId
    local_ttft_s: float = 0.0  # TTFT local alone
    stall_s: float = 0.0  # how long the local prefill stalls the decode worker's steps


class PricedDecider:
    def __init__(
        self,
        cold: DisaggDecider,
        stall_weight: float = 1.0,
        probe_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        ttft_target_s: float = 0.0,
        tpot_target_s: float = 0.0,
    ) -> None:
        if stall_weight < 0 or probe_s <= 0 or ttft_target_s < 0 or tpot_target_s < 0:
            raise ValueError("disagg: stall_weight and the targets must be >= 0 and probe_s > 0")
        if tpot_target_s and not ttft_target_s:
            raise ValueError("disagg: a TPOT target needs a TTFT target (the SLO is both)")
        self._target = ttft_target_s
        self._tpot = tpot_target_s
        self._cold = cold
        self._stall_weight = stall_weight
        self._probe_s = probe_s
        self._clock = clock
        # Prefill seconds per queued uncached token, remote and on decode workers (which also
        # run their streams' steps). Through the origin: a noisy fit with a flat slope would
        # stop seeing queues and send every prompt to one prefill worker.
        self._prefill = Fit(0.05, origin=True)
        self._local = Fit(0.05, origin=True)
        self._handover = Fit(0.1)  # fleet-wide handover seconds per transferred token
        self._pairs: dict[tuple[WorkerId, WorkerId], Fit] = {}
        self._seen: dict[tuple[WorkerId, WorkerId], float] = {}  # pair → last sample's time
        self._probes: dict[tuple[WorkerId, WorkerId], int] = {}  # pair → probes since it last won

    def decide(self, query: Query) -> Decision:
        if not query.prefill:
            return Decision(False, "no_prefill_workers")
        if self._prefill.samples < MIN_SAMPLES or self._handover.samples < MIN_SAMPLES:
            return self._cold.decide(query)
        estimates = [self.estimate(query, c) for c in query.prefill]
        best = min(estimates, key=lambda e: e.remote_s)
        log.debug("priced %d uncached tokens: %s", query.uncached_tokens, best)
        if self._tpot:
            remote_worth, local_worth = self.worth(query, best)
            if remote_worth > local_worth:
                self._probes.pop((best.prefill, query.decode.worker_id), None)
                return Decision(True, "slo_remote", best.prefill)
            if local_worth > remote_worth:
                return self._local_or_probe(query, estimates, "slo_local")
        if best.remote_s <= best.local_s:
            self._probes.pop((best.prefill, query.decode.worker_id), None)
            return Decision(True, "faster_remote", best.prefill)
        if self._target and best.remote_s > self._target and best.local_s > self._target:
            # Misses the target either way: where it spares the decode worker's streams.
            return Decision(True, "over_target", best.prefill)
        return self._local_or_probe(query, estimates, "faster_local")

    def worth(self, query: Query, best: Estimate) -> tuple[int, int]:
        """Requests meeting the SLO, remote and local: this one's TTFT either way, less
        (local) the decode worker's streams whose slack the local prefill's stall uses up:
        slack past the stall of the local prefills queued ahead (those streams are lost
        already) but short of that plus this one's."""
        now, ahead = self._clock(), max(0.0, best.local_ttft_s - best.stall_s)
        broken = sum(1 for s in query.streams if ahead <= s.slack_s(now, self._tpot) < ahead + best.stall_s)
        return int(best.remote_s <= self._target), int(best.local_ttft_s <= self._target) - broken

    def _local_or_probe(self, query: Query, estimates: list[Estimate], reason: str) -> Decision:
        stale = self._stale(query.decode.worker_id, estimates)
        if stale is not None:
            pair = (stale, query.decode.worker_id)
            self._seen[pair] = self._clock()  # one probe per interval
            self._probes[pair] = self._probes.get(pair, 0) + 1
            return Decision(True, "probe", stale)
        return Decision(False, reason)

    def estimate(self, query: Query, candidate: WorkerView) -> Estimate:
        """Predicted seconds to the first token, remote on ``candidate`` and local."""
        uncached = max(0, query.prompt_tokens - candidate.matched_blocks * query.block_size)
        prefill_s = self._prefill.predict(candidate.prefill_tokens + uncached)
        pair = self._pairs.get((candidate.worker_id, query.decode.worker_id), self._handover)
        remote_s = prefill_s + pair.predict(query.uncached_tokens)
        local = self._local if self._local.samples >= MIN_SAMPLES else self._prefill
        own_s = local.predict(query.uncached_tokens)
        queued_s = local.predict(query.decode.prefill_tokens + query.uncached_tokens)
        local_s = queued_s + self._stall_weight * own_s * (query.decode.load + 1)
        return Estimate(remote_s, local_s, candidate.worker_id, queued_s, own_s)

    def _stale(self, decode: WorkerId, estimates: list[Estimate]) -> WorkerId | None:
        """A prefill worker whose pair with ``decode`` is due a probe on this request."""
        now = self._clock()
        for e in estimates:
            pair = (e.prefill, decode)
            seen = self._seen.get(pair)
            if seen is None:
                continue
            interval = self._probe_s * min(PROBE_BACKOFF, 2 ** self._probes.get(pair, 0))
            cheap = e.remote_s - e.local_s <= PROBE_BUDGET_S
            if now - seen > interval and (cheap or now - seen > 2 * PROBE_BACKOFF * self._probe_s):
                return e.prefill
        return None

    def observe(self, outcome: Outcome) -> None:
        if outcome.prefill_work <= 0:
            return
        if outcome.prefill is None:
            self._local.add(outcome.prefill_work, outcome.prefill_s)
            return
        self._prefill.add(outcome.prefill_work, outcome.prefill_s)
        if outcome.transfer_tokens > 0:
            key = (outcome.prefill, outcome.decode)
            self._handover.add(outcome.transfer_tokens, outcome.handover_s)
            self._pairs.setdefault(key, Fit(0.5)).add(outcome.transfer_tokens, outcome.handover_s)
            self._seen[key] = self._clock()
