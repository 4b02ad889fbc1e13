"""Scorers in [0, 1] (1 is best), named in ``SCORERS``. Each is relative to the
other candidates where an absolute scale does not exist (queue, tokens)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pdserve.types import WorkerId
from router.placement.base import Request, Scorer, WorkerView


class PrefixScorer:
    """Share of the prompt's full blocks the worker already holds, from the front."""

    name = "prefix"

    def score(self, candidates: Sequence[WorkerView], request: Request) -> Mapping[WorkerId, float]:
        if request.prompt_blocks == 0:
            return {c.worker_id: 0.0 for c in candidates}
        return {c.worker_id: min(1.0, c.matched_blocks / request.prompt_blocks) for c in candidates}


def _inverse(values: Mapping[WorkerId, float], scale: float = 0.0) -> dict[WorkerId, float]:
    """1 - value / max(busiest candidate, ``scale``): 1 for idle, 0 for the busiest."""
    top = max(max(values.values(), default=0.0), scale)
    return {w: 1.0 if top <= 0 else 1.0 - v / top for w, v in values.items()}


class QueueScorer:
    """Fewer requests running + waiting is better (relative to the busiest candidate)."""

    name = "queue"

    def score(self, candidates: Sequence[WorkerView], request: Request) -> Mapping[WorkerId, float]:
        return _inverse({c.worker_id: float(c.load) for c in candidates})


class KvUsageScorer:
    """More free KV cache is better."""

    name = "kv"

    def score(self, candidates: Sequence[WorkerView], request: Request) -> Mapping[WorkerId, float]:
        return {c.worker_id: 1.0 - min(1.0, max(0.0, c.kv_usage)) for c in candidates}


class PrefillTokensScorer:
    """Fewer uncached prompt tokens in flight (prefill work queued) is better, measured
    against this request's own size: a worker whose queued prefill is small next to
    this prompt is barely busier than an idle one. (Relative to the busiest candidate
    alone, one short request in flight would score 0 and cancel a whole prefix match.)"""

    name = "prefill_tokens"

    def score(self, candidates: Sequence[WorkerView], request: Request) -> Mapping[WorkerId, float]:
        return _inverse({c.worker_id: float(c.prefill_tokens) for c in candidates}, float(request.prompt_tokens))


SCORERS: dict[str, type[Scorer]] = {s.name: s for s in (PrefixScorer, QueueScorer, KvUsageScorer, PrefillTokensScorer)}


def parse_weights(text: str) -> dict[str, float]:
    """``"prefix=2,queue=1"`` → weights; unknown names and negative weights are errors."""
    out: dict[str, float] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, sep, raw = item.partition("=")
        if not sep or name not in SCORERS:
            raise ValueError(f"weights: {item!r} is not NAME=WEIGHT with NAME in {sorted(SCORERS)}")
        try:
            out[name] = float(raw)
        except ValueError:
            raise ValueError(f"weights: {raw!r} is not a number") from None
        if out[name] < 0:
            raise ValueError(f"weights: {name} must be >= 0")
    if out and not any(out.values()):
        raise ValueError("weights: at least one weight must be > 0")
    return out
