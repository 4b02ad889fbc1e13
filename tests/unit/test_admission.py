"""Admission control: the bounded gate, per-client rate limits, and what HTTP clients see."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Iterator
from typing import Any

import pytest

from pdserve.state.memory import MemoryStore
from router.admission import Admission, AdmissionLimits, Gate, RateLimiter, client_id
from router.errors import BadRequestError, Overloaded, RateLimited
from router.request import Chunk
from router.tokenizer import Tokenizer
from tests.helpers.router import ScriptedDecode, ScriptedPrefill, ScriptedRouter, scripted_router
from tests.helpers.router import tiny_tokenizer as make_tokenizer


async def test_gate_admits_up_to_the_limit_queues_the_next_and_refuses_past_the_queue() -> None:
    gate = Gate(max_inflight=1, max_queued=1, queue_timeout_s=5)
    release = asyncio.Event()
    order: list[str] = []

    async def hold(name: str) -> None:
        async with gate.slot():
            order.append(name)
            await release.wait()

    first = asyncio.create_task(hold("first"))
    await asyncio.sleep(0)
    second = asyncio.create_task(hold("second"))
    await asyncio.sleep(0)
    assert (gate.inflight, gate.queued) == (1, 1)
    with pytest.raises(Overloaded) as refused:
        async with gate.slot():
            pass
    assert refused.value.retry_after_s >= 1
    release.set()
    await asyncio.gather(first, second)
    assert order == ["first", "second"]
    assert (gate.inflight, gate.queued) == (0, 0)


async def test_gate_gives_up_after_the_queue_timeout_and_frees_the_queue_place() -> None:
    gate = Gate(max_inflight=1, max_queued=4, queue_timeout_s=0.05)
    async with gate.slot():
        with pytest.raises(Overloaded):
            async with gate.slot():
                pass
        assert gate.queued == 0
    async with gate.slot():  # the slot came back
        assert gate.inflight == 1


class FixedClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_requests_per_minute_per_client_with_retry_after_to_the_window_end() -> None:
    clock = FixedClock(600.0 + 45)  # 15 s before the minute ends
    limiter = RateLimiter(MemoryStore(clock), requests_per_minute=2, tokens_per_minute=0, clock=clock)
    await limiter.charge("a", 10)
    await limiter.charge("a", 10)
    with pytest.raises(RateLimited) as over:
        await limiter.charge("a", 10)
    assert over.value.retry_after_s == 15
    await limiter.charge("b", 10)  # another client has its own budget
    clock.now += 15  # the next window
    await limiter.charge("a", 10)


async def test_tokens_per_minute_charges_up_front_and_refunds_what_was_not_generated() -> None:
    clock = FixedClock(0.0)
    limiter = RateLimiter(MemoryStore(clock), requests_per_minute=0, tokens_per_minute=100, clock=clock)
    charge = await limiter.charge("a", 60)
    with pytest.raises(RateLimited):
        await limiter.charge("a", 60)  # 120 > 100, and the refusal is not counted
    await limiter.refund(charge, 30)  # generated 30 fewer than reserved: 30 in use
    await limiter.charge("a", 70)  # exactly at the limit
    with pytest.raises(BadRequestError, match=r"1000 tokens.*100 per minute"):
        await RateLimiter(MemoryStore(), 0, 100).charge("a", 1000)  # can never fit: a 400, not an endless 429


def test_clients_are_counted_by_a_digest_never_the_key() -> None:
    assert client_id("sk-secret") != "sk-secret"
    assert "secret" not in client_id("sk-secret")
    assert client_id("sk-secret") == client_id("sk-secret") != client_id("sk-other")
    assert client_id(None) == client_id("") == "anonymous"


def _chunks(n: int) -> AsyncGenerator[Chunk, None]:
    async def gen() -> AsyncGenerator[Chunk, None]:
        for i in range(1, n + 1):
            yield Chunk("x", i, "length" if i == n else None)

    return gen()


async def test_admitted_stream_refunds_unused_tokens_and_frees_its_slot() -> None:
    store = MemoryStore()
    admission = Admission(AdmissionLimits(max_inflight=1, tokens_per_minute=100), store)
    out = [c async for c in admission.admitted("a", 10, 50, _chunks(20))]
    assert len(out) == 20
    assert admission.gate.inflight == 0
    # 10 prompt + 20 generated remain charged: 70 more fit, 71 do not
    await admission.limiter.charge("a", 70)
    with pytest.raises(RateLimited):
        await admission.limiter.charge("a", 1)


async def test_closing_an_admitted_stream_early_closes_the_inner_one_and_frees_the_slot() -> None:
    closed = asyncio.Event()

    async def endless() -> AsyncGenerator[Chunk, None]:
        try:
            i = 0
            while True:
                i += 1
                yield Chunk("x", i)
        finally:
            closed.set()

    admission = Admission(AdmissionLimits(max_inflight=1), MemoryStore())
    stream = admission.admitted("a", 1, 1000, endless())
    await anext(stream)
    assert admission.gate.inflight == 1
    await stream.aclose()
    assert closed.is_set() and admission.gate.inflight == 0


# --- over HTTP -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    return make_tokenizer(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def body() -> dict:
    return {"model": "tiny", "prompt": "Hi", "max_tokens": 4}


def router(tok: Tokenizer, **options: Any) -> tuple[ScriptedRouter, ScriptedDecode]:
    """One prefill and one decode worker that answers "ab"."""
    decode = ScriptedDecode(tok.encode("ab"))
    return scripted_router(tok, [ScriptedPrefill()], [decode], **options), decode


def test_rate_limited_request_gets_429_with_retry_after_per_api_key(tiny_tokenizer: Tokenizer, body: dict) -> None:
    r, decode = router(tiny_tokenizer, limits=AdmissionLimits(requests_per_minute=1), api_keys=("k1", "k2"))
    client = r.client
    one, two = {"Authorization": "Bearer k1"}, {"Authorization": "Bearer k2"}
    assert client.post("/v1/completions", json=body, headers=one).status_code == 200
    over = client.post("/v1/completions", json=body, headers=one)
    assert over.status_code == 429
    assert 1 <= int(over.headers["Retry-After"]) <= 60
    assert over.json()["error"]["code"] == "rate_limit_exceeded"
    assert "k1" not in over.text
    assert client.post("/v1/completions", json=body, headers=two).status_code == 200  # its own budget
    assert len(decode.calls) == 2  # the refused one never reached a worker


def test_over_capacity_gets_503_overloaded(tiny_tokenizer: Tokenizer, body: dict) -> None:
    r, _ = router(tiny_tokenizer, limits=AdmissionLimits(max_inflight=1, max_queued=0))
    client, gate = r.client, r.service.admission.gate
    with _held(gate):
        for stream in (False, True):
            resp = client.post("/v1/completions", json={**body, "stream": stream})
            assert resp.status_code == 503, resp.text
            assert resp.headers["Retry-After"] == "1"
            assert resp.json()["error"]["code"] == "overloaded"
    assert client.post("/v1/completions", json=body).status_code == 200


def test_a_bad_field_is_a_400_even_while_every_slot_is_taken(tiny_tokenizer: Tokenizer, body: dict) -> None:
    """Checks that need no tokenizer come before the wait for a slot: the client learns what
    to fix, instead of a 503 that tells it to retry the same request."""
    r, decode = router(tiny_tokenizer, limits=AdmissionLimits(max_inflight=1, max_queued=0))
    client, gate = r.client, r.service.admission.gate
    bad = {
        "/v1/completions": [{**body, "use_beam_search": True}, {**body, "n": 0}, {**body, "stream_options": {}}],
        "/v1/chat/completions": [{"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "n": 999}],
    }
    with _held(gate):
        for path, bodies in bad.items():
            for sent in bodies:
                resp = client.post(path, json=sent)
                assert resp.status_code == 400, (sent, resp.text)
                assert resp.json()["error"]["param"] in ("use_beam_search", "n", "stream_options"), resp.text
        assert client.post("/v1/completions", json=body).status_code == 503  # a good one waits, as before
    assert not decode.calls


class _held:
    """Occupy the gate's one slot from this thread (the TestClient runs the app on its own
    event loop and reads each response whole, so a held stream cannot do it)."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    def __enter__(self) -> None:
        self.gate.inflight += 1

    def __exit__(self, *exc: object) -> None:
        self.gate.inflight -= 1


def test_oversized_bodies_get_413_before_parsing(tiny_tokenizer: Tokenizer) -> None:
    r, decode = router(tiny_tokenizer, max_body_bytes=1000)
    client = r.client
    big = json.dumps({"model": "tiny", "prompt": "x" * 2000, "max_tokens": 1}).encode()
    resp = client.post("/v1/completions", content=big, headers={"Content-Type": "application/json"})
    assert resp.status_code == 413
    assert resp.json()["error"]["type"] == "invalid_request_error"

    def chunked() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        for i in range(0, len(big), 100):
            yield big[i : i + 100]

    resp = client.post("/v1/completions", content=chunked(), headers={"Content-Type": "application/json"})
    assert resp.status_code == 413
    assert "larger than 1000 bytes" in resp.json()["error"]["message"]
    assert not decode.calls
    small = {"model": "tiny", "prompt": "x", "max_tokens": 1}
    assert client.post("/v1/completions", json=small).status_code == 200


# --- fairness across API keys -------------------------------------------------------------


async def _flood(gate: Gate, order: list[str], release: asyncio.Event, names: list[str]) -> list[asyncio.Task[None]]:
    async def hold(name: str) -> None:
        async with gate.slot(name.rstrip("0123456789")):
            order.append(name)
            await release.wait()

    tasks = []
    for name in names:
        tasks.append(asyncio.create_task(hold(name)))
        await asyncio.sleep(0)
    return tasks


async def test_one_key_flooding_the_queue_does_not_starve_another_keys_request() -> None:
    """Key a holds the one slot and queues 50 more; key b's request, queued after all of
    them, gets the slot after next (a was waiting first): slots go round-robin across
    keys, not first come first served, which would make b wait for all 50."""
    gate = Gate(max_inflight=1, max_queued=100, queue_timeout_s=5)
    order: list[str] = []
    releases = [asyncio.Event() for _ in range(52)]
    tasks = []
    for i, name in enumerate([f"a{i}" for i in range(51)] + ["b0"]):
        tasks += await _flood(gate, order, releases[i], [name])
    assert order == ["a0"] and gate.queued == 51
    for i in range(2):
        releases[i].set()  # a0, then a1 leave: b0's turn comes before a's third
        await asyncio.sleep(0.01)
    assert order == ["a0", "a1", "b0"]
    for event in releases:
        event.set()
    await asyncio.gather(*tasks)
    assert (gate.inflight, gate.queued, gate.tracked()) == (0, 0, 0)


async def test_a_key_at_its_own_limit_waits_while_other_keys_run() -> None:
    gate = Gate(max_inflight=4, max_queued=10, queue_timeout_s=5, per_client=1)
    order: list[str] = []
    release = asyncio.Event()
    tasks = await _flood(gate, order, release, ["a0", "a1", "b0", "c0"])
    assert order == ["a0", "b0", "c0"] and gate.queued == 1  # a1 waits for a0, though slots are free
    release.set()
    await asyncio.gather(*tasks)
    assert order[-1] == "a1"


async def test_a_full_queue_drops_the_flooding_keys_newest_request_for_another_key() -> None:
    gate = Gate(max_inflight=1, max_queued=3, queue_timeout_s=5)
    order: list[str] = []
    release = asyncio.Event()
    tasks = await _flood(gate, order, release, ["a0", "a1", "a2", "a3", "b0"])
    assert gate.queued == 3
    release.set()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(outcomes[3], Overloaded)  # a3, the flood's newest, made room for b0
    assert "b0" in order and "a3" not in order
    with pytest.raises(Overloaded):  # a key with the longest queue itself is refused outright
        await _refused_when_full(gate)


async def _refused_when_full(gate: Gate) -> None:
    order: list[str] = []
    release = asyncio.Event()
    tasks = await _flood(gate, order, release, ["a0", "a1", "a2", "a3"])
    try:
        async with gate.slot("a"):
            pass
    finally:
        release.set()
        await asyncio.gather(*tasks)


def test_a_request_over_the_whole_tpm_limit_is_a_400_at_once(tiny_tokenizer: Tokenizer, body: dict) -> None:
    r, decode = router(tiny_tokenizer, limits=AdmissionLimits(tokens_per_minute=10))
    resp = r.client.post("/v1/completions", json={**body, "max_tokens": 100})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "max_tokens"
    assert not decode.calls
