"""Processes of a benchmark or test topology: start with a log file each, wait until ready, stop all.

Every process gets its own process group, so stopping it also stops whatever it
started; ``Procs`` is a context manager that stops everything it started, in
reverse order, whatever happened in between.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

import httpx

from pdserve.lifetime import launch_env


def python(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


class Procs:
    def __init__(self, log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.log_dir = log_dir
        self._env = {**os.environ, **(env or {})}
        self._procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = (self.log_dir / f"{name}.log").open("wb")
        full_env = launch_env({**self._env, **(env or {})})  # dies with us, however we die
        proc = subprocess.Popen(list(argv), env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._procs.append((name, proc))
        return proc

    def wait_http(
        self, url: str, timeout_s: float = 180.0, ready: Callable[[httpx.Response], bool] | None = None
    ) -> None:
        """Until GET ``url`` answers 200 (and ``ready(response)``); a process that exits fails it."""
        deadline = time.monotonic() + timeout_s
        while True:
            for name, proc in self._procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}; see {self.log_dir / name}.log")
            with contextlib.suppress(httpx.HTTPError):
                resp = httpx.get(url, timeout=2)
                if resp.status_code == 200 and (ready is None or ready(resp)):
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} not ready within {timeout_s:.0f}s (logs in {self.log_dir})")
            time.sleep(0.3)

    def stop_one(self, proc: subprocess.Popen[bytes], timeout_s: float = 15.0) -> None:
        """SIGTERM one process's group (SIGKILL past ``timeout_s``) and forget it: a process
        stopped on purpose (a restart) is no start-up failure for ``wait_http``."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        self._procs = [(n, p) for n, p in self._procs if p is not proc]

    def stop(self) -> None:
        for _, proc in reversed(self._procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for _, proc in reversed(self._procs):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            # A leader that drained and exited may leave its group behind (vLLM's engine
            # worker processes): nothing of the group outlives the stop.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        self._procs.clear()

    def __enter__(self) -> Procs:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
