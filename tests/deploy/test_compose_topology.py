"""deploy/gpu/compose_topology.py reads the compose `gpu` profile as compose would: the commands,
environment and GPUs it would run as processes are compose.yaml's (+ the Dockerfile's
ENTRYPOINT/ENV), and what a Docker-less host substitutes is only what it lists."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.deploy.artifacts import DEPLOY, load_compose


def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("compose_topology", DEPLOY / "gpu" / "compose_topology.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


ct = _module()
ENVS = [{}, {"PDSERVE_PREFILL_GPU": "2", "PDSERVE_DECODE_GPU": "3", "PDSERVE_SERVED_MODEL_NAME": "m"}]


@pytest.mark.parametrize("env", ENVS)
def test_plan_is_compose_yaml_with_the_images_entrypoints(env: dict[str, str]) -> None:
    compose = load_compose(env)["services"]
    plan = ct.plan(env)
    assert [s.name for s in plan.services] == ["router", "prefill", "decode"]
    assert plan.service("router").argv == ["python", "-m", "router"]  # the router image's ENTRYPOINT, no command
    assert plan.service("prefill").argv == ["pdserve", "prefill"]  # worker-gpu ENTRYPOINT + compose's command
    assert plan.service("decode").argv == ["pdserve", "decode"]
    for s in plan.services:
        declared = {k: str(v) for k, v in compose[s.name]["environment"].items()}
        assert {k: s.env[k] for k in declared} == declared
    assert plan.service("prefill").gpus == [env.get("PDSERVE_PREFILL_GPU", "0")]
    assert plan.service("decode").gpus == [env.get("PDSERVE_DECODE_GPU", "1")]
    assert plan.service("router").gpus == []
    # The worker-gpu image's ENV travels too (spawn: a forked vLLM engine core hangs on GPUs).
    assert plan.service("decode").env["VLLM_WORKER_MULTIPROC_METHOD"] == "spawn"
    assert plan.service("router").env["PDSERVE_STATE_URL"] == "rediss://redis:6379/0"


@pytest.mark.parametrize("redis_port", [6390, None])
def test_localize_substitutes_only_what_docker_provided(redis_port: int | None) -> None:
    plan = ct.localize(ct.plan({}), "vllm", Path("/m"), Path("/s"), redis_port)
    prefill, decode, router = plan.service("prefill"), plan.service("decode"), plan.service("router")
    assert prefill.argv == [sys.executable, "-m", "pdserve", "prefill", "--engine-arg", "load_format=dummy"]
    assert router.argv[:3] == [sys.executable, "-m", "router"]
    assert (prefill.env["CUDA_VISIBLE_DEVICES"], decode.env["CUDA_VISIBLE_DEVICES"]) == ("0", "1")
    assert prefill.env["PDSERVE_MODEL"] == "/m" and prefill.env["PDSERVE_ADVERTISE"] == "127.0.0.1:50051"
    assert decode.env["PDSERVE_KV_HOST"] == "127.0.0.1" and decode.env["PDSERVE_HOST"] == "127.0.0.1"
    assert router.env["PDSERVE_ROUTER_HOST"] == "127.0.0.1"
    assert decode.env["PDSERVE_KV_PORT"] == "5601" and decode.env["PDSERVE_BLOCK_SIZE"] == "128"  # kept
    if redis_port is None:
        assert "PDSERVE_STATE_URL" not in router.env and "PDSERVE_STATE_TLS_CA" not in prefill.env
        assert router.argv[3:] == ["--prefill", "127.0.0.1:50051", "--decode", "127.0.0.1:50052"]
    else:
        assert router.env["PDSERVE_STATE_URL"] == "rediss://127.0.0.1:6390/0"
        assert prefill.env["PDSERVE_STATE_PASSWORD_FILE"] == "/s/redis_password"
        assert prefill.env["PDSERVE_STATE_TLS_CA"] == "/s/redis-ca.crt"
        assert router.argv[3:] == []
    assert len(plan.substitutions) == 8


def test_sim_mode_is_the_compose_sim_profiles_engine_on_the_gpu_topology() -> None:
    plan = ct.localize(ct.plan({}), "sim", Path("/m"), Path("/s"), None)
    for name in ("prefill", "decode"):
        s = plan.service(name)
        assert s.env["PDSERVE_ENGINE"] == "sim" and "CUDA_VISIBLE_DEVICES" not in s.env
        assert s.argv[4:6] == ["--profile", "llama-3.1-8b-h200"]
