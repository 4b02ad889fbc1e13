"""Failure recovery through the HTTP surface, with scripted workers that fail on cue:
prefill retry, local-prefill fallback, re-placement, mid-stream migration, limits."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from fastapi.testclient import TestClient

from pdserve.engine.base import FinishReason, PrefillResult, SamplingSpec, TokenDelta
from pdserve.state.memory import MemoryStore
from pdserve.types import WorkerId
from router.api.app import create_app
from router.clients import WorkerError
from router.metrics import RouterMetrics
from router.orchestrator import Orchestrator, Timeouts
from router.placement import make_policy
from router.placement.decider import ThresholdDecider
from router.placement.placer import Placer
from router.pool import ModelPool
from router.recovery import Recovery
from router.service import RouterService
from router.tokenizer import Tokenizer
from tests.factories import make_tiny_llama, metric_samples

TEXT = "one two three four five six seven eight"


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    return Tokenizer(make_tiny_llama(tmp_path_factory.mktemp("tiny")))


class Decode:
    """Streams ``output`` (2 tokens a step) from where the request's budget says it is
    (requests ask for exactly ``len(output)`` tokens): a migrated request, whose
    max_tokens is what is left, continues the same text. ``fail_after``
    steps, then it fails with ``code`` (None = never); ``hang``: no token ever, the
    call ends at its deadline. ``releases``: the Release calls it answered."""

    def __init__(
        self,
        name: str,
        output: list[int],
        fail_after: int | None = None,
        code: grpc.StatusCode | None = None,
        hang: bool = False,
    ):
        self.worker = WorkerId(name)
        self.output, self.fail_after, self.code = output, fail_after, code or grpc.StatusCode.UNAVAILABLE
        self.hang = hang
        self.calls: list[dict[str, Any]] = []
        self.releases: list[tuple[str, dict[str, Any]]] = []

    async def decode(
        self, request_id: str, prompt: list[int], spec: SamplingSpec, kv: dict[str, Any] | None, timeout: float
    ) -> AsyncIterator[TokenDelta]:
        self.calls.append({"prompt": prompt, "spec": spec, "kv": kv})
        if self.hang:
            await asyncio.sleep(timeout)
            raise WorkerError(self.worker, grpc.StatusCode.DEADLINE_EXCEEDED, "deadline")
        start = len(self.output) - spec.max_tokens
        out = self.output[start:]
        for step, i in enumerate(range(0, len(out), 2)):
            if self.fail_after is not None and step >= self.fail_after:
                raise WorkerError(self.worker, self.code, "injected")
            done = i + 2 >= len(out)
            yield TokenDelta(tuple(out[i : i + 2]), i + 2, FinishReason.LENGTH if done else None, cached_tokens=7)

    async def release(self, request_id: str, kv: dict[str, Any], timeout: float) -> None:
        if self.fail_after is not None and self.code is grpc.StatusCode.UNAVAILABLE:
            raise WorkerError(self.worker, self.code, "injected")  # a worker that is gone answers nothing
        self.releases.append((request_id, kv))


class Prefill:
    def __init__(self, name: str, code: grpc.StatusCode | None = None) -> None:
        self.worker, self.code, self.calls = WorkerId(name), code, 0

    async def prefill(self, request_id: str, prompt: list[int], spec: SamplingSpec, timeout: float) -> PrefillResult:
        self.calls += 1
        if self.code is not None:
            raise WorkerError(self.worker, self.code, "injected")
        return PrefillResult(prompt[0], 64, {"from": str(self.worker)})


def cluster(
    tok: Tokenizer,
    prefill: list[Prefill],
    decode: list[Decode],
    recovery: Recovery | None = None,
    timeouts: Timeouts | None = None,
) -> tuple[TestClient, ModelPool, RouterMetrics]:
    pool = ModelPool(
        "tiny",
        tok,
        max_model_len=256,
        block_size=32,
        prefill={p.worker: p for p in prefill},  # type: ignore[misc]
        decode={d.worker: d for d in decode},  # type: ignore[misc]
    )
    metrics = RouterMetrics("round-robin")
    placer = Placer(make_policy("round-robin"), ThresholdDecider(), MemoryStore())
    orchestrator = Orchestrator(placer, timeouts or Timeouts(), metrics, recovery or Recovery(backoff_s=0.0))
    return TestClient(create_app(lambda: RouterService({"tiny": pool}, orchestrator, metrics))), pool, metrics


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


def counter(metrics: RouterMetrics, name: str, **labels: str) -> float:
    from prometheus_client import generate_latest

    samples = metric_samples(generate_latest(metrics.registry).decode())
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_a_failed_prefill_is_retried_on_another_prefill_worker(tok: Tokenizer) -> None:
    bad, good = Prefill("p0:1", grpc.StatusCode.UNAVAILABLE), Prefill("p1:1")
    d = Decode("d0:1", tok.encode(TEXT))
    client, pool, metrics = cluster(tok, [bad, good], [d])
    status, text, body = complete(client, tok)
    assert (status, text) == (200, tok.decode(tok.encode(TEXT)))
    assert bad.calls == 1 and good.calls == 1 and d.calls[0]["kv"] == {"from": "p1:1"}
    assert body["usage"]["prompt_tokens_details"]["cached_tokens"] == 64
    assert WorkerId("p0:1") in pool.down  # out of placement until its next good Load poll
    assert counter(metrics, "pdserve_router_retries_total", kind="prefill") == 1


def test_when_every_prefill_fails_the_decode_worker_prefills_itself(tok: Tokenizer) -> None:
    prefills = [Prefill("p0:1", grpc.StatusCode.INTERNAL), Prefill("p1:1", grpc.StatusCode.UNAVAILABLE)]
    d = Decode("d0:1", tok.encode(TEXT))
    client, _, metrics = cluster(tok, prefills, [d])
    status, text, _ = complete(client, tok)
    assert status == 200 and text == tok.decode(tok.encode(TEXT)) and d.calls[0]["kv"] is None
    assert counter(metrics, "pdserve_router_retries_total", kind="local_prefill") == 1


def test_a_prefill_the_engine_refuses_is_not_retried(tok: Tokenizer) -> None:
    bad, other = Prefill("p0:1", grpc.StatusCode.INVALID_ARGUMENT), Prefill("p1:1")
    client, _, _ = cluster(tok, [bad, other], [Decode("d0:1", tok.encode(TEXT))])
    status, _, body = complete(client, tok)
    assert status == 400 and "error" in body and other.calls == 0


def test_a_decode_failing_before_its_first_token_is_placed_again(tok: Tokenizer) -> None:
    bad, good = Decode("d0:1", tok.encode(TEXT), fail_after=0), Decode("d1:1", tok.encode(TEXT))
    client, _, metrics = cluster(tok, [Prefill("p0:1")], [bad, good])
    status, text, _ = complete(client, tok)
    assert status == 200 and text == tok.decode(tok.encode(TEXT))
    assert len(bad.calls) == 1 and len(good.calls) == 1
    assert counter(metrics, "pdserve_router_retries_total", kind="decode") == 1


@pytest.mark.parametrize("stream", [False, True])
def test_a_decode_failing_mid_stream_is_migrated_and_the_client_sees_one_stream(tok: Tokenizer, stream: bool) -> None:
    ids = tok.encode(TEXT)
    n = len(ids)
    bad, good = Decode("d0:1", ids, fail_after=2), Decode("d1:1", ids)  # 4 tokens, then it dies
    client, _, metrics = cluster(tok, [Prefill("p0:1")], [bad, good])
    status, text, last = complete(client, tok, stream=stream)
    assert status == 200
    assert text == tok.decode(ids)  # uninterrupted text: nothing lost, nothing repeated
    assert last["usage"]["completion_tokens"] == n and last["usage"]["prompt_tokens"] == len(tok.encode("Hi"))
    moved = good.calls[0]
    assert moved["prompt"] == tok.encode("Hi") + ids[:4]  # prompt + what was streamed
    assert moved["spec"].max_tokens == n - 4
    assert counter(metrics, "pdserve_router_migrations_total") == 1


def test_past_the_migration_limit_the_client_gets_a_clean_error(tok: Tokenizer) -> None:
    ids = tok.encode(TEXT)
    decode = [Decode("d0:1", ids, fail_after=1), Decode("d1:1", ids, fail_after=1)]
    client, _, _ = cluster(tok, [Prefill("p0:1")], decode, Recovery(migrations=0, backoff_s=0.0))
    status, _, body = complete(client, tok)
    assert status == 503 and body["error"]["type"] == "service_unavailable"
    status, _, last = complete(client, tok, stream=True)
    assert status == 200 and "error" in last  # headers were sent: the error is the last event


def test_a_decode_failing_before_its_first_token_releases_the_prefills_kv(tok: Tokenizer) -> None:
    # INTERNAL: the worker still answers (its engine failed the request), so it releases.
    bad = Decode("d0:1", tok.encode(TEXT), fail_after=0, code=grpc.StatusCode.INTERNAL)
    good = Decode("d1:1", tok.encode(TEXT))
    client, _, metrics = cluster(tok, [Prefill("p0:1")], [bad, good])
    status, text, _ = complete(client, tok)
    assert status == 200 and text == tok.decode(tok.encode(TEXT))
    assert [kv for _, kv in bad.releases] == [{"from": "p0:1"}]  # the prefill's handle, unchanged
    assert good.releases == []  # its decode read the KV of its own, second prefill
    assert counter(metrics, "pdserve_router_kv_released_total") == 1


def test_when_the_failed_decode_worker_is_gone_another_one_releases(tok: Tokenizer) -> None:
    gone = Decode("d0:1", tok.encode(TEXT), fail_after=0)  # UNAVAILABLE: answers no Release either
    other = Decode("d1:1", tok.encode(TEXT))
    client, _, metrics = cluster(tok, [Prefill("p0:1")], [gone, other])
    status, _, _ = complete(client, tok)
    assert status == 200
    assert other.releases[0][1] == {"from": "p0:1"} and len(other.releases) == 1
    assert counter(metrics, "pdserve_router_kv_released_total") == 1


def test_a_request_past_its_deadline_before_the_first_token_releases_the_prefills_kv(tok: Tokenizer) -> None:
    d = Decode("d0:1", tok.encode(TEXT), hang=True)
    client, _, metrics = cluster(tok, [Prefill("p0:1")], [d], timeouts=Timeouts(request_s=0.3))
    status, _, body = complete(client, tok)
    assert status == 504 and body["error"]["code"] == "request_timeout"
    assert [kv for _, kv in d.releases] == [{"from": "p0:1"}]
    assert counter(metrics, "pdserve_router_kv_released_total") == 1


@pytest.mark.parametrize("stream", [False, True])
def test_a_request_whose_decode_reads_the_kv_releases_nothing(tok: Tokenizer, stream: bool) -> None:
    ids = tok.encode(TEXT)
    bad, good = Decode("d0:1", ids, fail_after=2), Decode("d1:1", ids)  # migrated after 4 tokens
    client, _, metrics = cluster(tok, [Prefill("p0:1")], [bad, good])
    assert complete(client, tok, stream=stream)[0] == 200
    plain = Decode("d2:1", ids)
    client, _, plain_metrics = cluster(tok, [Prefill("p0:1")], [plain])
    assert complete(client, tok, stream=stream)[0] == 200
    assert bad.releases == good.releases == plain.releases == []
    assert counter(metrics, "pdserve_router_kv_released_total") == 0
    assert counter(plain_metrics, "pdserve_router_kv_released_total") == 0


def test_a_worker_removed_between_placement_and_its_rpc_is_worked_around(tok: Tokenizer) -> None:
    first, second = Decode("d0:1", tok.encode(TEXT)), Decode("d1:1", tok.encode(TEXT))
    client, pool, _ = cluster(tok, [], [first, second])
    lookup = pool.decode_client

    def removed_after_placement(worker: WorkerId):  # type: ignore[no-untyped-def]
        pool.decode.pop(first.worker, None)  # the fleet drops d0 (deregistered) as the RPC is made
        return lookup(worker)

    pool.decode_client = removed_after_placement  # type: ignore[method-assign]
    status, text, _ = complete(client, tok)
    assert (status, text) == (200, tok.decode(tok.encode(TEXT)))  # was a 500 (KeyError)
    assert not first.calls and len(second.calls) == 1
