"""Worker gRPC server lifecycle: start, health, graceful drain, engine-death exit.

One ``RpcGate`` per worker counts in-flight RPCs and refuses new ones once a
drain starts. ``run_worker`` owns the order of start-up and shut-down:
engine up → server up → SERVING; SIGTERM → NOT_SERVING → wait for in-flight
RPCs (bounded by the grace period) → server stop → engine shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from pdserve import heap
from pdserve.engine.base import DecodeEngine, EngineDeadError, PrefillEngine
from pdserve.flags import flag
from pdserve.security import TlsFiles, TokenInterceptor, read_secrets
from pdserve.types import WorkerId
from pdserve.worker.errors import DrainingError
from pdserve.worker.metrics import WorkerMetrics
from pdserve.worker.registration import Registration, RegistrationOptions

log = logging.getLogger(__name__)

ENGINE_WATCH_INTERVAL_S = 2.0


class RpcGate:
    """Counts in-flight RPCs; refuses new ones while draining. Single event loop."""

    def __init__(self) -> None:
        self.draining = False
        self.inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        if self.draining:
            raise DrainingError
        self.inflight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.inflight -= 1
            if self.inflight == 0:
                self._idle.set()

    async def drain(self, grace_s: float) -> bool:
        """Stop admitting; True if every in-flight RPC finished within grace_s."""
        self.draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), grace_s)
            return True
        except TimeoutError:
            return False


@dataclass(frozen=True)
class ServerOptions:
    """The gRPC server of a worker; each field but the last two is also its flag."""

    host: str = flag("127.0.0.1", env="PDSERVE_HOST", help="address to listen on")
    port: int = flag(0, env="PDSERVE_PORT", help="port to listen on; 0 picks a free one")
    metrics_port: int = flag(0, env="PDSERVE_METRICS_PORT", help="Prometheus /metrics port; 0 disables")
    token_file: str = flag(
        "",
        env="PDSERVE_WORKER_TOKEN_FILE",
        help="refuse RPCs without one of the tokens in this file (one per line; also the comma-separated "
        "PDSERVE_WORKER_TOKEN); health checks stay open",
    )
    tls_cert: str = flag("", env="PDSERVE_TLS_CERT", help="serve gRPC over TLS: PEM certificate")
    tls_key: str = flag("", env="PDSERVE_TLS_KEY", help="serve gRPC over TLS: PEM private key")
    tls_ca: str = flag("", env="PDSERVE_TLS_CA", help="serve gRPC over TLS: PEM CA: require client certificates")
    grace_s: float = flag(
        30.0, name="--grace", env="PDSERVE_GRACE_S", help="seconds to finish in-flight requests after SIGTERM"
    )
    startup_timeout_s: float = flag(
        900.0,
        name="--startup-timeout",
        env="PDSERVE_STARTUP_TIMEOUT_S",
        help="seconds the engine may take to start before the process exits",
    )
    log_level: str = flag("INFO", env="PDSERVE_LOG_LEVEL", help="logging level")
    service_name: str = ""  # health service name reported alongside "" (overall); the role's
    # callers must present one of these (pdserve.security); () = open. Secrets: not in the repr.
    tokens: tuple[str, ...] = dataclasses.field(default=(), repr=False)

    def __post_init__(self) -> None:
        self.tls  # noqa: B018 -- TlsFiles checks the files exist: fail at start-up, not at serve time

    @property
    def tls(self) -> TlsFiles:
        """Serve TLS (mutual with a CA) when a certificate is given."""
        return TlsFiles(self.tls_cert, self.tls_key, self.tls_ca)

    def with_secrets(self) -> ServerOptions:
        """These options with the tokens read (``token_file`` and ``PDSERVE_WORKER_TOKEN``)."""
        return dataclasses.replace(self, tokens=read_secrets(self.token_file, "PDSERVE_WORKER_TOKEN"))


async def run_worker(
    engine: PrefillEngine | DecodeEngine,
    gate: RpcGate,
    register: Callable[[grpc.aio.Server], None],
    options: ServerOptions,
    metrics: WorkerMetrics | None = None,
    registration: RegistrationOptions | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT (exit code 0) or engine death (exit code 1)."""
    serve_metrics = metrics is not None and options.metrics_port > 0
    if metrics is not None and serve_metrics:  # before the engine: a taken port fails in seconds
        metrics.serve(options.host, options.metrics_port)
        log.info("metrics on http://%s:%d/metrics", options.host, options.metrics_port)
    await _start_engine(engine, options.startup_timeout_s)
    heap.freeze("the engine's start")  # vLLM's and torch's objects: out of every later full collection's walk
    interceptors = [TokenInterceptor(options.tokens)] if options.tokens else None
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)], interceptors=interceptors)
    register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    address = f"{options.host}:{options.port}"
    if options.tls.cert:
        port = server.add_secure_port(address, options.tls.server_credentials())
    else:
        port = server.add_insecure_port(address)
    await server.start()
    await _set_health(health_servicer, options.service_name, health_pb2.HealthCheckResponse.SERVING)
    log.info("serving on %s:%d", options.host, port)
    background = [asyncio.create_task(_watch_engine(engine, stop := asyncio.Event()))]
    if metrics is not None and serve_metrics:
        background.append(asyncio.create_task(metrics.poll(engine)))
    registered: Registration | None = None
    if registration is not None and registration.state_url:
        advertise = registration.advertise or f"{options.host}:{port}"
        registered = Registration.create(registration, WorkerId(advertise), engine.info(), metrics)
        background.append(asyncio.create_task(registered.run()))

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    dead = engine.is_dead()
    for task in background:
        task.cancel()

    await _set_health(health_servicer, options.service_name, health_pb2.HealthCheckResponse.NOT_SERVING)
    if registered is not None:  # routers stop placing here before we stop accepting
        await registered.deregister()
        await registered.close()
    if dead:
        log.error("engine died; exiting so the supervisor restarts this worker")
    else:
        log.info("draining %d in-flight request(s), grace %.0fs", gate.inflight, options.grace_s)
        if not await gate.drain(options.grace_s):
            log.warning("grace period over with %d request(s) still in flight", gate.inflight)
    await server.stop(0 if dead else 1.0)
    with contextlib.suppress(EngineDeadError):
        await engine.shutdown()
    return 1 if dead else 0


async def _start_engine(engine: PrefillEngine | DecodeEngine, timeout_s: float) -> None:
    """Start the engine or end the process. vLLM's start-up blocks the event loop and
    can hang for good (a NIXL listener that failed to bind), so a plain thread timer
    is the only thing that still runs then."""

    def give_up() -> None:
        log.error("engine did not start within %.0fs; exiting", timeout_s)
        os._exit(1)  # the loop is blocked inside vLLM: nothing else can run

    timer = threading.Timer(timeout_s, give_up)
    timer.daemon = True
    timer.start()
    try:
        await engine.start()
    finally:
        timer.cancel()


async def _watch_engine(engine: PrefillEngine | DecodeEngine, stop: asyncio.Event) -> None:
    while not engine.is_dead():
        await asyncio.sleep(ENGINE_WATCH_INTERVAL_S)
    stop.set()


async def _set_health(servicer: health.aio.HealthServicer, name: str, status: int) -> None:
    await servicer.set("", status)
    if name:
        await servicer.set(name, status)
