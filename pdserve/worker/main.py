"""The entry point both worker roles share: config, logging, lifetime, port check, then serve."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import grpc

from pdserve.config import run_async, setup_logging
from pdserve.engine.base import DecodeEngine, PrefillEngine
from pdserve.engine.config import EngineConfig
from pdserve.lifetime import check_ports_free, die_with_parent
from pdserve.worker.config import WorkerRole, worker_config, worker_parser
from pdserve.worker.errors import ErrorHook
from pdserve.worker.metrics import WorkerMetrics
from pdserve.worker.server import RpcGate, run_worker

log = logging.getLogger("pdserve.worker")

E = TypeVar("E", PrefillEngine, DecodeEngine)
Registrar = Callable[[grpc.aio.Server], None]


def worker_main(
    role: WorkerRole,
    make_engine: Callable[[EngineConfig], E],
    make_servicer: Callable[[E, RpcGate, ErrorHook], Registrar],
    argv: list[str] | None = None,
) -> int:
    """Serve one role; exit code 2 for bad configuration (a taken port included)."""
    try:
        cfg = worker_config(role, argv)
    except ValueError as exc:
        worker_parser(role).error(str(exc))  # "prog: error: field (--flag): why", exit code 2
    setup_logging(cfg.log_level)
    die_with_parent()

    async def serve() -> int:
        engine = make_engine(cfg.engine)
        gate = RpcGate()
        metrics = WorkerMetrics(role.name, cfg.engine.served_model_name)
        register = make_servicer(engine, gate, metrics.error)
        return await run_worker(engine, gate, register, cfg.server, metrics, cfg.registration)

    try:
        check_ports_free(cfg.ports())  # before the engine: a taken port fails in milliseconds, naming itself
        return run_async(serve())
    except ValueError as exc:
        log.error("cannot start: %s", exc)
        return 2
