"""The router's app as one process serves it: store, fleet, placement and service built in
the lifespan, behind the FastAPI app (router/api/app.py); and uvicorn's settings for it.
``python -m router`` runs one such process, or ``--workers`` of them (router/processes.py)."""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import logging
import socket
from collections.abc import AsyncIterator, Awaitable
from types import FrameType

import uvicorn
from fastapi import FastAPI

from pdserve import heap
from pdserve.security import redact_url
from pdserve.state import StateStore, make_store
from pdserve.state.fallback import FallbackStore
from pdserve.state.trust import RegistryTrust
from router import config
from router.admission import Admission
from router.api.app import create_app
from router.fleet import Fleet, FleetOptions, TokenizerSource
from router.metrics import RouterMetrics
from router.orchestrator import Orchestrator
from router.placement import make_policy
from router.placement.deciders import make_decider
from router.placer import Placer
from router.service import Background, RouterService

log = logging.getLogger("router")
STOP_STACKS_S = 20.0  # a stop still running this long writes every thread's stack to stderr
CLOSE_STEP_S = 10.0  # each step of the lifespan's close is cut off after this


class Server(uvicorn.Server):
    """uvicorn's server, telling where a slow stop waits: past ``stop_stacks_s`` after the
    first stop signal every thread's stack goes to stderr (the log), so a router that an
    orchestrator must SIGKILL has said why. The stop itself is uvicorn's: connections get
    ``timeout_graceful_shutdown``, then the lifespan closes, each step bounded."""

    stop_stacks_s = STOP_STACKS_S

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit:  # no logging here: a signal handler may interrupt a log call
            faulthandler.dump_traceback_later(self.stop_stacks_s, exit=False)
        super().handle_exit(sig, frame)


async def close_bounded(what: str, step: Awaitable[None], timeout_s: float = CLOSE_STEP_S) -> None:
    """Await one step of a stop, cut off (and said) after ``timeout_s``: a stop must end."""
    try:
        await asyncio.wait_for(step, timeout_s)
    except TimeoutError:
        log.error("stopping: closing the %s took over %.0f s; cut off", what, timeout_s)


def build_store(cfg: config.RouterConfig, metrics: RouterMetrics) -> tuple[StateStore, bool]:
    """(store, whether this router follows the workers' KV events itself)."""
    store = make_store(cfg.state_url, namespace=cfg.state_namespace, password=cfg.state_password, tls=cfg.state_tls)
    if cfg.state_url.startswith("memory"):
        return store, True
    if not cfg.registry_secrets:
        log.warning(
            "NO REGISTRY SECRET: this router dials every valid record in %s, so anyone who can write there "
            "can receive requests and the worker token. Set PDSERVE_REGISTRY_SECRET or --registry-secret-file "
            "(routers and workers alike) outside local development.",
            redact_url(cfg.state_url),
        )
    fallback = FallbackStore(
        store, on_change=metrics.store_available, on_error=metrics.store_failed, on_call=metrics.store_called
    )
    return fallback, False


async def build_service(
    cfg: config.RouterConfig, metrics_dir: str | None = None
) -> tuple[RouterService, Fleet, StateStore]:
    """Connect to the configured and registered workers; build pools, placement, service.
    ``metrics_dir``: Prometheus' multiprocess directory the ``--workers`` processes share."""
    metrics = RouterMetrics(cfg.policy, metrics_dir)
    store, follow_events = build_store(cfg, metrics)
    fleet = Fleet(
        store,
        TokenizerSource(cfg.tokenizers, cfg.model_dir, cfg.generation_config),
        FleetOptions(
            follow_events=follow_events,
            link=cfg.link,
            trust=RegistryTrust(cfg.registry_secrets),
            reasoning_parser=cfg.reasoning_parser,
            outliers=cfg.outliers,
        ),
        metrics,
    )
    await fleet.add_static(list(cfg.prefill), list(cfg.decode), cfg.startup_timeout_s)
    await fleet.refresh()
    fleet.start()
    for pool in fleet.pools.values():
        log.info("model %s: %d prefill, %d decode worker(s)", pool.name, len(pool.prefill), len(pool.decode))
    decider = make_decider(cfg.disagg_decider, cfg.decider_options)
    placer = Placer(make_policy(cfg.policy, cfg.weights), decider, store, cfg.predict_ttl_s)
    orchestrator = Orchestrator(placer, cfg.timeouts, metrics, cfg.recovery)
    admission = Admission(cfg.admission, store)

    def background() -> Background:
        if isinstance(store, FallbackStore):
            return Background(fleet.loops_down(), store.up, store.down_kind)
        return Background(fleet.loops_down())

    return RouterService(fleet.pools, orchestrator, metrics, admission, background), fleet, store


def make_app(cfg: config.RouterConfig, metrics_dir: str | None = None) -> FastAPI:
    holder: dict[str, RouterService] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service, fleet, store = await build_service(cfg, metrics_dir)
        heap.freeze("start-up")  # as vLLM's server: full collections then skip the start-up heap
        holder["service"] = service
        state = redact_url(cfg.state_url)
        log.info("router ready on http://%s:%d/v1 (policy %s, state %s)", cfg.host, cfg.port, cfg.policy, state)
        try:
            yield
        finally:
            await close_bounded("fleet", fleet.close())
            await close_bounded("state store", store.close())
            service.close()

    return create_app(
        lambda: holder["service"],
        lifespan,
        cfg.tenants.keys,
        max_body_bytes=cfg.max_body_bytes,
        chat=cfg.chat,
        cache_salts=cfg.tenants.salts,
        prompt_chars_per_token=cfg.prompt_chars_per_token,
    )


def http_parser() -> str:
    """httptools (a dependency) when it imports; else uvicorn's pure-Python h11, said loudly:
    uvicorn would fall back silently, and the router would spend more CPU on every request."""
    try:
        import httptools  # noqa: F401
    except ImportError:
        log.warning("httptools is not installed: HTTP is parsed by h11 (pure Python), slower per request")
        return "h11"
    return "httptools"


def uvicorn_config(app: FastAPI, cfg: config.RouterConfig) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=cfg.host,
        port=cfg.port,
        log_level=cfg.log_level.lower(),
        loop="auto",
        http=http_parser(),
        timeout_graceful_shutdown=30,
        # uvicorn's default (5 s) equals httpx's idle expiry: a client reusing a connection
        # just as the server closes it gets a connection error for a request never read.
        timeout_keep_alive=cfg.keep_alive_s,
    )


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` with ``SO_REUSEPORT``: each ``--workers`` process binds
    its own and the kernel spreads new connections across them (one shared socket would wake
    every process per connection and hand most to whichever is idlest at the time). Only
    processes of the same user can join the group. uvicorn listens on it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock
