"""A worker's ``--reasoning-parser`` reaches its vLLM engine as ``vllm serve``'s does: in the
structured-outputs config, so grammars (response formats, forced tool calls) wait for the
end of reasoning; the worker reports it, and a router whose parser differs says so."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from pdserve.engine.base import EngineInfo
from pdserve.engine.config import EngineConfig
from pdserve.rpc.convert import info_from_pb, info_to_pb

compat = pytest.importorskip("pdserve.engine.vllm_compat")


def test_the_reasoning_parser_reaches_the_engines_grammar_config(default_model: Path) -> None:
    cfg = EngineConfig(model=str(default_model), reasoning_parser="qwen3", kv_connector="none")
    engine = compat.engine_args(cfg, "decode").create_engine_config()
    assert engine.structured_outputs_config.reasoning_parser == "qwen3"
    plain = compat.engine_args(EngineConfig(model=str(default_model), kv_connector="none"), "decode")
    assert plain.create_engine_config().structured_outputs_config.reasoning_parser == ""


def test_workers_report_it_and_the_router_warns_on_a_mismatch(caplog: pytest.LogCaptureFixture) -> None:
    from router.fleet import Fleet, FleetOptions

    info = EngineInfo("decode", "m", 16, "0.32", 1024, 2048, "vllm", reasoning_parser="qwen3")
    assert info_from_pb(info_to_pb(info)).reasoning_parser == "qwen3"
    fleet = Fleet.__new__(Fleet)
    for router_parser, warned in (("qwen3", False), ("", True)):
        fleet._options = FleetOptions(reasoning_parser=router_parser)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="router.fleet"):
            fleet._warn_on_grammar_gating("127.0.0.1:1", info)
        assert any("reasoning parser" in r.message for r in caplog.records) == warned


def test_reasoning_ended_crosses_the_wire_and_reaches_vllms_generate() -> None:
    from pdserve.engine.base import SamplingSpec
    from pdserve.rpc.convert import sampling_from_pb, sampling_to_pb

    for ended in (None, True, False):
        spec = SamplingSpec(reasoning_ended=ended)
        assert sampling_from_pb(sampling_to_pb(spec)).reasoning_ended is ended
        assert compat.reasoning(spec) == ({} if ended is None else {"reasoning_ended": ended})
