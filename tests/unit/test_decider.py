"""The disaggregation deciders: the registry, the fixed baselines and the priced one."""

from __future__ import annotations

import pytest

from pdserve.types import WorkerId
from router.placement.base import Stream, WorkerView
from router.placement.decider import Outcome, Query, ThresholdDecider
from router.placement.deciders import DECIDERS, make_decider
from router.placement.priced import MIN_SAMPLES, PROBE_BACKOFF, Fit, PricedDecider

P1, P2, D = WorkerId("p1:1"), WorkerId("p2:1"), WorkerId("d:1")
FAST_S, SLOW_S = 2e-6, 3.3e-4  # handover seconds per token: NVLink vs DESIGN §8's TCP emulation
PREFILL_S = 3e-5  # prefill seconds per token


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def query(tokens: int = 4000, prefill: tuple[WorkerView, ...] | None = None, decode: WorkerView | None = None) -> Query:
    views = prefill if prefill is not None else (WorkerView(P1),)
    return Query(tokens, tokens, decode or WorkerView(D), views, 16)


def learn(d: PricedDecider, pair_s: dict[WorkerId, float], n: int = MIN_SAMPLES, tokens: int = 4000) -> None:
    for i in range(n):
        x = tokens + 100 * i
        for p, per_token in pair_s.items():
            d.observe(Outcome(D, p, 0.005 + PREFILL_S * x, x, 0.01 + per_token * x, x))


def priced(clock: Clock | None = None, stall_weight: float = 0.02) -> PricedDecider:
    return PricedDecider(ThresholdDecider(min_remote_tokens=100), stall_weight, probe_s=5.0, clock=clock or Clock())


def test_registry_names_every_decider_and_refuses_unknown_ones() -> None:
    assert set(DECIDERS) == {"threshold", "priced", "always-remote", "always-local"}
    with pytest.raises(ValueError, match="always-local"):
        make_decider("nope")


def test_fixed_deciders() -> None:
    assert make_decider("always-remote").decide(query()).remote
    assert make_decider("always-local").decide(query()).reason == "always_local"
    assert make_decider("always-remote").decide(query(prefill=())).reason == "no_prefill_workers"


def test_fit_learns_slope_and_intercept_and_forgets_old_samples() -> None:
    fit = Fit(0.2)
    for x in (1000, 2000, 3000, 4000) * 5:
        fit.add(x, 0.01 + 1e-4 * x)
    assert fit.predict(5000) == pytest.approx(0.51, rel=0.02)
    for _ in range(40):  # the path got 10x faster
        fit.add(3000, 0.01 + 1e-5 * 3000)
    assert fit.predict(3000) == pytest.approx(0.04, rel=0.05)


def test_priced_cold_start_is_the_threshold_decider() -> None:
    d = priced()
    assert d.decide(query(50)).reason == "short_prompt"
    assert d.decide(query(4000)).reason == "remote"


def test_priced_goes_remote_on_a_fast_path_and_local_on_a_slow_one() -> None:
    fast, slow = priced(), priced()
    learn(fast, {P1: FAST_S})
    learn(slow, {P1: SLOW_S})
    busy = WorkerView(D, running=20)  # a local prefill would stall 20 streams
    assert fast.decide(query(decode=busy)).reason == "faster_remote"
    assert slow.decide(query(decode=busy)).reason == "faster_local"
    # with no stream to stall, the transfer is pure cost
    assert fast.decide(query()).reason == "faster_local"


def test_priced_prefers_the_fast_pair_and_prices_queues() -> None:
    d = priced()
    learn(d, {P1: SLOW_S, P2: FAST_S})
    busy = WorkerView(D, running=20)
    decision = d.decide(query(prefill=(WorkerView(P1), WorkerView(P2)), decode=busy))
    assert (decision.remote, decision.prefill) == (True, P2)
    # the fast pair's prefill worker has 200k tokens queued: the decode worker is faster
    queued = d.decide(query(prefill=(WorkerView(P2, prefill_tokens=200_000),), decode=busy))
    assert queued.reason == "faster_local"


def test_priced_charges_a_local_prefill_for_the_streams_it_stalls() -> None:
    d = priced(stall_weight=0.5)
    learn(d, {P1: 1.5e-4})  # remote 0.7 s vs local 0.13 s for 4k tokens: local, while idle
    assert d.decide(query()).reason == "faster_local"
    assert d.decide(query(decode=WorkerView(D, running=40, polled_inflight=0))).reason == "faster_remote"


def test_priced_probes_a_priced_out_pair_and_returns_when_it_recovers() -> None:
    clock = Clock()
    d = priced(clock)
    learn(d, {P1: SLOW_S})
    busy = query(1000, decode=WorkerView(D, running=20))  # remote 0.36 s worse: cheap enough to probe
    assert d.decide(query(4000, decode=WorkerView(D, running=20))).reason == "faster_local"
    assert d.decide(busy).reason == "faster_local"
    clock.now = 6.0
    assert d.decide(query(4000, decode=WorkerView(D, running=20))).reason == "faster_local"  # too dear
    probe = d.decide(busy)
    assert (probe.reason, probe.prefill) == ("probe", P1)
    assert d.decide(busy).reason == "faster_local"  # one probe per interval
    learn(d, {P1: SLOW_S}, n=1)  # the probe finds it still slow: the next one waits twice as long
    clock.now += 6.0
    assert d.decide(busy).reason == "faster_local"
    clock.now += 6.0
    assert d.decide(busy).reason == "probe"
    probes = 0
    while d.decide(busy).reason != "faster_remote":  # the path recovered: the probes see it
        learn(d, {P1: FAST_S}, n=1)
        clock.now += 5.0 * PROBE_BACKOFF + 1
        probes += 1
    assert probes <= 8


def test_priced_sends_remote_what_misses_the_ttft_target_both_ways() -> None:
    d = PricedDecider(ThresholdDecider(), stall_weight=1.0, ttft_target_s=1.0)
    learn(d, {P1: SLOW_S})
    quiet, swamped = WorkerView(D, running=2), WorkerView(D, running=8)
    assert d.decide(query(4000, decode=quiet)).reason == "faster_local"  # local meets the target
    # 8 streams to stall: local costs 1.25 s, under remote's 1.4 s, but both miss the 1 s target
    assert d.decide(query(4000, decode=swamped)).reason == "over_target"
    without = PricedDecider(ThresholdDecider(), stall_weight=1.0)
    learn(without, {P1: SLOW_S})
    assert without.decide(query(4000, decode=swamped)).reason == "faster_local"


def test_stream_slack_is_the_stall_it_can_take_within_the_tpot_target() -> None:
    assert Stream(64).slack_s(5.0, 0.01) == float("inf")  # no first token yet
    # 64 tokens at 10 ms: 0.63 s budget; 11 tokens in 50 ms (5 ms pace): 53 left take 0.265 s
    assert Stream(64, started=1.0, tokens=11).slack_s(1.05, 0.01) == pytest.approx(0.63 - 0.05 - 0.265)
    # one token so far: half the target is taken as its pace
    assert Stream(101, started=1.0, tokens=1).slack_s(1.0, 0.01) == pytest.approx(1.0 - 100 * 0.005)
    assert Stream(20, started=1.0, tokens=10).slack_s(1.5, 0.01) < 0  # 55 ms a token: missed already


def test_with_both_targets_the_choice_counts_requests_that_meet_the_slo() -> None:
    clock = Clock()
    d = PricedDecider(ThresholdDecider(), stall_weight=1.0, clock=clock, ttft_target_s=1.0, tpot_target_s=0.01)
    learn(d, {P1: SLOW_S})  # 4000 tokens: 1.45 s remote, a 0.13 s local prefill; 500: 0.19 s and 16 ms
    clock.now = 1.0
    roomy = [Stream(64, started=0.9, tokens=21) for _ in range(8)]  # 5 ms pace: 0.31 s of slack each
    nearly = [Stream(64, started=0.82, tokens=21) for _ in range(8)]  # 9 ms pace: 0.06 s each
    brink = [Stream(64, started=0.803, tokens=21) for _ in range(8)]  # 10 ms pace: 0.01 s each
    lost = [Stream(64, started=0.6, tokens=31) for _ in range(8)]  # 13 ms pace: past the target
    view = WorkerView(D, running=8)

    def decide(streams: list[Stream], tokens: int = 4000) -> str:
        q = query(tokens, decode=view)
        return d.decide(Query(q.prompt_tokens, q.uncached_tokens, q.decode, q.prefill, 16, streams)).reason

    # remote misses the TTFT target; local meets it and leaves every stream its TPOT
    assert decide(roomy) == "slo_local"
    # local would push 8 streams past the TPOT target: this request misses instead
    assert decide(nearly) == "slo_remote"
    # streams that miss already are lost either way: nothing to spare, local meets the TTFT
    assert decide(lost) == "slo_local"
    # a short prompt meets the TTFT remote too; its 16 ms stall fits the 0.06 s of slack:
    # a tie, which the predicted seconds break; on the brink even 16 ms breaks them
    assert decide(nearly, 500) in ("faster_local", "faster_remote")
    assert decide(brink, 500) == "slo_remote"
    # 0.25 s of local prefills queued ahead: the roomy streams' 0.31 s is gone after this one's
    queued = WorkerView(D, running=8, prefill_tokens=8000)
    q = query(4000, decode=queued)
    assert d.decide(Query(4000, 4000, queued, q.prefill, 16, roomy)).reason == "slo_remote"
    # past the queued ones, the nearly-spent streams are lost anyway: local meets its TTFT
    assert d.decide(Query(4000, 4000, queued, q.prefill, 16, nearly)).reason == "slo_local"


def test_a_tpot_target_needs_a_ttft_target() -> None:
    with pytest.raises(ValueError, match="TTFT"):
        PricedDecider(ThresholdDecider(), tpot_target_s=0.01)
