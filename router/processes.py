"""``--workers N``: N router processes on one host, one port, so one pod uses its cores.

Each process runs the whole app (router/server.py) — its own event loop, tokenizers,
worker connections and placement — on its own ``SO_REUSEPORT`` socket; the kernel spreads
new connections across them. A request never crosses processes, so what they must agree
on lives where replicas on different hosts keep it: with a ``redis://`` ``--state-url`` the
worker registry, block index, predictions and rate-limit counts are shared as between any
router replicas. With ``memory://`` each process follows every worker's KV events itself
(a complete block index) but keeps its own placement predictions and load view; the config
refuses per-minute rate limits there, which would count per process (N times the limit).

The parent only supervises: it starts the N processes (spawned: a fresh interpreter each,
no forked event loop or gRPC state), forwards SIGTERM/SIGINT (each drains, as one router
does), and once any of them exits stops the rest and exits with its status — a process
that died is not restarted here: the pod's orchestrator restarts the whole, as it would
one process. Each child exits with its descendants once the parent is gone, however the
parent died (``pdserve.lifetime.die_with``).

Metrics: the processes write Prometheus' multiprocess files into a directory the parent
creates (and removes when it exits), and ``/metrics``, whichever process answers, reads
them all: counters and histograms summed over processes, gauges combined as each one's
``multiprocess_mode`` says (router/metrics.py).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from types import FrameType

from pdserve.config import setup_logging
from pdserve.lifetime import die_with
from router.config import RouterConfig, from_args
from router.torchless import keep_torch_out

log = logging.getLogger("router.processes")
# prometheus_client picks its multiprocess value class at import from this variable, so the
# parent sets it before the children are spawned (their imports read it).
PROMETHEUS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
STOP_GRACE_S = 40.0  # past uvicorn's 30 s graceful shutdown


def serve(cfg: RouterConfig, argv: list[str]) -> int:
    """Run ``cfg.workers`` router processes until one exits or a signal stops them; the exit
    status of the first to exit (0 after a clean stop). ``argv``: the flags ``cfg`` came from;
    each process builds its config from them (secrets read from their files there), as one
    router does, rather than receive a pickled one."""
    metrics_dir = tempfile.mkdtemp(prefix="pdserve-router-metrics-")
    os.environ[PROMETHEUS_DIR_ENV] = metrics_dir
    spawn = multiprocessing.get_context("spawn")
    children: list[BaseProcess] = []
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.is_alive() and child.pid is not None:
                os.kill(child.pid, signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for index in range(cfg.workers):
            child = spawn.Process(
                target=_serve_one, args=(argv, index, os.getpid(), metrics_dir), name=f"router-{index}"
            )
            child.start()
            children.append(child)
        log.info(
            "router: %d processes on http://%s:%d (pids %s)",
            cfg.workers,
            cfg.host,
            cfg.port,
            ", ".join(str(c.pid) for c in children),
        )
        first = _first_exit(children)
        if not stopping:
            log.error("router process %s exited with %s; stopping the others", first.name, first.exitcode)
            stop(signal.SIGTERM, None)
        _join_all(children)
        code = first.exitcode or 0
        if stopping and code in (0, -signal.SIGTERM, -signal.SIGINT):
            return 0  # uvicorn drains, then re-raises the signal it caught: the stop we asked for
        return code if code > 0 else 1  # a process that died by a signal of its own: a failure
    finally:
        for proc in children:  # however we leave (an exception included), none stays behind
            if proc.is_alive():
                proc.kill()
                proc.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _first_exit(children: list[BaseProcess]) -> BaseProcess:
    while True:
        ready = wait([c.sentinel for c in children])
        for child in children:
            if child.sentinel in ready:
                child.join()
                return child


def _join_all(children: list[BaseProcess]) -> None:
    for child in children:
        child.join(STOP_GRACE_S)
        if child.is_alive():
            log.error("router process %s did not stop in %.0fs; killing it", child.name, STOP_GRACE_S)
            child.kill()
            child.join()


def _serve_one(argv: list[str], index: int, parent: int, metrics_dir: str) -> None:
    """One of the processes: the whole router on its own ``SO_REUSEPORT`` socket."""
    keep_torch_out()  # before router.server reaches transformers (router/torchless.py)
    from router.server import Server, make_app, reuse_port_socket, uvicorn_config

    cfg = from_args(argv)  # checked by the parent already
    setup_logging(cfg.log_level)
    die_with(parent)
    server = Server(uvicorn_config(make_app(cfg, metrics_dir), cfg))
    log.info("router process %d/%d (pid %d) starting", index + 1, cfg.workers, os.getpid())
    server.run(sockets=[reuse_port_socket(cfg.host, cfg.port)])
    if not server.started:
        raise SystemExit(3)
