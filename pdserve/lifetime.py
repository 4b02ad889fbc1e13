"""Process lifetime: nothing outlives what started it (DESIGN §1).

Launchers (``pdserve up``, the bench tools, test fixtures) start children through
``launch_env``, which names the launcher in ``PDSERVE_PARENT_PID``. Every entry point
(workers, router, sim-http, ``pdserve up``) calls ``die_with_parent`` first: a thread
watches the parent and, once it is gone (however it died, SIGKILL included), kills
this process's descendants — vLLM's engine cores among them, whose own watch only
sees their direct parent — and exits. A parent-death signal alone is not enough:
Linux sends it when the *thread* that forked us ends, and it does not reach
grandchildren.

``check_ports_free`` turns a taken port into a start-up error naming the port and,
where the OS says, the process holding it — before any engine is built.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Iterable

import psutil

PARENT_ENV = "PDSERVE_PARENT_PID"
WATCH_INTERVAL_S = 0.2

log = logging.getLogger("pdserve.lifetime")


def launch_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) for a child that must die with this process."""
    return {**(os.environ if env is None else env), PARENT_ENV: str(os.getpid())}


def die_with_parent() -> threading.Thread | None:
    """If a pdserve launcher started this process, exit with every descendant once it is gone.

    Reads (and removes, so our own children are not confused by it) ``PDSERVE_PARENT_PID``;
    without it (a process a user started by hand) nothing is watched.
    """
    raw = os.environ.pop(PARENT_ENV, "")
    if not raw:
        return None
    return die_with(int(raw))


def die_with(parent: int) -> threading.Thread:
    """Exit with every descendant once ``parent`` (this process's parent) is gone; for children
    a process starts without ``launch_env`` (the router's ``--workers`` processes)."""
    if os.getppid() != parent:  # the launcher died before we got here
        _exit_with_descendants(parent)
    watcher = threading.Thread(target=_watch, args=(parent,), name="parent-watch", daemon=True)
    watcher.start()
    return watcher


def _watch(parent: int) -> None:
    # getppid() changes (to 1 or a subreaper) the moment the parent dies: no pid-reuse race.
    while os.getppid() == parent:
        time.sleep(WATCH_INTERVAL_S)
    _exit_with_descendants(parent)


def _exit_with_descendants(parent: int) -> None:
    log.error("parent process %d is gone; stopping this process and everything it started", parent)
    kill_descendants(os.getpid())
    os._exit(1)  # no drain, no atexit: nobody is left to serve or to report to


def kill_descendants(pid: int) -> None:
    """SIGKILL every process below ``pid`` (children first found, then theirs)."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.kill()


class PortInUseError(ValueError):
    """A port this process must bind is taken; the message names it and, if known, its holder."""


def check_ports_free(ports: Iterable[tuple[str, str, int]]) -> None:
    """Raise ``PortInUseError`` for the first ``(what, host, port)`` that cannot be bound.

    Port 0 (an OS-chosen port, or "off") is skipped. A bind-and-release probe: it cannot
    rule out a race with a process binding the same port a moment later, which then
    fails where it binds, as before.
    """
    for what, host, port in ports:
        if port and not _bindable(host, port):
            raise PortInUseError(f"{what} port {port} on {host or '0.0.0.0'} is already in use{_holder(port)}")


def _bindable(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers are not holders
        try:
            s.bind((host if host not in ("", "*") else "0.0.0.0", port))
        except OSError:
            return False
    return True


def _holder(port: int) -> str:
    """Who holds ``port``: the listening process if any, else every socket on it and its state."""
    try:
        conns = [c for c in psutil.net_connections(kind="inet") if c.laddr and c.laddr.port == port]
    except (psutil.Error, OSError):
        return ""
    for conn in conns:
        if conn.status == psutil.CONN_LISTEN and conn.pid:
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(conn.pid)
                return f" by pid {conn.pid} ({' '.join(proc.cmdline()[:4])})"
            return f" by pid {conn.pid}"
    held = [f"{c.laddr.ip} {c.status}" + (f" pid {c.pid}" if c.pid else "") for c in conns]
    return f" (sockets on it: {', '.join(held)})" if held else ""
