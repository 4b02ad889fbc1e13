"""Loaded by vLLM inside the engine's worker process (``worker_extension_cls``).

NIXL's Python agent (``nixl._api.nixl_agent``, nixl 1.5) hard-codes
``pthrDelay = 0`` for its progress thread, so UCX's ``nixlUcxSharedThread``
polls without ever sleeping: an idle engine burns a whole core (measured:
~100 % of a core per idle decode engine, ~4 % with the delay below). vLLM's
NIXL connector creates the agent in the worker process, and vLLM imports this
module there (``WorkerWrapperBase.init_worker``) before the KV connector is set
up, so patching the binding's agent constructor here reaches that agent.

The same patch passes NIXL's UCX backend the ``ucx_error_handling_mode`` the worker
was started with (``--kv-ucx-error-handling``, exported as ``PDSERVE_UCX_ERROR_HANDLING``):
neither NIXL's ``nixl_agent_config`` nor vLLM's connector can. With the default,
``peer``, UCX needs a transport that reports a dead peer; without InfiniBand only TCP
does, so two engines on one host read each other's GPU memory through tcp/lo emulation
(~0.5 GB/s, docs/BENCHMARKS.md §4f); ``none`` lets UCX wire it over shared memory instead
(measured on one GPU, the second run of §4f: still emulated, ~10 % faster; cuda_ipc not chosen).
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

# How long the progress thread may sleep when it finds nothing to do, in
# microseconds (the unit of nixlAgentConfig.pthrDelay; lthrDelay is 100 ms).
# 1 ms bounds the extra latency of a KV pull's progress while idling at a few %.
PROGRESS_DELAY_US = 1000

UCX_ERROR_HANDLING_ENV = "PDSERVE_UCX_ERROR_HANDLING"
UCX_ERROR_HANDLING_PARAM = "ucx_error_handling_mode"  # NIXL 1.5 UCX plugin: "peer" (its default) or "none"


class NixlIdleExtension:
    """The class vLLM mixes into its worker; importing this module is its whole effect."""


def _with_progress_delay(make_agent: Callable[..., Any], delay_us: int) -> Callable[..., Any]:
    @functools.wraps(make_agent)
    def make(name: str, config: Any, *args: Any, **kwargs: Any) -> Any:
        if config.useProgThread and config.pthrDelay < delay_us:
            config.pthrDelay = delay_us
        return make_agent(name, config, *args, **kwargs)

    make.pdserve_delay_us = delay_us  # type: ignore[attr-defined]  # marks the binding as patched
    return make


def _with_ucx_error_handling(create_backend: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(create_backend)
    def create(self: Any, backend: str, init_params: dict[str, str] | None = None) -> Any:
        params = dict(init_params or {})
        mode = os.environ.get(UCX_ERROR_HANDLING_ENV, "")
        if backend == "UCX" and mode not in ("", "peer") and UCX_ERROR_HANDLING_PARAM not in params:
            params[UCX_ERROR_HANDLING_PARAM] = mode
            log.info("NIXL UCX backend: %s=%s", UCX_ERROR_HANDLING_PARAM, mode)
        return create_backend(self, backend, params)

    create.pdserve_ucx_error_handling = True  # type: ignore[attr-defined]  # marks the method as patched
    return create


def patch_nixl(delay_us: int = PROGRESS_DELAY_US, agent_cls: type | None = None) -> bool:
    """Give every NIXL agent created from now on a progress-thread delay, and its UCX
    backend the error-handling mode in ``PDSERVE_UCX_ERROR_HANDLING`` (when set); False
    when NIXL is not installed (then there is no agent to patch). ``agent_cls``: NIXL's
    agent class (default: the one vLLM imports)."""
    agent_cls = agent_cls or _nixl_agent_class()
    if agent_cls is None:
        return False
    create_backend = getattr(agent_cls, "create_backend")  # noqa: B009  # NIXL's class, untyped here
    if not getattr(create_backend, "pdserve_ucx_error_handling", False):
        setattr(agent_cls, "create_backend", _with_ucx_error_handling(create_backend))  # noqa: B010
    bindings = sys.modules[agent_cls.__module__].nixlBind  # what ``nixl_agent.__init__`` builds its agent from
    if getattr(bindings.nixlAgent, "pdserve_delay_us", None) != delay_us:
        original = getattr(bindings.nixlAgent, "__wrapped__", bindings.nixlAgent)
        bindings.nixlAgent = _with_progress_delay(original, delay_us)
    log.debug("NIXL progress thread delay: %d us", delay_us)
    return True


def _nixl_agent_class() -> type | None:
    """NIXL's agent class, imported the way vLLM imports it: vLLM sets UCX variables
    before the first NIXL import (a UCX cache leak workaround) and cannot once NIXL is in."""
    try:
        from vllm.distributed.nixl_utils import NixlWrapper  # vLLM 0.32
    except ImportError:  # older releases import nixl._api directly
        try:
            NixlWrapper = importlib.import_module("nixl._api").nixl_agent
        except ImportError:
            return None
    return NixlWrapper if isinstance(NixlWrapper, type) else None  # vLLM: None when NIXL is absent


patch_nixl()
