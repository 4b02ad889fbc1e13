"""Sim fleets as real processes: sim workers (gRPC), sim-http servers and pdserve's router
over them, each on free ports under a ``Procs``. The one launcher of the bench's
comparisons and of the tests that need a fleet but not a real engine's numbers."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from pdserve.tools.model import with_default_model
from pdserve.tools.ports import free_port, free_runs
from pdserve.tools.procs import Procs, python

ROUTER_READY_S = 300.0  # the router loads the model's tokenizer before it serves


@dataclass(frozen=True)
class Launched:
    """A started process and where it serves (a gRPC address or a base URL)."""

    address: str
    proc: subprocess.Popen[bytes]


def start_sim_worker(procs: Procs, role: str, name: str, args: Sequence[str] = ()) -> Launched:
    """A ``--engine sim`` prefill or decode worker (``args``: more worker flags, e.g. the
    sim profile; the embedded model unless they name one, as ``pdserve decode`` does);
    its gRPC address. Not waited for: the router waits for its workers."""
    args = with_default_model(args, served_name=True)
    port, events = free_runs(1, 2)  # KV events + their replay socket
    module = "prefill_worker" if role == "prefill" else "decode_worker"
    argv = python(module, "--engine", "sim", "--port", str(port), "--metrics-port", "0")
    argv += ["--kv-events-port", str(events), "--log-level", "WARNING", *args]
    return Launched(f"127.0.0.1:{port}", procs.start(name, argv))


def start_sim_http(procs: Procs, name: str, args: Sequence[str] = ()) -> tuple[Launched, int]:
    """A ``pdserve sim-http`` server and its KV events port; not waited for (``/health``)."""
    port, events = free_runs(1, 2)
    argv = python("pdserve.tools.sim_http", "--port", str(port), "--kv-events-port", str(events), *args)
    return Launched(f"http://127.0.0.1:{port}", procs.start(name, argv)), events


def start_router(
    procs: Procs,
    model_dir: Path,
    prefill: Sequence[str] = (),
    decode: Sequence[str] = (),
    args: Sequence[str] = (),
    wait: bool = True,
) -> Launched:
    """pdserve's router over these workers (none: found through ``--state-url``); its base
    URL, once ``/v1/models`` lists a model unless ``wait`` is off."""
    port = free_port()
    argv = python("router", "--port", str(port), "--model", str(model_dir))
    argv += [f"--prefill={a}" for a in prefill] + [f"--decode={a}" for a in decode]
    router = Launched(f"http://127.0.0.1:{port}", procs.start("router", [*argv, *args]))
    if wait:
        procs.wait_http(f"{router.address}/v1/models", ROUTER_READY_S, ready=lambda r: bool(r.json()["data"]))
    return router


def wait_router_processes(router: Launched, n: int, timeout_s: float = ROUTER_READY_S) -> list[int]:
    """The pids of a ``--workers n`` router's serving processes, once all ``n`` listen.

    The router's URL answers as soon as its first process is up; a process listens only
    once its app has started, so connections opened before the others listen all land on
    the first. Waits for ``n`` listeners on the port under ``router``'s process."""
    port = int(router.address.rsplit(":", 1)[1])
    deadline = time.monotonic() + timeout_s
    while True:
        listening = []
        for proc in psutil.Process(router.proc.pid).children():
            try:
                conns = proc.net_connections(kind="tcp")
            except psutil.Error:
                continue
            if any(c.laddr.port == port and c.status == psutil.CONN_LISTEN for c in conns):
                listening.append(proc.pid)
        if len(listening) >= n:
            return listening
        if router.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{len(listening)} of {n} router processes listen on {port}")
        time.sleep(0.2)
