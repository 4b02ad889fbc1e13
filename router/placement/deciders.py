"""The disaggregation deciders by name (``--disagg-decider``), and what flags give them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from router.placement.decider import DisaggDecider, FixedDecider, ThresholdDecider
from router.placement.priced import PricedDecider


@dataclass(frozen=True)
class DeciderOptions:
    """What the router's flags give every decider (router/config.py)."""

    min_remote_tokens: int = 0
    saturated_waiting: int = 8
    stall_weight: float = 1.0
    probe_s: float = 5.0
    ttft_target_s: float = 0.0
    tpot_target_s: float = 0.0


def _priced(o: DeciderOptions) -> DisaggDecider:
    return PricedDecider(
        ThresholdDecider(o.min_remote_tokens, o.saturated_waiting),
        o.stall_weight,
        o.probe_s,
        ttft_target_s=o.ttft_target_s,
        tpot_target_s=o.tpot_target_s,
    )


DECIDERS: dict[str, Callable[[DeciderOptions], DisaggDecider]] = {
    "threshold": lambda o: ThresholdDecider(o.min_remote_tokens, o.saturated_waiting),
    "priced": _priced,
    "always-remote": lambda o: FixedDecider(True),
    "always-local": lambda o: FixedDecider(False),
}


def make_decider(name: str, options: DeciderOptions | None = None) -> DisaggDecider:
    try:
        factory = DECIDERS[name]
    except KeyError:
        raise ValueError(f"disagg_decider: unknown decider {name!r}; choose one of {sorted(DECIDERS)}") from None
    return factory(options or DeciderOptions())
