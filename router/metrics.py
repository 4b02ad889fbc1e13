"""Router metrics for Prometheus (``GET /metrics``). One instance per app, own registry.

Under ``--workers N`` (router/processes.py) the N processes' values live in Prometheus'
multiprocess files and every scrape reads them all: each gauge says how processes combine
(``multiprocess_mode``: live* = processes alive now), and the gauges one process computes
on demand (queue, ejections, tasks) are written as its requests start and end (at most once
a second) and at each scrape it answers. The files keep every series ever written, so a scrape
drops the per-worker placement series of workers no longer in the fleet (``_LiveWorkers``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.metrics_core import Metric

from pdserve.types import WorkerId
from router.admission import Gate
from router.pool import ModelPool
from router.request import Chunk


def _task_count() -> int:
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:  # scraped off the event loop's thread
        return 0


# Buckets in seconds, from vLLM's own histograms of the same quantities.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0)
ITL_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
# KV handover: 1 ms (NVLink, small prompts) to 40 s (DESIGN §8's TCP emulation under load).
HANDOVER_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0)
# --workers: how often a process writes its computed gauges (queue, ejections, tasks) as requests come
# and go; a scrape writes the answering process's at once. (all_tasks() is O(tasks): not per request.)
REFRESH_S = 1.0
# Shared-store calls: a local Redis answers in ~0.1 ms; a loaded or distant one in tens of ms.
STORE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 300.0)


class RouterMetrics:
    """Implements the orchestrator's ``Observer`` (router/observer.py); wraps chunk streams for latencies."""

    def __init__(self, policy: str, multiprocess_dir: str | None = None) -> None:
        """``multiprocess_dir``: the ``--workers`` processes' shared directory (its variable
        must have been set before prometheus_client was imported); None: this process only."""
        self._policy = policy
        self._dir = multiprocess_dir
        self._computed: list[tuple[Gauge, Callable[[], float]]] = []  # written by ``_refresh``
        self._refreshed = -REFRESH_S
        # Label values of the per-worker and per-model series: those of workers and models
        # that left are removed (fleet_changed), so churn does not grow the exposition.
        self._placed: set[tuple[str, WorkerId]] = set()
        self._live: set[tuple[str, WorkerId]] = set()  # (role, worker) in the fleet, as every process sees it
        self._models: set[str] = set()
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "pdserve_router_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.ttft = Histogram(
            "pdserve_router_time_to_first_token_seconds", "Arrival to first token", buckets=TTFT_BUCKETS, registry=r
        )
        self.itl = Histogram(
            "pdserve_router_inter_token_latency_seconds", "Time between output tokens", buckets=ITL_BUCKETS, registry=r
        )
        self.e2e = Histogram(
            "pdserve_router_e2e_request_latency_seconds", "Arrival to last token", buckets=E2E_BUCKETS, registry=r
        )
        self.queue_time = Histogram(
            "pdserve_router_queue_time_seconds",
            "Arrival to the first worker RPC (tokenize, validate, place)",
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter("pdserve_router_prompt_tokens", "Prompt tokens", registry=r)
        self.cached_tokens = Counter(
            "pdserve_router_cached_tokens", "Prompt tokens the prefill side had cached", registry=r
        )
        self.generation_tokens = Counter("pdserve_router_generation_tokens", "Generated tokens", registry=r)
        self.placements = Counter(
            "pdserve_router_placement_decisions",
            "Worker chosen per request and role",
            ["role", "policy", "worker"],
            registry=r,
        )
        self.disagg = Counter(
            "pdserve_router_disagg_decisions",
            "remote = prefill worker, local = decode worker prefills; reason = why",
            ["decision", "reason"],
            registry=r,
        )
        self.handover = Histogram(
            "pdserve_router_kv_handover_seconds",
            "Remote prefills: Prefill RPC returned to the first decode token (KV transfer + the decode's "
            "first step + RPC); compare with the workers' pdserve_worker_kv_transfer_duration_seconds",
            buckets=HANDOVER_BUCKETS,
            registry=r,
        )
        self.handover_worker = Histogram(
            "pdserve_router_kv_handover_worker_seconds",
            "Remote prefills: the decode worker's part of the handover, request received to its first "
            "token (queue, KV pull, first step) as the worker reports it; the rest is RPC",
            buckets=HANDOVER_BUCKETS,
            registry=r,
        )
        self.prefix_matched = Counter(
            "pdserve_router_prefix_matched_tokens",
            "Prompt tokens the block index placed on a worker that holds them (over prompt_tokens: prefix-hit ratio)",
            registry=r,
        )
        self.placed_prompt_tokens = Counter(
            "pdserve_router_placed_prompt_tokens", "Prompt tokens of placed requests", registry=r
        )
        self.store_up = Gauge(
            "pdserve_router_state_store_up",
            "1 while the shared state store (Redis) answers",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.store_up.set(1)
        self.store_errors = Counter(
            "pdserve_router_state_store_errors",
            "Calls the shared state store failed, by kind: connection, timeout, tls, oom, readonly, misconf, "
            "noperm, auth, response (the router then serves from its local view)",
            ["kind"],
            registry=r,
        )
        self.store_calls = Histogram(
            "pdserve_router_state_store_seconds",
            "Calls to the shared state store (Redis), by operation (match, predict and count: one round trip "
            "each, on the request path; entries/register/... are background), failed calls included",
            ["op"],
            buckets=STORE_BUCKETS,
            registry=r,
        )
        self.registry_rejections = Counter(
            "pdserve_router_registry_rejected",
            "Registry entries skipped, never dialled, by reason: malformed, unsigned, bad_signature, "
            "hash_scheme, bad_info (its Info disagrees with its record or is not sane)",
            ["reason"],
            registry=r,
        )
        self.loop_restarts = Counter(
            "pdserve_router_loop_restarts",
            "Background loops (discovery, load_poll) that failed and were started again",
            ["loop"],
            registry=r,
        )
        self.workers = Gauge(
            "pdserve_router_workers", "Workers in placement", ["model", "role"], registry=r, multiprocess_mode="livemax"
        )
        self.retries = Counter(
            "pdserve_router_retries",
            "Recoveries from a failed worker: prefill (another prefill worker), local_prefill "
            "(the decode worker prefills), decode (placed again before the first token)",
            ["kind"],
            registry=r,
        )
        self.migrations = Counter(
            "pdserve_router_migrations", "Streams moved to another decode worker mid-generation", registry=r
        )
        self.released = Counter(
            "pdserve_router_kv_released",
            "Releases of a remote prefill's KV that no decode read (the decode failed, or its "
            "client left, before the first token) a decode worker accepted",
            registry=r,
        )
        self.ejected = Gauge(
            "pdserve_router_ejected_workers",
            "Workers out of placement by outlier ejection (router/outliers.py)",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.inflight = Gauge(
            "pdserve_router_inflight_requests", "Requests being served", registry=r, multiprocess_mode="livesum"
        )
        self.queued = Gauge(
            "pdserve_router_queued_requests",
            "Requests waiting for a slot (--max-inflight)",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.tasks = Gauge(
            "pdserve_router_asyncio_tasks",
            "asyncio tasks alive in the router (leak check)",
            registry=r,
            multiprocess_mode="livesum",
        )
        self._compute(self.tasks, _task_count)
        self.rejections = Counter(
            "pdserve_router_rejections", "Requests refused before reaching a worker", ["reason"], registry=r
        )

    def watch(self, gate: Gate, pools: Mapping[str, ModelPool]) -> None:
        self._compute(self.queued, lambda: gate.queued)
        self._compute(self.ejected, lambda: sum(len(pool.down) for pool in list(pools.values())))

    def _compute(self, gauge: Gauge, value: Callable[[], float]) -> None:
        if self._dir is None:
            gauge.set_function(value)  # read at each scrape
        else:  # a scrape reads files, not functions: written at requests and scrapes
            self._computed.append((gauge, value))

    def _refresh(self, every_s: float = REFRESH_S) -> None:
        if not self._computed or time.monotonic() - self._refreshed < every_s:
            return
        self._refreshed = time.monotonic()
        for gauge, value in self._computed:
            gauge.set(value())

    def placed(self, role: str, worker: WorkerId) -> None:
        self.placements.labels(role, self._policy, worker).inc()
        self._placed.add((role, worker))

    def disaggregated(self, remote: bool, reason: str) -> None:
        self.disagg.labels("remote" if remote else "local", reason).inc()

    def handed_over(self, seconds: float, worker_s: float) -> None:
        self.handover.observe(seconds)
        if worker_s > 0:
            self.handover_worker.observe(worker_s)

    def prefix(self, matched_tokens: int, prompt_tokens: int) -> None:
        self.prefix_matched.inc(matched_tokens)
        self.placed_prompt_tokens.inc(prompt_tokens)

    def retried(self, kind: str) -> None:
        self.retries.labels(kind).inc()

    def migrated(self) -> None:
        self.migrations.inc()

    def kv_released(self) -> None:
        self.released.inc()

    def store_available(self, up: bool) -> None:
        self.store_up.set(1 if up else 0)

    def loop_restarted(self, loop: str) -> None:
        self.loop_restarts.labels(loop).inc()

    def registry_rejected(self, reason: str) -> None:
        self.registry_rejections.labels(reason).inc()

    def store_failed(self, kind: str) -> None:
        self.store_errors.labels(kind).inc()

    def store_called(self, op: str, seconds: float) -> None:
        self.store_calls.labels(op).observe(seconds)

    def fleet_changed(self, pools: Mapping[str, ModelPool]) -> None:
        """Each model's active pool (router/generations.py); a model that is gone reads 0."""
        for model in self._models - set(pools):
            for role in ("prefill", "decode"):
                self.workers.labels(model, role).set(0)
        self._models = set(pools)
        for pool in pools.values():
            self.workers.labels(pool.name, "prefill").set(len(pool.prefill))
            self.workers.labels(pool.name, "decode").set(len(pool.decode))
        live = {("prefill", w) for p in pools.values() for w in p.prefill}
        live |= {("decode", w) for p in pools.values() for w in p.decode}
        self._live = live
        for role, worker in self._placed - live:
            self.placements.remove(role, self._policy, worker)
        self._placed &= live
        for model in self._models - set(pools):
            for role in ("prefill", "decode"):
                self.workers.remove(model, role)
        self._models = set(pools)

    def series(self) -> int:
        """Label sets of the per-worker and per-model series (a churn test checks they stay bounded)."""
        return len(self._placed) + 2 * len(self._models)

    def dispatched(self, queued_s: float) -> None:
        self.queue_time.observe(queued_s)

    def exposition(self) -> bytes:
        if self._dir is None:
            return generate_latest(self.registry)
        self._refresh(every_s=0)
        every = CollectorRegistry()
        every.register(_LiveWorkers(multiprocess.MultiProcessCollector(None, path=self._dir), lambda: self._live))
        return generate_latest(every)

    async def observe(
        self, arrival: float, prompt_tokens: Sequence[int], n: int, chunks: AsyncIterator[Chunk]
    ) -> AsyncGenerator[Chunk, None]:
        """Pass chunks through, timing them: TTFT at the first, ITL per token after.
        ``prompt_tokens``: each prompt's length (a completions batch has several), ``n``
        choices each; a chunk's index is prompt index * n + choice."""
        self.inflight.inc()
        self._refresh()
        last = arrival
        first = True
        try:
            async for chunk in chunks:
                now = time.perf_counter()
                if first:
                    self.ttft.observe(now - arrival)
                    first = False
                elif chunk.token_ids:
                    gap = (now - last) / len(chunk.token_ids)
                    for _ in chunk.token_ids:
                        self.itl.observe(gap)
                last = now
                if chunk.finish_reason is not None:
                    self.generation_tokens.inc(chunk.completion_tokens)  # every choice's
                    if chunk.index == 0:
                        self.e2e.observe(now - arrival)
                    if chunk.index % n == 0:  # a prompt's first choice: the prompt was prefilled once
                        self.prompt_tokens.inc(prompt_tokens[chunk.index // n])
                        self.cached_tokens.inc(chunk.cached_tokens)
                yield chunk
        finally:
            self.inflight.dec()
            self._refresh()


class _LiveWorkers:
    """The multiprocess files' series, less the per-worker placement series of workers that
    left the fleet: a file keeps every series a process ever wrote (there is no removing one),
    and ``fleet_changed`` removes them only from this process's own registry."""

    PER_WORKER = "pdserve_router_placement_decisions"

    def __init__(
        self, inner: multiprocess.MultiProcessCollector, live: Callable[[], set[tuple[str, WorkerId]]]
    ) -> None:
        self._inner, self._live = inner, live

    def collect(self) -> Iterator[Metric]:
        live = self._live()
        for family in self._inner.collect():
            if family.name == self.PER_WORKER:
                family.samples = [s for s in family.samples if (s.labels.get("role"), s.labels.get("worker")) in live]
            yield family
