"""Outlier ejection (router/outliers.py), the retry budget and per-attempt timeouts
(router/recovery.py, router/orchestrator.py): the policy on a virtual clock, then
through the HTTP surface with scripted workers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import grpc
import pytest

from pdserve.engine.base import EngineInfo, EngineLoad, FinishReason, TokenDelta
from pdserve.state.memory import MemoryStore
from pdserve.types import WorkerId
from router.errors import WorkerError
from router.fleet import Fleet, FleetOptions, TokenizerSource
from router.outliers import Ejections, Failure, OutlierPolicy
from router.recovery import Recovery, RetryBudget
from router.request import Timeouts
from router.tokenizer import Tokenizer
from tests.factories import make_tiny_tokenizer
from tests.helpers.router import ScriptedDecode, ScriptedPrefill, scripted_router, tiny_tokenizer

W = [WorkerId(f"d{i}:1") for i in range(4)]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    return tiny_tokenizer(tmp_path_factory.mktemp("tiny"))


def ejections(**policy: float) -> tuple[Ejections, Clock]:
    clock = Clock()
    return Ejections(OutlierPolicy(**policy), clock), clock  # type: ignore[arg-type]


def test_one_error_ejects_no_one_but_errors_in_a_row_do_and_a_success_resets_the_count() -> None:
    ej, _ = ejections(max_errors=3)
    assert not ej.failed(W[0], Failure.ERROR, W) and not ej.failed(W[0], Failure.ERROR, W)
    ej.succeeded(W[0])
    assert not ej.failed(W[0], Failure.ERROR, W) and not ej.failed(W[0], Failure.ERROR, W)
    assert ej.failed(W[0], Failure.ERROR, W)
    assert ej.ejected == {W[0]}


def test_timeouts_eject_sooner_and_a_worker_that_is_gone_at_once() -> None:
    ej, _ = ejections(max_timeouts=2)
    assert not ej.failed(W[0], Failure.TIMEOUT, W)
    assert ej.failed(W[0], Failure.TIMEOUT, W)
    assert ej.failed(W[1], Failure.GONE, W)


def test_at_most_the_set_share_of_a_role_is_ejected_at_once() -> None:
    ej, _ = ejections(max_share=0.5)
    assert ej.failed(W[0], Failure.GONE, W) and ej.failed(W[1], Failure.GONE, W)
    assert not ej.failed(W[2], Failure.GONE, W)  # 2 of 4 already out
    assert ej.ejected == {W[0], W[1]}
    lone, _ = ejections(max_share=0.1)
    assert lone.failed(W[0], Failure.GONE, W[:1])  # at least one, whatever the share


def test_an_ejected_worker_returns_only_through_a_probe_and_each_ejection_lasts_longer() -> None:
    ej, clock = ejections(base_s=5, max_s=12)
    ej.failed(W[0], Failure.GONE, W)
    clock.now += 4.9
    assert ej.probe_due() == []
    clock.now += 0.2
    assert ej.probe_due() == [W[0]]
    assert ej.probe_due() == []  # one probe at a time
    ej.probed(W[0], ok=False)  # ejected again: 2 x 5 s
    clock.now += 9.9
    assert ej.probe_due() == []
    clock.now += 0.2
    assert ej.probe_due() == [W[0]]
    ej.probed(W[0], ok=False)  # 3 x 5 s, capped at 12
    clock.now += 12.1
    assert ej.probe_due() == [W[0]]
    ej.probed(W[0], ok=True)
    assert ej.ejected == frozenset()


def test_the_ejection_multiplier_decays_while_the_worker_stays_healthy() -> None:
    ej, clock = ejections(base_s=5, max_s=300)
    for _ in range(3):  # ejected 3 times: the next would last 20 s
        ej.failed(W[0], Failure.GONE, W)
        clock.now += 100
        ej.probe_due()
        ej.probed(W[0], ok=True)
    clock.now += 3 * 5  # three base periods back in placement: the count is down to 0
    ej.failed(W[0], Failure.GONE, W)
    clock.now += 5.1
    assert ej.probe_due() == [W[0]]


def test_a_worker_that_left_is_forgotten_and_a_healthy_one_leaves_no_record() -> None:
    ej, _ = ejections()
    ej.failed(W[0], Failure.ERROR, W)
    ej.succeeded(W[0])
    ej.failed(W[1], Failure.GONE, W)
    ej.forget(W[1])
    assert len(ej) == 0


def test_the_retry_budget_allows_a_share_of_requests_plus_a_minimum_over_its_window() -> None:
    clock = Clock()
    budget = RetryBudget(0.2, 3, clock)
    for _ in range(10):
        budget.request()
    assert sum(budget.try_retry() for _ in range(10)) == 5  # 0.2 x 10 + 3
    clock.now += RetryBudget.window_s
    assert sum(budget.try_retry() for _ in range(10)) == 3  # the old window has gone


def test_half_the_decode_fleet_resource_exhausted_costs_at_most_a_fifth_more_attempts(tok: Tokenizer) -> None:
    """Two of four decode workers answer RESOURCE_EXHAUSTED to every request: ejection
    (after 5 errors in a row each) and the retry budget keep the attempts, counted at the
    workers, within 1.2 x the requests, and every request is served."""
    text = tok.encode("one two three four")
    decode = [ScriptedDecode(text, f"d{i}:1", fail_after=0 if i < 2 else None) for i in range(4)]
    for d in decode[:2]:
        d.code = grpc.StatusCode.RESOURCE_EXHAUSTED
    r = scripted_router(tok, [ScriptedPrefill("p0:1")], decode)
    requests = 100
    codes = [
        r.client.post("/v1/completions", json={"model": "tiny", "prompt": "Hi", "max_tokens": 4}).status_code
        for _ in range(requests)
    ]
    attempts = sum(len(d.calls) for d in decode)
    assert attempts <= 1.2 * requests, attempts
    assert codes.count(200) >= 0.95 * requests, codes
    assert r.pool.down == {decode[0].worker, decode[1].worker}
    assert r.counter("pdserve_router_ejected_workers") == 2


def test_past_the_retry_budget_the_failure_goes_to_the_client(tok: Tokenizer) -> None:
    decode = [ScriptedDecode([300, 301], f"d{i}:1", fail_after=0, code=grpc.StatusCode.ABORTED) for i in range(4)]
    r = scripted_router(tok, [], decode, recovery=Recovery(backoff_s=0.0, decode_retries=3, min_retries=2))
    codes = [
        r.client.post("/v1/completions", json={"model": "tiny", "prompt": "Hi", "max_tokens": 2}).status_code
        for _ in range(3)
    ]
    assert codes == [500, 500, 500]  # ABORTED: the worker failed it, as without retries
    assert sum(len(d.calls) for d in decode) == 3 + 2  # one attempt each, and the 2 retries allowed
    assert r.counter("pdserve_router_retries_total", kind="over_budget") == 3  # one per request


def test_a_wedged_decode_worker_costs_one_first_token_timeout_not_the_deadline(tok: Tokenizer) -> None:
    """The worker's RPC is open but no token comes: after --first-token-timeout the request
    is placed again; two such timeouts in a row eject the worker."""
    text = tok.encode("one two three four")
    wedged, good = ScriptedDecode(text, "d0:1", hang=True), ScriptedDecode(text, "d1:1")
    timeouts = Timeouts(request_s=60, first_token_s=0.3)
    r = scripted_router(tok, [], [wedged, good], timeouts=timeouts, policy="round-robin")
    for _ in range(4):
        started = time.monotonic()
        resp = r.client.post("/v1/completions", json={"model": "tiny", "prompt": "Hi", "max_tokens": 4})
        assert resp.status_code == 200, resp.text
        assert time.monotonic() - started < 3
    assert len(wedged.calls) == 2 and r.pool.down == {wedged.worker}


def test_a_stream_stalled_mid_way_migrates_after_the_stall_timeout(tok: Tokenizer) -> None:
    text = tok.encode("one two three four five six seven eight")
    stalls = ScriptedDecode(text, "d0:1", resume=True, stall_after=2)  # the 3rd step never comes
    good = ScriptedDecode(text, "d1:1", resume=True)
    r = scripted_router(tok, [], [stalls, good], timeouts=Timeouts(stall_s=0.3))
    started = time.monotonic()
    resp = r.client.post("/v1/completions", json={"model": "tiny", "prompt": "Hi", "max_tokens": len(text)})
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["text"] == tok.decode(text)
    assert time.monotonic() - started < 3
    assert r.counter("pdserve_router_migrations_total") == 1


class FakeDecodeClient:
    """A decode worker's client as the fleet polls and probes it: ``load_ok`` (its Load
    poll answers, else DEADLINE_EXCEEDED) and ``engine_ok`` (a request through its engine
    produces a token, else the stream aborts)."""

    def __init__(self, name: str) -> None:
        self.worker = WorkerId(name)
        self.load_ok = self.engine_ok = True
        self.probes = 0

    async def load(self, timeout: float) -> EngineLoad:
        if not self.load_ok:
            raise WorkerError(self.worker, grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        return EngineLoad()

    async def decode(self, *args: Any, **kwargs: Any) -> AsyncGenerator[TokenDelta, None]:
        self.probes += 1
        yield TokenDelta((300,), 1, FinishReason.LENGTH if self.engine_ok else FinishReason.ABORT)

    async def close(self) -> None:
        pass


async def test_load_polls_that_time_out_eject_and_only_a_probe_through_the_engine_brings_it_back(
    tmp_path: Path,
) -> None:
    policy = OutlierPolicy(base_s=0.5, max_s=5.0)  # wide margins: a busy CI machine's loop runs late
    tokenizers = TokenizerSource({}, str(make_tiny_tokenizer(tmp_path)))
    fleet = Fleet(MemoryStore(), tokenizers, FleetOptions(follow_events=False, outliers=policy))
    info = EngineInfo("decode", "m", 16, "", 1 << 20, 4096, "sim")
    stuck, healthy = FakeDecodeClient("d0:1"), FakeDecodeClient("d1:1")
    for client in (stuck, healthy):
        fleet._add(client, info)  # type: ignore[arg-type]
    pool = fleet.pools["m"]
    stuck.load_ok = stuck.engine_ok = False
    await fleet.poll()
    assert pool.down == frozenset()  # one slow poll is not enough
    await fleet.poll()
    assert pool.down == {stuck.worker}
    stuck.load_ok = True  # the server answers Load again; its engine is still wedged
    await fleet.poll()
    assert pool.down == {stuck.worker}
    await asyncio.sleep(0.6)
    await fleet.poll()  # the ejection is over: a probe, which fails
    await asyncio.sleep(0.05)
    assert stuck.probes == 1 and pool.down == {stuck.worker}
    stuck.engine_ok = True
    await asyncio.sleep(0.6)
    await fleet.poll()  # the second ejection lasts twice as long: no probe yet
    assert stuck.probes == 1
    await asyncio.sleep(0.5)
    await fleet.poll()
    await asyncio.sleep(0.05)
    assert stuck.probes == 2 and pool.down == frozenset()
    assert healthy.probes == 0
    await fleet.close()
