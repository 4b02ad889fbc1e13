from __future__ import annotations

import socket

import grpc
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pdserve.engine.base import EngineLoad, KvTransferTotals
from pdserve.worker.metrics import WorkerMetrics


def test_snapshot_is_exposed_under_vllm_and_pdserve_names() -> None:
    m = WorkerMetrics("decode", "tiny")
    m._load = EngineLoad(
        num_running=3,
        num_waiting=2,
        kv_cache_usage=0.25,
        num_inflight=4,
        kv=KvTransferTotals(5, 1, 4096, 0.5),
        prefix_queries=100,
        prefix_hits=40,
    )
    m.error(grpc.StatusCode.INVALID_ARGUMENT)
    samples = {
        (s.name, s.labels.get("role")): s.value
        for f in text_string_to_metric_families(generate_latest(m.registry).decode())
        for s in f.samples
    }
    assert samples[("vllm:num_requests_running", "decode")] == 3
    assert samples[("vllm:num_requests_waiting", "decode")] == 2
    assert samples[("vllm:kv_cache_usage_perc", "decode")] == 0.25
    assert samples[("vllm:prefix_cache_hits_total", "decode")] == 40
    assert samples[("pdserve_worker_kv_transfer_bytes_total", "decode")] == 4096
    assert samples[("pdserve_worker_kv_transfer_failures_total", "decode")] == 1
    assert samples[("pdserve_worker_errors_total", None)] == 1


def test_taken_metrics_port_is_a_config_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        with pytest.raises(ValueError, match="metrics_port"):
            WorkerMetrics("prefill", "tiny").serve("127.0.0.1", sock.getsockname()[1])
