"""Each service's flags build its frozen config; bad values name the field."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import pytest

import decode_worker.__main__ as decode_main
import decode_worker.config as decode_config
import prefill_worker.config as prefill_config
import router.config as router_config
from pdserve.engine.config import EngineConfig
from router.fleet import TokenizerSource
from router.tokenizer import TokenIdsOnly


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


def test_a_worker_without_a_model_names_the_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PDSERVE_MODEL", raising=False)  # the runtime never converts a default model
    with pytest.raises(ValueError, match="--model"):
        prefill_config.from_args(["--engine", "sim"])


def test_a_router_without_a_tokenizer_names_the_flag(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No --model: tokenizers come from --tokenizer or the directories workers report; a
    model with neither is refused naming the flag, and nothing converts a default model."""
    monkeypatch.delenv("PDSERVE_MODEL", raising=False)
    cfg = router_config.from_args(["--decode", "d:1", "--tokenizer", f"m={model_dir}"])
    assert cfg.tokenizers == {"m": str(model_dir)} and cfg.model_dir == ""
    (model_dir / "config.json").write_text('{"vocab_size": 100}')  # a directory that ships no tokenizer
    source = TokenizerSource(cfg.tokenizers, cfg.model_dir)
    assert source.get("m", "") is source.get("m", "/elsewhere")  # --tokenizer wins, loaded once
    reported = source.get("reported", str(model_dir))  # else the directory its workers report
    assert isinstance(reported, TokenIdsOnly) and reported.vocab_size == 100
    with pytest.raises(ValueError, match="--tokenizer other=DIR"):
        source.get("other", "/not/on/this/host")
    assert router_config.from_args(["--decode", "d:1"]).model_dir == ""  # starts; workers may report one


def test_a_bad_value_exits_2_naming_field_and_flag(model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        decode_main.main(["--model", str(model_dir), "--port", "x"])
    assert exit_.value.code == 2
    assert "pdserve decode: error: port (--port): invalid int value 'x'" in capsys.readouterr().err


def test_worker_env_bools_parse_strictly(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    argv = ["--model", str(model_dir)]
    assert decode_config.from_args(argv).engine.enforce_eager is True
    assert decode_config.from_args([*argv, "--no-enforce-eager"]).engine.enforce_eager is False
    monkeypatch.setenv("PDSERVE_ENFORCE_EAGER", "0")
    assert decode_config.from_args(argv).engine.enforce_eager is False
    monkeypatch.setenv("PDSERVE_ENFORCE_EAGER", "maybe")
    with pytest.raises(ValueError, match="enforce_eager"):
        decode_config.from_args(argv)


# Every flag and its env variable as the CLIs had them before pdserve.flags (deploy/ and tests use them).
WORKER_FLAGS = {
    "--host": "PDSERVE_HOST",
    "--port": "PDSERVE_PORT",
    "--metrics-port": "PDSERVE_METRICS_PORT",
    "--token-file": "PDSERVE_WORKER_TOKEN_FILE",
    "--tls-cert": "PDSERVE_TLS_CERT",
    "--tls-key": "PDSERVE_TLS_KEY",
    "--tls-ca": "PDSERVE_TLS_CA",
    "--grace": "PDSERVE_GRACE_S",
    "--startup-timeout": "PDSERVE_STARTUP_TIMEOUT_S",
    "--log-level": "PDSERVE_LOG_LEVEL",
    "--model": "PDSERVE_MODEL",
    "--served-model-name": "PDSERVE_SERVED_MODEL_NAME",
    "--engine": "PDSERVE_ENGINE",
    "--block-size": "PDSERVE_BLOCK_SIZE",
    "--max-model-len": "PDSERVE_MAX_MODEL_LEN",
    "--dtype": "PDSERVE_DTYPE",
    "--kv-cache-gib": "PDSERVE_KV_CACHE_GIB",
    "--no-enforce-eager": "PDSERVE_ENFORCE_EAGER",
    "--kv-connector": "PDSERVE_KV_CONNECTOR",
    "--kv-host": "PDSERVE_KV_HOST",
    "--kv-port": "PDSERVE_KV_PORT",
    "--kv-events-port": "PDSERVE_KV_EVENTS_PORT",
    "--kv-lease-s": "PDSERVE_KV_LEASE_S",
    "--kv-bandwidth-floor": "PDSERVE_KV_BANDWIDTH_FLOOR",
    "--kv-ucx-error-handling": "PDSERVE_KV_UCX_ERROR_HANDLING",
    "--reasoning-parser": "PDSERVE_REASONING_PARSER",
    "--engine-arg": "",
    "--state-url": "PDSERVE_STATE_URL",
    "--advertise": "PDSERVE_ADVERTISE",
    "--heartbeat-ttl": "PDSERVE_HEARTBEAT_TTL_S",
    "--state-namespace": "PDSERVE_STATE_NAMESPACE",
    "--registry-secret-file": "PDSERVE_REGISTRY_SECRET_FILE",
    "--state-password-file": "PDSERVE_STATE_PASSWORD_FILE",
    "--state-tls-ca": "PDSERVE_STATE_TLS_CA",
    "--state-tls-cert": "PDSERVE_STATE_TLS_CERT",
    "--state-tls-key": "PDSERVE_STATE_TLS_KEY",
}
ROUTER_FLAGS = {
    "--host": "PDSERVE_ROUTER_HOST",
    "--port": "PDSERVE_ROUTER_PORT",
    "--prefill": "PDSERVE_PREFILL",
    "--decode": "PDSERVE_DECODE",
    "--model": "PDSERVE_MODEL",
    "--generation-config": "PDSERVE_GENERATION_CONFIG",
    "--policy": "PDSERVE_POLICY",
    "--startup-timeout": "PDSERVE_STARTUP_TIMEOUT_S",
    "--request-timeout": "PDSERVE_REQUEST_TIMEOUT_S",
    "--weights": "PDSERVE_WEIGHTS",
    "--state-url": "PDSERVE_STATE_URL",
    "--state-namespace": "PDSERVE_STATE_NAMESPACE",
    "--state-password-file": "PDSERVE_STATE_PASSWORD_FILE",
    "--state-tls-ca": "PDSERVE_STATE_TLS_CA",
    "--state-tls-cert": "PDSERVE_STATE_TLS_CERT",
    "--state-tls-key": "PDSERVE_STATE_TLS_KEY",
    "--tokenizer": "",
    "--disagg-min-tokens": "PDSERVE_DISAGG_MIN_TOKENS",
    "--disagg-decider": "PDSERVE_DISAGG_DECIDER",
    "--disagg-stall-weight": "PDSERVE_DISAGG_STALL_WEIGHT",
    "--disagg-probe-s": "PDSERVE_DISAGG_PROBE_S",
    "--disagg-ttft-target": "PDSERVE_DISAGG_TTFT_TARGET_S",
    "--disagg-tpot-target": "PDSERVE_DISAGG_TPOT_TARGET_S",
    "--prefill-saturated-waiting": "PDSERVE_PREFILL_SATURATED_WAITING",
    "--prefill-retries": "PDSERVE_PREFILL_RETRIES",
    "--decode-retries": "PDSERVE_DECODE_RETRIES",
    "--migrations": "PDSERVE_MIGRATIONS",
    "--retry-budget": "PDSERVE_RETRY_BUDGET",
    "--min-retries": "PDSERVE_MIN_RETRIES",
    "--prefill-timeout": "PDSERVE_PREFILL_TIMEOUT_S",
    "--first-token-timeout": "PDSERVE_FIRST_TOKEN_TIMEOUT_S",
    "--stall-timeout": "PDSERVE_STALL_TIMEOUT_S",
    "--eject-after-errors": "PDSERVE_EJECT_AFTER_ERRORS",
    "--eject-after-timeouts": "PDSERVE_EJECT_AFTER_TIMEOUTS",
    "--ejection-time": "PDSERVE_EJECTION_TIME_S",
    "--max-ejection-time": "PDSERVE_MAX_EJECTION_TIME_S",
    "--max-ejected-share": "PDSERVE_MAX_EJECTED_SHARE",
    "--probe-timeout": "PDSERVE_PROBE_TIMEOUT_S",
    "--max-inflight": "PDSERVE_MAX_INFLIGHT",
    "--max-queued": "PDSERVE_MAX_QUEUED",
    "--queue-timeout": "PDSERVE_QUEUE_TIMEOUT_S",
    "--rate-limit-rpm": "PDSERVE_RATE_LIMIT_RPM",
    "--rate-limit-tpm": "PDSERVE_RATE_LIMIT_TPM",
    "--max-body-bytes": "PDSERVE_MAX_BODY_BYTES",
    "--prompt-chars-per-token": "PDSERVE_PROMPT_CHARS_PER_TOKEN",
    "--cache-salt-per-key": "PDSERVE_CACHE_SALT_PER_KEY",
    "--max-inflight-per-key": "PDSERVE_MAX_INFLIGHT_PER_KEY",
    "--keep-alive-s": "PDSERVE_KEEP_ALIVE_S",
    "--workers": "PDSERVE_ROUTER_WORKERS",
    "--chat-template": "PDSERVE_CHAT_TEMPLATE",
    "--trust-request-chat-template": "PDSERVE_TRUST_REQUEST_CHAT_TEMPLATE",
    "--chat-template-content-format": "PDSERVE_CHAT_TEMPLATE_CONTENT_FORMAT",
    "--reasoning-parser": "PDSERVE_REASONING_PARSER",
    "--tool-call-parser": "PDSERVE_TOOL_CALL_PARSER",
    "--enable-auto-tool-choice": "PDSERVE_ENABLE_AUTO_TOOL_CHOICE",
    "--tool-strict-level": "PDSERVE_TOOL_STRICT_LEVEL",
    "--api-keys-file": "PDSERVE_API_KEYS_FILE",
    "--worker-token-file": "PDSERVE_WORKER_TOKEN_FILE",
    "--registry-secret-file": "PDSERVE_REGISTRY_SECRET_FILE",
    "--worker-tls-cert": "PDSERVE_WORKER_TLS_CERT",
    "--worker-tls-key": "PDSERVE_WORKER_TLS_KEY",
    "--worker-tls-ca": "PDSERVE_WORKER_TLS_CA",
    "--log-level": "PDSERVE_LOG_LEVEL",
}


@pytest.mark.parametrize(
    "parser,expected",
    [(prefill_config.parser, WORKER_FLAGS), (decode_config.parser, WORKER_FLAGS), (router_config.parser, ROUTER_FLAGS)],
)
def test_flag_and_env_names_are_unchanged_and_help_shows_env_and_default(
    parser: Callable[[], argparse.ArgumentParser], expected: dict[str, str]
) -> None:
    actions = {a.option_strings[0]: a.help or "" for a in parser()._actions if a.option_strings[0] != "-h"}
    assert set(actions) == set(expected)
    for option, env in expected.items():
        assert f"[{env}" in actions[option] if env else "[" in actions[option], option
        assert "default: " in actions[option] or "; required]" in actions[option], option


def test_role_defaults_show_in_help() -> None:
    def help_of(parser: argparse.ArgumentParser, option: str) -> str:
        return next(a.help or "" for a in parser._actions if option in a.option_strings)

    assert help_of(prefill_config.parser(), "--port").endswith("[PDSERVE_PORT; default: 50051]")
    assert help_of(decode_config.parser(), "--port").endswith("[PDSERVE_PORT; default: 50052]")
    assert help_of(decode_config.parser(), "--kv-events-port").endswith("default: 5567]")


def test_a_prefill_rpc_deadline_never_exceeds_the_requests(model_dir: Path) -> None:
    base = ["--model", str(model_dir), "--decode", "d:1"]
    assert router_config.from_args(base).timeouts.prefill_s == 60
    cfg = router_config.from_args([*base, "--request-timeout", "20"])
    assert cfg.timeouts.request_s == 20 and cfg.timeouts.prefill_s == 20
    cfg = router_config.from_args([*base, "--prefill-timeout", "5", "--stall-timeout", "2", "--max-ejected-share", "1"])
    assert (cfg.timeouts.prefill_s, cfg.timeouts.stall_s, cfg.outliers.max_share) == (5, 2, 1)


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
    assert default.max_body_bytes == 8 << 20  # 8 MiB, as the README says
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
    with pytest.raises(ValueError, match="keep_alive_s"):
        router_config.from_args([*base, "--keep-alive-s", "0"])
    with pytest.raises(ValueError, match="workers"):
        router_config.from_args([*base, "--workers", "0"])


def test_router_processes_refuse_per_minute_limits_each_would_count_alone(model_dir: Path) -> None:
    base = ["--model", str(model_dir), "--decode", "d:1", "--workers", "2"]
    assert router_config.from_args(base).workers == 2
    with pytest.raises(ValueError, match="workers: per-minute rate limits"):
        router_config.from_args([*base, "--rate-limit-rpm", "60"])
    shared = router_config.from_args([*base, "--rate-limit-tpm", "600", "--state-url", "redis://r:6379"])
    assert shared.workers == 2 and shared.admission.tokens_per_minute == 600


def test_a_state_namespace_is_a_plain_key_prefix(model_dir: Path) -> None:
    base = ["--model", str(model_dir), "--decode", "d:1"]
    assert router_config.from_args([*base, "--state-namespace", "prod-eu.1"]).state_namespace == "prod-eu.1"
    with pytest.raises(ValueError, match="state_namespace"):
        router_config.from_args([*base, "--state-namespace", "a:b"])
    with pytest.raises(ValueError, match="state_namespace"):
        prefill_config.from_args(["--model", str(model_dir), "--state-namespace", "has space"])


def test_state_tls_files_need_a_rediss_url_and_exist(model_dir: Path, tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("PEM")
    base = ["--model", str(model_dir), "--decode", "d:1"]
    cfg = router_config.from_args([*base, "--state-url", "rediss://r:6379/0", "--state-tls-ca", str(ca)])
    assert cfg.state_tls.ca == str(ca) and not cfg.state_tls.cert
    with pytest.raises(ValueError, match=r"state_tls_ca.*rediss://"):  # TLS files with a plaintext URL
        router_config.from_args([*base, "--state-url", "redis://r:6379/0", "--state-tls-ca", str(ca)])
    with pytest.raises(ValueError, match="state_tls_ca"):
        router_config.from_args([*base, "--state-url", "rediss://r:6379/0", "--state-tls-ca", str(tmp_path / "no")])
    worker = ["--model", str(model_dir), "--state-url", "rediss://r:6379/0"]
    with pytest.raises(ValueError, match="state_tls: give both"):
        decode_config.from_args([*worker, "--state-tls-cert", str(ca)])
