"""A decode worker's ``--stream-interval N`` (vLLM's own flag, passed through as an engine
argument) reaches its vLLM engine's scheduler config, where vLLM's output processor holds a
stream's tokens back to N a message (the sim does the same: tests/unit/test_sim_engine.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from decode_worker.config import from_args

compat = pytest.importorskip("pdserve.engine.vllm_compat")


def test_the_flag_reaches_the_engines_scheduler_config(default_model: Path) -> None:
    argv = ["--model", str(default_model), "--kv-connector", "none", "--stream-interval", "4"]
    cfg = from_args(argv)
    assert cfg.engine.engine_args == {"stream_interval": 4}
    engine = compat.engine_args(cfg.engine, "decode").create_engine_config()
    assert engine.scheduler_config.stream_interval == 4
    plain = from_args(["--model", str(default_model), "--kv-connector", "none"])
    assert compat.engine_args(plain.engine, "decode").create_engine_config().scheduler_config.stream_interval == 1
