"""The measured KV path: classification, the floor, the warning, what Load and metrics carry."""

from __future__ import annotations

import logging

import pytest

from pdserve.engine.base import EngineLoad, KvTransferTotals
from pdserve.kv.path import MIN_BYTES, KvPath, default_floor
from pdserve.rpc import convert
from pdserve.worker.metrics import WorkerMetrics

MB = 1 << 20
FAST, SLOW = 25e9, 0.4e9  # bytes/s: the sim's NVLink-class path, DESIGN §8's TCP emulation


def transfer(path: KvPath, bps: float, nbytes: int = 400 * MB) -> None:
    path.record(nbytes, nbytes / bps)


def test_default_floor_depends_on_where_the_kv_is_staged() -> None:
    assert default_floor("cpu") < default_floor("cuda") == default_floor("unknown-device")


def test_two_slow_transfers_flag_the_path_and_two_fast_ones_clear_it(caplog: pytest.LogCaptureFixture) -> None:
    path = KvPath("nixl/UCX/cuda", 5e9)
    with caplog.at_level(logging.INFO, "pdserve.kv.path"):
        transfer(path, FAST)
        assert "first transfer" in caplog.text and "ok" in caplog.text
        assert not path.state().slow
        transfer(path, SLOW)
        assert not path.state().slow  # one outlier is not a slow path
        transfer(path, SLOW)
        state = path.state()
        assert state.slow and state.bandwidth_bps < 5e9 and state.slow_transfers == 2
        assert "KV PATH SLOW: nixl/UCX/cuda" in caplog.text
        transfer(path, FAST)
        transfer(path, FAST)
        assert not path.state().slow
        assert "recovered" in caplog.text
    assert sum(r.levelno == logging.WARNING for r in caplog.records) == 2  # one each way, not per transfer


def test_small_transfers_count_as_durations_only() -> None:
    path = KvPath("sim", 5e9)
    path.record(MIN_BYTES - 1, 1.0)  # a latency, not a bandwidth
    state = path.state()
    assert state.bandwidth_bps == 0 and not state.slow
    assert sum(state.duration.counts) == 1 and sum(state.bandwidth.counts) == 0


def test_load_carries_the_path_to_the_router() -> None:
    path = KvPath("sim", 5e9)
    transfer(path, SLOW)
    load = EngineLoad(kv=KvTransferTotals(1, 0, 400 * MB, 1.0), kv_path=path.state())
    back = convert.load_from_pb(convert.load_to_pb(load, 0)).kv_path
    assert (back.path, back.slow, back.floor_bps) == ("sim", True, 5e9)
    assert back.bandwidth_bps == pytest.approx(SLOW)


def test_worker_metrics_expose_histograms_gauges_and_the_slow_flag() -> None:
    path = KvPath("sim", 5e9)
    transfer(path, FAST)
    transfer(path, SLOW)
    transfer(path, SLOW)
    metrics = WorkerMetrics("decode", "m")
    metrics._load = EngineLoad(kv_path=path.state())  # what poll() stores
    labels = {"role": "decode", "model_name": "m", "path": "sim"}
    value = metrics.registry.get_sample_value
    assert value("pdserve_worker_kv_path_slow", labels) == 1
    assert value("pdserve_worker_kv_slow_transfers_total", labels) == 2
    assert value("pdserve_worker_kv_transfer_bandwidth_bytes_per_second_count", labels) == 3
    le = {**labels, "le": "1000000000.0"}
    assert value("pdserve_worker_kv_transfer_bandwidth_bytes_per_second_bucket", le) == 2
    assert value("pdserve_worker_kv_bandwidth_floor_bytes_per_second", labels) == 5e9
