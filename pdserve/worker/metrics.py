"""Worker metrics for Prometheus, on their own HTTP port.

Engine numbers are polled from ``engine.load()`` once a second and exposed at
scrape time by a collector (vLLM's names where the meaning is the same,
``pdserve_`` otherwise). RPC errors are counted as they happen.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
from prometheus_client import CollectorRegistry, Counter, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from pdserve.engine.base import DecodeEngine, EngineLoad, PrefillEngine
from pdserve.kv.path import Histogram

POLL_INTERVAL_S = 1.0


class WorkerMetrics(Collector):
    """One per worker process; owns its registry (no global state)."""

    def __init__(self, role: str, model: str) -> None:
        self.registry = CollectorRegistry()
        self._labels = {"role": role, "model_name": model}
        self._load = EngineLoad()
        self._errors = Counter(
            "pdserve_worker_errors", "RPCs that ended with an error status", ["code"], registry=self.registry
        )
        self._restarts = Counter(
            "pdserve_worker_loop_restarts",
            "Background loops (heartbeat, kv_feed) that failed and were started again",
            ["loop"],
            registry=self.registry,
        )
        self._store_errors = Counter(
            "pdserve_worker_state_store_errors",
            "Heartbeats the shared state store failed, by kind (connection, timeout, tls, oom, readonly, misconf, "
            "noperm, auth, response); the worker keeps serving and registers again once it answers",
            ["kind"],
            registry=self.registry,
        )
        self.registry.register(self)

    def store_failed(self, kind: str) -> None:
        self._store_errors.labels(kind).inc()

    def loop_restarted(self, loop: str) -> None:
        self._restarts.labels(loop).inc()

    def error(self, code: grpc.StatusCode) -> None:
        self._errors.labels(code.name).inc()

    def serve(self, host: str, port: int) -> None:
        try:
            start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise ValueError(f"metrics_port: {host}:{port} is not free ({exc.strerror})") from None

    async def poll(self, engine: PrefillEngine | DecodeEngine) -> None:
        """Refresh the engine snapshot until cancelled."""
        while True:
            self._load = await engine.load()
            await asyncio.sleep(POLL_INTERVAL_S)

    def collect(self) -> Iterator[Metric]:
        load, names, values = self._load, list(self._labels), list(self._labels.values())

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc, labels=names)
            family.add_metric(values, value)
            return family

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(name, doc, labels=names)
            family.add_metric(values, value)
            return family

        yield gauge("vllm:num_requests_running", "Requests in the engine's running batch", load.num_running)
        yield gauge("vllm:num_requests_waiting", "Requests waiting to be scheduled", load.num_waiting)
        yield gauge("vllm:kv_cache_usage_perc", "Fraction of KV-cache blocks in use (0-1)", load.kv_cache_usage)
        yield gauge("pdserve_worker_inflight_requests", "RPCs accepted and not finished", load.num_inflight)
        yield counter("vllm:prefix_cache_queries", "Prompt tokens looked up in the prefix cache", load.prefix_queries)
        yield counter("vllm:prefix_cache_hits", "Prompt tokens found in the prefix cache", load.prefix_hits)
        yield counter("pdserve_worker_kv_transfers", "KV transfers pulled by this engine", load.kv.transfers)
        yield counter("pdserve_worker_kv_transfer_failures", "Failed KV transfers or handshakes", load.kv.failures)
        yield counter("pdserve_worker_kv_transfer_bytes", "Bytes of KV pulled", load.kv.bytes)
        yield counter("pdserve_worker_kv_transfer_seconds", "Time spent in KV transfers", load.kv.seconds)
        yield from self._kv_path(load)

    def _kv_path(self, load: EngineLoad) -> Iterator[Metric]:
        """The pulling side's per-transfer measurements (pdserve/kv/path.py); label ``path``:
        the connector and KV buffer device (a handful of values per deployment)."""
        kv = load.kv_path
        names, values = [*self._labels, "path"], [*self._labels.values(), kv.path]

        def histogram(name: str, doc: str, h: Histogram) -> HistogramMetricFamily:
            family = HistogramMetricFamily(name, doc, labels=names)
            cumulative, total = [], 0
            for bound, count in zip([*map(str, h.buckets), "+Inf"], h.counts, strict=True):
                total += count
                cumulative.append((bound, total))
            family.add_metric(values, cumulative, h.total)
            return family

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc, labels=names)
            family.add_metric(values, value)
            return family

        yield histogram(
            "pdserve_worker_kv_transfer_bandwidth_bytes_per_second",
            "Bandwidth of each KV transfer of >= 1 MiB pulled by this engine",
            kv.bandwidth,
        )
        yield histogram("pdserve_worker_kv_transfer_duration_seconds", "Duration of each KV transfer", kv.duration)
        yield gauge(
            "pdserve_worker_kv_bandwidth_bytes_per_second", "Moving KV bandwidth (0: none yet)", kv.bandwidth_bps
        )
        yield gauge("pdserve_worker_kv_bandwidth_floor_bytes_per_second", "--kv-bandwidth-floor", kv.floor_bps)
        yield gauge("pdserve_worker_kv_path_slow", "1 while the moving KV bandwidth is under the floor", kv.slow)
        family = CounterMetricFamily(
            "pdserve_worker_kv_slow_transfers", "KV transfers of >= 1 MiB under the floor", labels=names
        )
        family.add_metric(values, kv.slow_transfers)
        yield family
