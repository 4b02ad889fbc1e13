"""Nothing outlives what started it (pdserve.lifetime), on real processes: `pdserve up` on
sim engines SIGKILLed, a worker whose launcher dies or whose fixture gives up, a second
`up` and a worker on ports already taken."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import psutil
import pytest

from pdserve.lifetime import kill_descendants, launch_env
from pdserve.tools.ports import UpPorts
from pdserve.tools.procs import Procs
from pdserve.tools.up import READY_LINE, UpConfig
from tests.helpers.net import REPO, free_port

GONE_WITHIN_S = 10.0


def up_config(model: Path) -> UpConfig:
    """`pdserve up` with one prefill worker on sim engines, on free ports."""
    ports = UpPorts.free(prefill_workers=1)
    return UpConfig(
        **{f.name: getattr(ports, f.name) for f in dataclasses.fields(UpPorts)},
        model=str(model),
        served_model_name="m",
        ready_timeout_s=300,
        worker_args=("--engine=sim", "--engine-arg=profile=zero"),
    )


def up_argv(cfg: UpConfig) -> list[str]:
    argv = [sys.executable, "-m", "pdserve", "up", "--model", cfg.model, "--port", str(cfg.port)]
    argv += ["--prefill-port", str(cfg.prefill_port), "--decode-port", str(cfg.decode_port)]
    argv += ["--kv-port-base", str(cfg.kv_port_base), "--metrics-port-base", str(cfg.metrics_port_base)]
    argv += ["--kv-events-port-base", str(cfg.kv_events_port_base)]
    return argv + [f"--worker-arg={a}" for a in cfg.worker_args]


def wait_gone(pids: list[int], timeout_s: float = GONE_WITHIN_S) -> list[int]:
    """The pids still alive (zombies count as gone) after up to ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        alive = [p for p in pids if _alive(p)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


def held(ports: Iterable[tuple[str, str, int]], timeout_s: float = GONE_WITHIN_S) -> list[str]:
    """Sockets still on ``ports`` after up to ``timeout_s`` that a process holds: any
    listener, or any socket a live process owns. What the kernel keeps after a process
    died (TIME_WAIT, FIN_WAIT of its connections) is no process left behind."""
    wanted = {port for _, _, port in ports if port}
    deadline = time.monotonic() + timeout_s
    while True:
        out = [
            f"{c.laddr.ip}:{c.laddr.port} {c.status} pid {c.pid}"
            for c in psutil.net_connections(kind="inet")
            if c.laddr and c.laddr.port in wanted and (c.status == psutil.CONN_LISTEN or c.pid)
        ]
        if not out or time.monotonic() > deadline:
            return out
        time.sleep(0.2)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


Up = tuple[UpConfig, subprocess.Popen[bytes], Path]  # config, the `pdserve up` process, its log


@pytest.fixture
def up(tmp_path: Path, default_model: Path) -> Iterator[Up]:
    """`pdserve up` on sim engines (the real router and tokenizer), once it says it is up."""
    cfg = up_config(default_model)
    log = tmp_path / "up.log"
    proc = subprocess.Popen(up_argv(cfg), cwd=REPO, env=launch_env(), stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while READY_LINE not in log.read_text(errors="replace"):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "pdserve up (sim engines) did not start"
            time.sleep(0.5)
        yield cfg, proc, log
    finally:
        if proc.poll() is None:
            kill_descendants(proc.pid)
        proc.kill()
        proc.wait()


def test_sigkilled_up_leaves_no_process_and_no_port_behind(up: Up) -> None:
    cfg, proc, _ = up
    children = psutil.Process(proc.pid).children(recursive=True)
    assert len(children) >= 3, [c.cmdline() for c in children]  # router, prefill and decode worker at least
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert wait_gone([c.pid for c in children]) == []
    assert held(cfg.ports()) == []


def test_second_up_on_taken_ports_fails_fast_naming_the_port(up: Up) -> None:
    cfg, first, _ = up
    second = subprocess.run(up_argv(cfg), cwd=REPO, env=launch_env(), capture_output=True, text=True, timeout=120)
    assert second.returncode == 2, second.stderr[-2000:]
    assert f"port {cfg.port} " in second.stderr and "already in use" in second.stderr, second.stderr[-2000:]
    assert "by pid " in second.stderr, second.stderr[-2000:]  # the holder: the first cluster's router
    assert first.poll() is None  # the first cluster is untouched


def test_second_sigterm_stops_everything_without_waiting_for_the_drain(up: Up) -> None:
    cfg, proc, _ = up
    children = psutil.Process(proc.pid).children(recursive=True)
    router = next(c for c in children if "router" in c.cmdline())
    router.suspend()  # a child that cannot finish its drain: the first TERM waits up to 40 s on it
    proc.send_signal(signal.SIGTERM)
    time.sleep(1.5)
    assert proc.poll() is None  # still draining
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(GONE_WITHIN_S)
    assert wait_gone([c.pid for c in children]) == []
    assert time.monotonic() - t0 < GONE_WITHIN_S
    assert held(cfg.ports()) == []


def test_worker_dies_with_a_launcher_that_is_sigkilled(tmp_path: Path, default_model: Path) -> None:
    """A fixture process (here a script using the bench/test launcher) killed mid-start."""
    port, events = free_port(), free_port()
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from pdserve.tools.procs import Procs
        procs = Procs(Path({str(tmp_path)!r}))
        p = procs.start("decode", [sys.executable, "-m", "decode_worker", "--engine", "sim",
                                   "--model", {str(default_model)!r}, "--port", "{port}",
                                   "--metrics-port", "0", "--kv-events-port", "{events}"])
        print(p.pid, flush=True)
        time.sleep(600)
        """
    )
    launcher = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert launcher.stdout is not None
        worker = int(launcher.stdout.readline())
        time.sleep(1.0)  # mid-start: imports, engine construction
        assert _alive(worker)
        launcher.kill()
        launcher.wait()
        assert wait_gone([worker]) == []
        assert held([("gRPC", "127.0.0.1", port), ("KV events", "", events)]) == []
    finally:
        launcher.kill()


def test_a_fixture_that_gives_up_kills_what_it_started(tmp_path: Path, default_model: Path) -> None:
    port = free_port()
    argv = [sys.executable, "-m", "decode_worker", "--engine", "sim", "--model", str(default_model)]
    argv += ["--port", str(port), "--metrics-port", "0"]
    with pytest.raises(RuntimeError, match="not ready"), Procs(tmp_path) as procs:
        worker = procs.start("decode", [*argv, "--kv-events-port", "0"])
        procs.wait_http("http://127.0.0.1:9/never", timeout_s=0.5)  # a start deadline that passes
    assert wait_gone([worker.pid]) == []
    assert held([("gRPC", "127.0.0.1", port)]) == []


def test_worker_on_a_taken_port_exits_at_once_naming_it(tmp_path: Path, default_model: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        argv = [sys.executable, "-m", "prefill_worker", "--engine", "sim", "--model", str(default_model)]
        argv += ["--port", str(port), "--metrics-port", "0", "--kv-events-port", "0"]
        done = subprocess.run(argv, cwd=REPO, env=launch_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"gRPC port {port} on 127.0.0.1 is already in use by pid {os.getpid()}" in done.stderr, done.stderr[-2000:]
