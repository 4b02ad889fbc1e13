"""Shared fixtures. Real engines are expensive on 2 cores: start them once per session."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from pdserve.lifetime import launch_env
from pdserve.tools.up import READY_LINE
from tests.helpers.net import REPO, free_port
from tests.redis_server import RedisServer


@pytest.fixture(scope="session")
def default_model() -> Path:
    from pdserve.tools.model import default_model_dir

    return default_model_dir()


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


PREFILL_WORKERS = 2  # the session cluster: placement has a choice to make
KV_LEASE_S = 30  # the session cluster's prefill-side KV lease (vLLM 0.32's default, set explicitly)


def start_up(tmp: Path, *extra: str, name: str = "up", prefill_workers: int = 1) -> Cluster:
    n = prefill_workers
    port, dport, mport = free_port(), free_port(), free_port(2 * n)
    pport, kv, events = free_port(2 * n), free_port(2 * n), free_port(4 * n)
    log = tmp / f"{name}.log"
    cmd = [
        sys.executable,
        "-m",
        "pdserve",
        "up",
        "--port",
        str(port),
        "--prefill-port",
        str(pport),
        "--decode-port",
        str(dport),
        "--kv-port-base",
        str(kv),
        "--metrics-port-base",
        str(mport),
        "--kv-events-port-base",
        str(events),
        "--prefill-workers",
        str(n),
        *extra,
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, env=launch_env(), stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"pdserve up exited with {proc.returncode}; see {log}:\n{log.read_text()[-3000:]}")
        if READY_LINE in log.read_text(errors="replace"):  # printed after the NIXL warm-up
            models = httpx.get(f"{url}/v1/models", timeout=10).json()
            metrics = (f"http://127.0.0.1:{mport}/metrics", f"http://127.0.0.1:{mport + 1}/metrics")
            prefills = tuple(f"127.0.0.1:{pport + 2 * i}" for i in range(n))
            return Cluster(url, models["data"][0]["id"], prefills, f"127.0.0.1:{dport}", proc, log, metrics)
        time.sleep(1)
    stop_up(proc)
    raise RuntimeError(f"pdserve up was not ready in time; see {log}")


def stop_up(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM `pdserve up` (it stops its children in order); then make sure no engine
    process outlives it — orphaned vLLM CPU engines spin and slow every later test."""
    descendants = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(90)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait()
    for child in descendants:
        with contextlib.suppress(psutil.Error):
            child.kill()
    return code


@pytest.fixture(scope="session")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, reference_outputs: dict, redis_server: RedisServer
) -> Iterator[Cluster]:
    """The README's run command (`pdserve up`) on the embedded default model.

    Depends on ``reference_outputs`` so the colocated reference engine has finished
    before these engines start (idle vLLM CPU engines spin and slow each other).
    """
    c = start_up(
        tmp_path_factory.mktemp("cluster"),
        f"--worker-arg=--state-url={redis_server.url}",  # workers also feed Redis (tests/e2e/test_placement.py)
        "--worker-arg=--heartbeat-ttl=10",  # the default; shorter ones expire while 3 engines starve the CPU
        f"--worker-arg=--kv-lease-s={KV_LEASE_S}",  # tests/e2e/test_soak.py waits for orphans this long
        prefill_workers=PREFILL_WORKERS,
    )
    yield c
    stop_up(c.proc)


@pytest.fixture(scope="session")
def tokenizer(default_model: Path):  # type: ignore[no-untyped-def]
    from router.tokenizer import Tokenizer

    return Tokenizer(default_model)


def engine_env() -> dict[str, str]:
    from pdserve.tools.up import child_env

    return child_env()


os.environ.setdefault("PDSERVE_LOG_LEVEL", "INFO")


@pytest.fixture(scope="session")
def reference_outputs(tmp_path_factory: pytest.TempPathFactory, default_model: Path, tokenizer) -> dict:  # type: ignore[no-untyped-def]
    """Greedy outputs of tests/e2e/prompts.py CASES from one colocated vLLM engine, by case name."""
    import json

    from tests.e2e.prompts import CASES, MAX_TOKENS, prompt_ids

    tmp = tmp_path_factory.mktemp("reference")
    spec = {
        "model": str(default_model),
        "prompts": [prompt_ids(tokenizer, c) for c in CASES],
        "max_tokens": MAX_TOKENS,
        "stop_token_ids": list(tokenizer.eos_token_ids),
        "block_size": 128,
        "dtype": engine_env().get("PDSERVE_DTYPE", "auto"),
        "max_model_len": 2048,
    }
    (tmp / "in.json").write_text(json.dumps(spec))
    subprocess.run(
        [sys.executable, str(REPO / "tests/e2e/reference_engine.py"), str(tmp / "in.json"), str(tmp / "out.json")],
        env=launch_env(engine_env()),
        check=True,
        timeout=900,
        stdout=(tmp / "log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    outputs = json.loads((tmp / "out.json").read_text())["outputs"]
    return {c.name: {"prompt": p, "output": o} for c, p, o in zip(CASES, spec["prompts"], outputs, strict=True)}


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server for the session; tests that stop it start their own."""
    server = RedisServer(free_port(), tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()
