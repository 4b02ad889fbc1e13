"""Placement policies, named in one registry and chosen by config.

A policy is one picker per role. ``prefix-aware`` (default) scores prefill
workers by prefix overlap, queue, KV usage and prefill tokens in flight, and
decode workers by queue and KV headroom; ``round-robin`` and ``least-loaded``
ignore the block index (baselines for the benchmarks).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from router.placement.base import Picker, Request, WorkerView
from router.placement.pickers import Guard, LeastLoaded, RoundRobin, Weighted

__all__ = ["POLICIES", "Picker", "Policy", "Request", "WorkerView", "make_policy"]

PREFILL_WEIGHTS = {"prefix": 2.0, "queue": 1.0, "kv": 0.25, "prefill_tokens": 1.0}
DECODE_WEIGHTS = {"prefix": 0.5, "queue": 1.0, "kv": 1.0}


@dataclass(frozen=True)
class Policy:
    name: str
    prefill: Picker
    decode: Picker
    uses_index: bool  # look the prompt up in the block index (and write predictions)


def _prefix_aware(weights: Mapping[str, float], guard: Guard, rng: random.Random | None) -> Policy:
    prefill = Weighted(weights or PREFILL_WEIGHTS, guard, rng=rng)
    decode = Weighted(DECODE_WEIGHTS, guard, rng=rng)
    return Policy("prefix-aware", prefill, decode, uses_index=prefill.uses_prefix or decode.uses_prefix)


POLICIES: dict[str, Callable[[Mapping[str, float], Guard, random.Random | None], Policy]] = {
    "round-robin": lambda w, g, r: Policy("round-robin", RoundRobin(), RoundRobin(), uses_index=False),
    "least-loaded": lambda w, g, r: Policy("least-loaded", LeastLoaded(r), LeastLoaded(r), uses_index=False),
    "prefix-aware": _prefix_aware,
}


def make_policy(
    name: str,
    weights: Mapping[str, float] | None = None,
    guard: Guard | None = None,
    rng: random.Random | None = None,  # tests pass a seeded one
) -> Policy:
    try:
        factory = POLICIES[name]
    except KeyError:
        raise ValueError(f"policy: unknown placement policy {name!r}; choose one of {sorted(POLICIES)}") from None
    return factory(weights or {}, guard or Guard(), rng)
