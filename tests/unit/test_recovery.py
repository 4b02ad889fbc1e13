"""Failure recovery through the HTTP surface, with scripted workers that fail on cue:
prefill retry, local-prefill fallback, re-placement, mid-stream migration, limits."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence

import grpc
import httpx
import pytest
from fastapi.testclient import TestClient

from pdserve.state.memory import MemoryStore
from pdserve.types import BlockHash, WorkerId
from router.clients import DecodeWorker
from router.pool import ModelPool
from router.recovery import Recovery
from router.request import Timeouts
from router.tokenizer import Tokenizer
from tests.helpers.router import ScriptedDecode, ScriptedPrefill, ScriptedRouter, scripted_router, tiny_tokenizer

TEXT = "one two three four five six seven eight"


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    return tiny_tokenizer(tmp_path_factory.mktemp("tiny"))


def decode_worker(
    name: str, output: list[int], fail_after: int | None = None, code: grpc.StatusCode | None = None, hang: bool = False
) -> ScriptedDecode:
    """Requests ask for exactly ``len(output)`` tokens: a migrated one continues the same text."""
    return ScriptedDecode(
        output,
        name,
        cached_tokens=7,
        resume=True,
        fail_after=fail_after,
        code=code or grpc.StatusCode.UNAVAILABLE,
        hang=hang,
    )


def prefill_worker(name: str, code: grpc.StatusCode | None = None) -> ScriptedPrefill:
    return ScriptedPrefill(name, cached_tokens=64, code=code)


def cluster(
    tok: Tokenizer,
    prefill: list[ScriptedPrefill],
    decode: list[ScriptedDecode],
    recovery: Recovery | None = None,
    timeouts: Timeouts | None = None,
) -> tuple[TestClient, ModelPool, ScriptedRouter]:
    r = scripted_router(tok, prefill, decode, recovery=recovery, timeouts=timeouts)
    return r.client, r.pool, r


def complete(client: TestClient, tok: Tokenizer, stream: bool = False) -> tuple[int, str, dict]:
    body = {"model": "tiny", "prompt": "Hi", "max_tokens": len(tok.encode(TEXT)), "stream": stream}
    if not stream:
        resp = client.post("/v1/completions", json=body)
        data = resp.json()
        return resp.status_code, data.get("choices", [{}])[0].get("text", ""), data
    body["stream_options"] = {"include_usage": True}
    text, last = "", {}
    with client.stream("POST", "/v1/completions", json=body) as resp:
        for line in resp.iter_lines():
            if line.startswith("data: {"):
                event = json.loads(line[6:])
                text += "".join(c.get("text", "") for c in event.get("choices", []))
                last = event
    return resp.status_code, text, last


def test_a_failed_prefill_is_retried_on_another_prefill_worker(tok: Tokenizer) -> None:
    bad, good = prefill_worker("p0:1", grpc.StatusCode.UNAVAILABLE), prefill_worker("p1:1")
    d = decode_worker("d0:1", tok.encode(TEXT))
    client, pool, router = cluster(tok, [bad, good], [d])
    status, text, body = complete(client, tok)
    assert (status, text) == (200, tok.decode(tok.encode(TEXT)))
    assert bad.calls == 1 and good.calls == 1 and d.calls[0]["kv"] == {"from": "p1:1"}
    assert body["usage"]["prompt_tokens_details"]["cached_tokens"] == 64
    assert WorkerId("p0:1") in pool.down  # out of placement until its next good Load poll
    assert router.counter("pdserve_router_retries_total", kind="prefill") == 1


def test_when_every_prefill_fails_the_decode_worker_prefills_itself(tok: Tokenizer) -> None:
    prefills = [prefill_worker("p0:1", grpc.StatusCode.INTERNAL), prefill_worker("p1:1", grpc.StatusCode.UNAVAILABLE)]
    d = decode_worker("d0:1", tok.encode(TEXT))
    client, _, router = cluster(tok, prefills, [d])
    status, text, _ = complete(client, tok)
    assert status == 200 and text == tok.decode(tok.encode(TEXT)) and d.calls[0]["kv"] is None
    assert router.counter("pdserve_router_retries_total", kind="local_prefill") == 1


def test_a_prefill_the_engine_refuses_is_not_retried(tok: Tokenizer) -> None:
    bad, other = prefill_worker("p0:1", grpc.StatusCode.INVALID_ARGUMENT), prefill_worker("p1:1")
    client, _, _ = cluster(tok, [bad, other], [decode_worker("d0:1", tok.encode(TEXT))])
    status, _, body = complete(client, tok)
    assert status == 400 and "error" in body and other.calls == 0


def test_a_decode_failing_before_its_first_token_is_placed_again(tok: Tokenizer) -> None:
    bad, good = decode_worker("d0:1", tok.encode(TEXT), fail_after=0), decode_worker("d1:1", tok.encode(TEXT))
    client, _, router = cluster(tok, [prefill_worker("p0:1")], [bad, good])
    status, text, _ = complete(client, tok)
    assert status == 200 and text == tok.decode(tok.encode(TEXT))
    assert len(bad.calls) == 1 and len(good.calls) == 1
    assert router.counter("pdserve_router_retries_total", kind="decode") == 1


@pytest.mark.parametrize("stream", [False, True])
def test_a_decode_failing_mid_stream_is_migrated_and_the_client_sees_one_stream(tok: Tokenizer, stream: bool) -> None:
    ids = tok.encode(TEXT)
    n = len(ids)
    bad, good = decode_worker("d0:1", ids, fail_after=2), decode_worker("d1:1", ids)  # 4 tokens, then it dies
    client, _, router = cluster(tok, [prefill_worker("p0:1")], [bad, good])
    status, text, last = complete(client, tok, stream=stream)
    assert status == 200
    assert text == tok.decode(ids)  # uninterrupted text: nothing lost, nothing repeated
    assert last["usage"]["completion_tokens"] == n and last["usage"]["prompt_tokens"] == len(tok.encode("Hi"))
    moved = good.calls[0]
    assert moved["prompt"] == tok.encode("Hi") + ids[:4]  # prompt + what was streamed
    assert moved["spec"].max_tokens == n - 4
    assert router.counter("pdserve_router_migrations_total") == 1


def test_past_the_migration_limit_the_client_gets_a_clean_error(tok: Tokenizer) -> None:
    ids = tok.encode(TEXT)
    decode = [decode_worker("d0:1", ids, fail_after=1), decode_worker("d1:1", ids, fail_after=1)]
    client, _, _ = cluster(tok, [prefill_worker("p0:1")], decode, Recovery(migrations=0, backoff_s=0.0))
    status, _, body = complete(client, tok)
    assert status == 503 and body["error"]["type"] == "service_unavailable"
    status, _, last = complete(client, tok, stream=True)
    assert status == 200 and "error" in last  # headers were sent: the error is the last event


def test_a_decode_failing_before_its_first_token_releases_the_prefills_kv(tok: Tokenizer) -> None:
    # INTERNAL: the worker still answers (its engine failed the request), so it releases.
    bad = decode_worker("d0:1", tok.encode(TEXT), fail_after=0, code=grpc.StatusCode.INTERNAL)
    good = decode_worker("d1:1", tok.encode(TEXT))
    client, _, router = cluster(tok, [prefill_worker("p0:1")], [bad, good])
    status, text, _ = complete(client, tok)
    assert status == 200 and text == tok.decode(tok.encode(TEXT))
    assert [kv for _, kv in bad.releases] == [{"from": "p0:1"}]  # the prefill's handle, unchanged
    assert good.releases == []  # its decode read the KV of its own, second prefill
    assert router.counter("pdserve_router_kv_released_total") == 1


def test_when_the_failed_decode_worker_is_gone_another_one_releases(tok: Tokenizer) -> None:
    gone = decode_worker("d0:1", tok.encode(TEXT), fail_after=0)  # UNAVAILABLE: answers no Release either
    other = decode_worker("d1:1", tok.encode(TEXT))
    client, _, router = cluster(tok, [prefill_worker("p0:1")], [gone, other])
    status, _, _ = complete(client, tok)
    assert status == 200
    assert other.releases[0][1] == {"from": "p0:1"} and len(other.releases) == 1
    assert router.counter("pdserve_router_kv_released_total") == 1


def test_a_request_past_its_deadline_before_the_first_token_releases_the_prefills_kv(tok: Tokenizer) -> None:
    d = decode_worker("d0:1", tok.encode(TEXT), hang=True)
    client, _, router = cluster(tok, [prefill_worker("p0:1")], [d], timeouts=Timeouts(request_s=0.3))
    status, _, body = complete(client, tok)
    assert status == 504 and body["error"]["code"] == "request_timeout"
    assert [kv for _, kv in d.releases] == [{"from": "p0:1"}]
    assert router.counter("pdserve_router_kv_released_total") == 1


async def leave_during_prefill(router: ScriptedRouter, prefill: ScriptedPrefill, wait_s: float) -> None:
    """A client that leaves while its prefill RPC is in flight (its request task cancelled,
    as a disconnect does), then ``wait_s`` on the router's event loop."""
    transport = httpx.ASGITransport(app=router.client.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://router") as client:
        body = {"model": "tiny", "prompt": TEXT, "max_tokens": 4}
        request = asyncio.create_task(client.post("/v1/completions", json=body))
        while not prefill.calls:
            await asyncio.sleep(0.01)
        request.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await request
        await asyncio.sleep(wait_s)


async def test_a_prefill_answering_after_its_client_left_has_its_kv_released(tok: Tokenizer) -> None:
    # The engine finished as the client left: the answer comes, and no decode will read it.
    prefill = ScriptedPrefill("p0:1", delay_s=0.3)
    d = decode_worker("d0:1", tok.encode(TEXT))
    router = scripted_router(tok, [prefill], [d], timeouts=Timeouts(settle_s=2.0))
    await leave_during_prefill(router, prefill, wait_s=1.0)
    assert prefill.cancelled == 0 and not d.calls  # the RPC was let finish; no decode started
    assert [kv for _, kv in d.releases] == [{"from": "p0:1"}]
    assert router.counter("pdserve_router_kv_released_total") == 1


async def test_a_prefill_still_running_when_its_client_left_is_cancelled_after_the_settle_time(tok: Tokenizer) -> None:
    prefill = ScriptedPrefill("p0:1", delay_s=30)
    d = decode_worker("d0:1", tok.encode(TEXT))
    router = scripted_router(tok, [prefill], [d], timeouts=Timeouts(settle_s=0.2))
    await leave_during_prefill(router, prefill, wait_s=0.6)
    assert prefill.cancelled == 1  # the engine aborts a prefill it still runs: nothing to release
    assert d.releases == [] and router.counter("pdserve_router_kv_released_total") == 0


@pytest.mark.parametrize("stream", [False, True])
def test_a_request_whose_decode_reads_the_kv_releases_nothing(tok: Tokenizer, stream: bool) -> None:
    ids = tok.encode(TEXT)
    bad, good = decode_worker("d0:1", ids, fail_after=2), decode_worker("d1:1", ids)  # migrated after 4 tokens
    client, _, router = cluster(tok, [prefill_worker("p0:1")], [bad, good])
    assert complete(client, tok, stream=stream)[0] == 200
    plain = decode_worker("d2:1", ids)
    client, _, plain_router = cluster(tok, [prefill_worker("p0:1")], [plain])
    assert complete(client, tok, stream=stream)[0] == 200
    assert bad.releases == good.releases == plain.releases == []
    assert router.counter("pdserve_router_kv_released_total") == 0
    assert plain_router.counter("pdserve_router_kv_released_total") == 0


def test_a_worker_removed_between_placement_and_its_rpc_is_worked_around(
    tok: Tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = decode_worker("d0:1", tok.encode(TEXT)), decode_worker("d1:1", tok.encode(TEXT))
    client, pool, _ = cluster(tok, [], [first, second])
    lookup = pool.decode_client

    def removed_after_placement(worker: WorkerId) -> DecodeWorker:
        pool.remove(first.worker)  # the fleet drops d0 (deregistered) as the RPC is made
        return lookup(worker)

    monkeypatch.setattr(pool, "decode_client", removed_after_placement)
    status, text, _ = complete(client, tok)
    assert (status, text) == (200, tok.decode(tok.encode(TEXT)))  # was a 500 (KeyError)
    assert not first.calls and len(second.calls) == 1


class CountingStore(MemoryStore):
    """Counts block index lookups."""

    def __init__(self) -> None:
        super().__init__()
        self.lookups = 0

    async def match(self, model: str, hashes: Sequence[BlockHash]) -> dict[WorkerId, int]:
        self.lookups += 1
        return await super().match(model, hashes)


def test_one_request_looks_its_prompt_up_once_across_retries(tok: Tokenizer) -> None:
    """Both prefill workers fail (another prefill worker is picked, then the decode worker
    prefills), then the decode fails before its first token and is placed again: one
    lookup of the prompt in the block index serves every placement."""
    store = CountingStore()
    prefill = [prefill_worker("p0:1", grpc.StatusCode.UNAVAILABLE), prefill_worker("p1:1", grpc.StatusCode.UNAVAILABLE)]
    decode = [decode_worker(f"d{i}:1", tok.encode(TEXT), fail_after=0) for i in range(2)]
    r = scripted_router(tok, prefill, decode, policy="prefix-aware", store=store)
    body = {"model": "tiny", "prompt": TEXT * 3, "max_tokens": 4}
    assert r.client.post("/v1/completions", json=body).status_code == 503
    assert sum(p.calls for p in prefill) == 2 and sum(len(d.calls) for d in decode) == 2
    assert r.counter("pdserve_router_retries_total", kind="decode") == 1
    assert store.lookups == 1
