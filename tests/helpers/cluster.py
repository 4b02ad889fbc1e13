"""`pdserve up` as the tests run it: start it, wait for its ready line, stop it and
everything it started."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil

from pdserve.lifetime import launch_env
from pdserve.tools.ports import UpPorts
from pdserve.tools.up import child_env, wait_ready
from tests.helpers.net import REPO
from tests.helpers.processes import kill_tree

PREFILL_WORKERS = 2  # the session cluster: placement has a choice to make
# The session cluster's prefill-side KV lease: longer than vLLM 0.32's default (30 s), so
# tests/e2e/test_kv_lease.py can tell that the flag applied (a default lease frees sooner).
KV_LEASE_S = 45
# A backstop: `pdserve up` exiting fails the wait at once, its ready line ends it.
READY_TIMEOUT_S = 900.0


def engine_env() -> dict[str, str]:
    """The environment `pdserve up` gives its workers' engines."""
    return child_env()


@dataclass(frozen=True)
class Cluster:
    """A running `pdserve up`: its router URL, worker addresses and process."""

    url: str
    model: str
    prefill_addrs: tuple[str, ...]
    decode_addr: str
    proc: subprocess.Popen[bytes]
    log: Path
    worker_metrics: tuple[str, str]  # first prefill worker's, decode worker's /metrics URLs

    @property
    def prefill_addr(self) -> str:
        return self.prefill_addrs[0]


def start_up(tmp: Path, *extra: str, name: str = "up", prefill_workers: int = 1) -> Cluster:
    ports = UpPorts.free(prefill_workers)  # pdserve up's own layout, on free ports
    log = tmp / f"{name}.log"
    cmd = [sys.executable, "-m", "pdserve", "up", *ports.up_args(), "--ready-timeout", str(int(READY_TIMEOUT_S))]
    cmd += extra
    proc = subprocess.Popen(cmd, cwd=REPO, env=launch_env(), stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        model = wait_ready(ports.url, proc, log, READY_TIMEOUT_S)
    except BaseException:
        stop_up(proc)  # a cluster we gave up on must not come up later and spin
        raise
    return Cluster(ports.url, model, tuple(ports.prefill_addrs()), ports.decode_addr, proc, log, ports.metrics_urls())


def stop_up(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM `pdserve up` (it stops its children in order); then make sure no engine
    process outlives it — orphaned vLLM CPU engines spin and slow every later test."""
    descendants = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(90)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        code = proc.wait()
    for child in descendants:
        with contextlib.suppress(psutil.Error):
            child.kill()
    return code
