"""Tensor parallelism needs nothing of pdserve's own (issue #18): ``--engine-arg
tensor_parallel_size=N`` (or vLLM's spelling) reaches ``AsyncEngineArgs`` as an int, beside
the NIXL role and worker extension. A worker keeps its one ``--kv-port``: vLLM 0.26's NIXL
side-channel listener serves every TP rank's metadata on the engine's one port
(docs/BENCHMARKS.md §11c)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pdserve.engine.config import EngineConfig, parse_engine_arg, passthrough_engine_args

compat = pytest.importorskip("pdserve.engine.vllm_compat")


def test_tensor_parallel_size_parses_as_an_int_in_either_spelling() -> None:
    assert parse_engine_arg("tensor_parallel_size=2") == ("tensor_parallel_size", 2)
    assert passthrough_engine_args(["--tensor-parallel-size", "2"]) == {"tensor_parallel_size": 2}


@pytest.mark.parametrize("role", ["prefill", "decode"])
def test_it_reaches_the_engine_args_beside_the_nixl_role(default_model: Path, role: str) -> None:
    cfg = EngineConfig(model=str(default_model), engine_args={"tensor_parallel_size": 2})
    args = compat.engine_args(cfg, role)
    assert args.tensor_parallel_size == 2
    assert args.kv_transfer_config is not None
    assert args.kv_transfer_config.kv_role == compat.KV_ROLES[role]
    assert args.worker_extension_cls == compat.NIXL_WORKER_EXTENSION  # loaded in every TP worker process
    assert args.block_size == cfg.block_size
