"""Each service's flags build its frozen config; bad values name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

import decode_worker.config as decode_config
import prefill_worker.config as prefill_config
import router.config as router_config
from pdserve.engine.config import EngineConfig


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    (tmp_path / "config.json").write_text("{}")
    return tmp_path


def test_prefill_flags(model_dir: Path) -> None:
    cfg = prefill_config.from_args(
        [
            "--model",
            str(model_dir),
            "--port",
            "7001",
            "--kv-port",
            "7002",
            "--engine-arg",
            "load_format=dummy",
            "--engine-arg",
            "gpu_memory_utilization=0.5",
            "--startup-timeout",
            "60",
            "--grace",
            "5",
        ]
    )
    assert cfg.server.port == 7001 and cfg.server.grace_s == 5 and cfg.server.startup_timeout_s == 60
    assert cfg.engine.kv_port == 7002 and cfg.engine.served_model_name == model_dir.name
    assert cfg.engine.engine_args == {"load_format": "dummy", "gpu_memory_utilization": 0.5}


def test_decode_defaults_differ_from_prefill_so_both_fit_on_one_host(model_dir: Path) -> None:
    d = decode_config.from_args(["--model", str(model_dir)])
    p = prefill_config.from_args(["--model", str(model_dir)])
    assert d.server.port != p.server.port and d.engine.kv_port != p.engine.kv_port


def test_env_fallbacks(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PDSERVE_MODEL", str(model_dir))
    monkeypatch.setenv("PDSERVE_BLOCK_SIZE", "64")
    monkeypatch.setenv("PDSERVE_KV_CONNECTOR", "none")
    cfg = decode_config.from_args([])
    assert cfg.engine.block_size == 64 and cfg.engine.kv_connector == "none"


def test_router_flags(model_dir: Path) -> None:
    cfg = router_config.from_args(
        [
            "--model",
            str(model_dir),
            "--prefill",
            "a:1,b:2",
            "--decode",
            "c:3",
            "--decode",
            "d:4",
            "--policy",
            "round-robin",
        ]
    )
    assert cfg.prefill == ("a:1", "b:2") and cfg.decode == ("c:3", "d:4") and cfg.policy == "round-robin"


@pytest.mark.parametrize(
    "bad,field",
    [({"block_size": 0}, "block_size"), ({"kv_port": 70000}, "kv_port"), ({"kv_connector": "p2p"}, "kv_connector")],
)
def test_bad_engine_config_names_the_field(bad: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        EngineConfig(model="m", served_model_name="m", **bad)


def test_router_needs_a_decode_worker_and_valid_addresses(model_dir: Path) -> None:
    with pytest.raises(ValueError, match="decode"):
        router_config.from_args(["--model", str(model_dir)])
    with pytest.raises(ValueError, match="host:port"):
        router_config.from_args(["--model", str(model_dir), "--decode", "nohostport"])


def test_not_a_model_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="model"):
        prefill_config.from_args(["--model", str(tmp_path)])


def test_unknown_flags_pass_through_to_vllm_in_its_spelling(model_dir: Path) -> None:
    cfg = decode_config.from_args(
        [
            "--model",
            str(model_dir),
            "--load-format",
            "dummy",
            "--gpu-memory-utilization=0.8",
            "--enable-chunked-prefill",
            "--kv-cache-memory-bytes",
            "null",
            "--port",
            "9",
        ]
    )
    assert cfg.server.port == 9
    assert cfg.engine.engine_args == {
        "load_format": "dummy",
        "gpu_memory_utilization": 0.8,
        "enable_chunked_prefill": True,
        "kv_cache_memory_bytes": None,
    }


def test_stray_positional_argument_is_rejected(model_dir: Path) -> None:
    with pytest.raises(ValueError, match="unexpected"):
        prefill_config.from_args(["--model", str(model_dir), "oops"])


def test_kv_lease_flag_env_and_default(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PDSERVE_KV_LEASE_S", raising=False)
    assert prefill_config.from_args(["--model", str(model_dir)]).engine.kv_lease_s is None  # vLLM's default
    assert prefill_config.from_args(["--model", str(model_dir), "--kv-lease-s", "12"]).engine.kv_lease_s == 12
    monkeypatch.setenv("PDSERVE_KV_LEASE_S", "7")
    assert decode_config.from_args(["--model", str(model_dir)]).engine.kv_lease_s == 7
    assert decode_config.from_args(["--model", str(model_dir), "--kv-lease-s=9"]).engine.kv_lease_s == 9
    with pytest.raises(ValueError, match="kv_lease_s"):
        prefill_config.from_args(["--model", str(model_dir), "--kv-lease-s", "0"])


def test_router_admission_flags_and_env(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = ["--model", str(model_dir), "--decode", "d:1"]
    default = router_config.from_args(base)
    assert (default.admission.max_inflight, default.admission.requests_per_minute) == (512, 0)
    assert default.max_body_bytes == 8 << 20
    monkeypatch.setenv("PDSERVE_RATE_LIMIT_TPM", "5000")
    cfg = router_config.from_args(
        [*base, "--max-inflight", "4", "--max-queued", "2", "--queue-timeout", "1.5", "--rate-limit-rpm", "60"]
    )
    assert cfg.admission.max_inflight == 4 and cfg.admission.max_queued == 2
    assert cfg.admission.queue_timeout_s == 1.5 and cfg.admission.requests_per_minute == 60
    assert cfg.admission.tokens_per_minute == 5000
    with pytest.raises(ValueError, match="requests_per_minute"):
        router_config.from_args([*base, "--rate-limit-rpm", "-1"])
    with pytest.raises(ValueError, match="max_body_bytes"):
        router_config.from_args([*base, "--max-body-bytes", "0"])
