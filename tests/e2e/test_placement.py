"""Placement on real vLLM CPU engines: 2 prefill workers + 1 decode worker (the
session cluster, whose workers also register in Redis and feed it their KV
events), extra router processes, a second model on its own worker, Redis outages.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pdserve.lifetime import launch_env
from pdserve.state import StoreUnavailable, make_store
from tests.factories import make_tiny_llama, metric_samples
from tests.helpers.cluster import Cluster
from tests.helpers.kv_index import index_holders
from tests.helpers.net import REPO, free_port
from tests.helpers.processes import kill_tree
from tests.helpers.workers import Worker, start_decode_worker, stop_worker
from tests.redis_server import RedisServer

pytestmark = pytest.mark.engine
BLOCK = 128
# A backstop for a router that neither serves nor exits (imports + tokenizer on a CPU
# shared with busy engines): its first answer ends the wait, its exit fails it at once.
START_TIMEOUT_S = 900.0


class Router:
    def __init__(self, tmp: Path, name: str, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"{name}.log"
        self._args = args
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Router:
        cmd = [sys.executable, "-m", "router", "--port", str(self.port), *self._args]
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=launch_env(), stdout=self.log.open("ab"), stderr=subprocess.STDOUT
        )
        try:
            self._wait_ready(time.monotonic() + START_TIMEOUT_S)
        except BaseException:
            self.stop(signal.SIGKILL)  # a router we gave up on must not come up later, unwatched
            raise
        return self

    def _wait_ready(self, deadline: float) -> None:
        assert self.proc is not None
        while True:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, "router did not start"
            try:
                if httpx.get(self.url + "/v1/models", timeout=2).json()["data"]:
                    return
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            time.sleep(0.3)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                kill_tree(self.proc.pid)
                # the router logs its threads' stacks when a stop takes long (router/server.py)
                raise AssertionError(f"router did not stop on {sig!r}:\n{self.log.read_text()[-6000:]}") from None

    def complete(self, model: str, prompt: str, max_tokens: int = 2) -> dict:
        body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "return_token_ids": True}
        resp = httpx.post(self.url + "/v1/completions", json=body, timeout=300)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        body["prompt_token_ids"] = body["choices"][0]["prompt_token_ids"]  # per choice, as vLLM puts them
        return body

    def workers(self) -> dict[tuple[str, str], int]:
        """(model, role) → workers in placement, as this router's metrics say."""
        samples = metric_samples(httpx.get(self.url + "/metrics", timeout=10).text)
        return {
            (dict(labels)["model"], dict(labels)["role"]): int(v)
            for (name, labels), v in samples.items()
            if name == "pdserve_router_workers" and v > 0
        }

    def placements(self, role: str = "prefill") -> dict[str, float]:
        samples = metric_samples(httpx.get(self.url + "/metrics", timeout=10).text)
        return {
            dict(labels)["worker"]: v
            for (name, labels), v in samples.items()
            if name == "pdserve_router_placement_decisions_total" and dict(labels)["role"] == role
        }


def placed_on(router: Router, before: dict[str, float], role: str = "prefill") -> str:
    after = router.placements(role)
    moved = [w for w, v in after.items() if v > before.get(w, 0)]
    assert len(moved) == 1, (before, after)
    return moved[0]


def shared_prefix() -> str:
    """~700 tokens no earlier request has used (a fresh prefix every call)."""
    tag = uuid.uuid4().hex
    return f"Reference sheet {tag}. " + " ".join(
        f"item {tag[i % 32]}{i} is filed under shelf {i % 17};" for i in range(90)
    )


def cached(resp: dict) -> int:
    return resp["usage"]["prompt_tokens_details"]["cached_tokens"]


def test_prefix_aware_sends_a_shared_prefix_back_to_its_prefill_worker(cluster: Cluster) -> None:
    router = Router(Path(cluster.log).parent, "default")  # only for its helpers: the cluster's own router
    router.url = cluster.url
    prefix = shared_prefix()
    before = router.placements()
    router.complete(cluster.model, prefix + " Question: where is item 3?")
    first = placed_on(router, before)
    before = router.placements()
    second = router.complete(cluster.model, prefix + " Question: where is item 7?")
    assert placed_on(router, before) == first
    assert cached(second) >= 5 * BLOCK  # the shared prefix's blocks came from that worker's cache


def test_round_robin_does_not(cluster: Cluster, tmp_path: Path) -> None:
    addrs = [f"--prefill={a}" for a in cluster.prefill_addrs]
    rr = Router(tmp_path, "rr", "--policy", "round-robin", *addrs, "--decode", cluster.decode_addr).start()
    try:
        prefix = shared_prefix()
        before = rr.placements()
        rr.complete(cluster.model, prefix + " Question: where is item 3?")
        first = placed_on(rr, before)
        before = rr.placements()
        second = rr.complete(cluster.model, prefix + " Question: where is item 7?")
        assert placed_on(rr, before) != first
        assert cached(second) == 0
    finally:
        rr.stop()


@pytest.fixture(scope="module")
def tiny_worker(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Iterator[Worker]:
    """A second model ("tiny") on its own decode worker, registered in the same Redis."""
    tmp = tmp_path_factory.mktemp("tiny")
    model = make_tiny_llama(tmp / "model")
    worker = start_decode_worker(
        model,
        tmp / "decode.log",
        "--served-model-name",
        "tiny",
        "--state-url",
        redis_server.url,
        "--heartbeat-ttl",
        "2",
    )
    yield worker
    stop_worker(worker)


@pytest.fixture(scope="module")
def redis_routers(
    cluster: Cluster, tiny_worker: Worker, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Router, Router]]:
    """Two router replicas that know the fleet only through Redis."""
    tmp = tmp_path_factory.mktemp("routers")
    a = Router(tmp, "a", "--state-url", redis_server.url).start()
    b = Router(tmp, "b", "--state-url", redis_server.url).start()
    # Every worker discovered, not just one per model: a replica that has found one of the two
    # prefill workers places every prompt there, whatever the index says (seen in CI).
    fleet = {(cluster.model, "prefill"): len(cluster.prefill_addrs), (cluster.model, "decode"): 1}
    fleet[("tiny", "decode")] = 1
    for r in (a, b):
        deadline = time.monotonic() + 120  # a backstop: discovery ends it (heartbeats on busy cores)
        while (seen := r.workers()) != fleet:
            assert time.monotonic() < deadline, (seen, r.log.read_text()[-2000:])
            time.sleep(0.5)
    yield a, b
    a.stop()
    b.stop()


def test_replicas_share_placement_and_the_index_comes_from_vllm_events(
    cluster: Cluster, redis_routers: tuple[Router, Router], redis_server: RedisServer
) -> None:
    a, b = redis_routers
    prefix = shared_prefix()
    before = a.placements()
    first = a.complete(cluster.model, prefix + " Question: where is item 3?")
    worker = placed_on(a, before)
    # the prefill worker's BlockStored events, re-hashed from their token ids, name the
    # same blocks the router hashes from the prompt (prefill + decode both hold them)
    deadline = time.monotonic() + 10
    while not all(worker in h for h in index_holders(redis_server, cluster.model, first["prompt_token_ids"])):
        assert time.monotonic() < deadline, index_holders(redis_server, cluster.model, first["prompt_token_ids"])
        time.sleep(0.2)
    before = b.placements()
    second = b.complete(cluster.model, prefix + " Question: where is item 7?")
    assert placed_on(b, before) == worker and cached(second) >= 5 * BLOCK
    # a restarted router starts from the shared index: nothing was lost
    b.stop(signal.SIGKILL)
    b.start()
    before = b.placements()
    third = b.complete(cluster.model, prefix + " Question: where is item 9?")
    assert placed_on(b, before) == worker and cached(third) >= 5 * BLOCK


def test_each_model_reaches_only_its_own_workers(
    cluster: Cluster, redis_routers: tuple[Router, Router], tiny_worker: Worker
) -> None:
    a, _ = redis_routers
    before = a.placements("decode")
    a.complete("tiny", "hello tiny model", max_tokens=3)
    assert placed_on(a, before, "decode") == tiny_worker.addr
    before = a.placements("decode")
    a.complete(cluster.model, "hello default model", max_tokens=3)
    assert placed_on(a, before, "decode") == cluster.decode_addr
    resp = httpx.post(a.url + "/v1/completions", json={"model": "nope", "prompt": "x"}, timeout=30)
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "model_not_found"


def test_redis_outage_fails_no_request_and_the_index_recovers(
    cluster: Cluster, redis_routers: tuple[Router, Router], redis_server: RedisServer
) -> None:
    a, _ = redis_routers
    prefix = shared_prefix()
    first = a.complete(cluster.model, prefix + " Question: where is item 1?")
    redis_server.stop()
    try:
        for i in range(4):  # every request succeeds on the router's local view
            a.complete(cluster.model, prefix + f" Question: where is item {i + 2}?")
        samples = metric_samples(httpx.get(a.url + "/metrics", timeout=10).text)
        assert samples[("pdserve_router_state_store_up", ())] == 0
    finally:
        redis_server.start()  # empty: no persistence
    # workers re-register and rewrite their block sets; routers notice Redis is back
    deadline = time.monotonic() + 20
    while not all(index_holders(redis_server, cluster.model, first["prompt_token_ids"])):
        assert time.monotonic() < deadline, "the block index was not rebuilt after Redis came back"
        time.sleep(0.3)
    while metric_samples(httpx.get(a.url + "/metrics", timeout=10).text)[("pdserve_router_state_store_up", ())] != 1:
        assert time.monotonic() < deadline
        time.sleep(0.3)
    a.complete(cluster.model, prefix + " Question: where is item 9?")


def test_a_killed_worker_leaves_within_its_heartbeat_ttl(
    redis_routers: tuple[Router, Router], tiny_worker: Worker, redis_server: RedisServer
) -> None:
    async def leave_time() -> float:
        store = make_store(redis_server.url, timeout_s=5)  # one event loop for the store's connections

        async def registered() -> bool:
            while True:  # a starved CPU can time a read out: ask again
                with contextlib.suppress(StoreUnavailable):
                    return tiny_worker.addr in {r.worker_id for r in await store.workers()}

        try:
            assert await registered()
            os.killpg(tiny_worker.proc.pid, signal.SIGKILL)  # no deregistration
            killed = time.monotonic()
            while await registered():
                assert time.monotonic() - killed < 30, "the killed worker never left the registry"
                await asyncio.sleep(0.1)
            return time.monotonic() - killed
        finally:
            await store.close()

    assert asyncio.run(leave_time()) <= 2.0 + 1.0  # TTL 2 s, plus polling
    a, _ = redis_routers
    resp = httpx.post(a.url + "/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 1}, timeout=30)
    assert resp.status_code in (404, 503), resp.text  # out of placement: no request reaches it
