"""Sim workers and a router as real processes (real gRPC), for tests that need a fleet
but not a real engine's numbers."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import httpx

from pdserve.bench.procs import Procs
from pdserve.v1 import worker_pb2 as pb
from pdserve.v1 import worker_pb2_grpc as pb_grpc
from tests.helpers.net import free_port

# ~8 ms a token and a realistic prefill: a 400-token stream lasts ~3 s
SLOW = "llama-3.1-8b-h200"
ZERO = "zero"


def start_sim(
    procs: Procs, role: str, name: str = "", profile: str = SLOW, extra: Sequence[str] = ()
) -> tuple[str, subprocess.Popen[bytes]]:
    """Start a sim prefill or decode worker (``extra``: more worker flags): (gRPC address, process)."""
    port = free_port()
    module = "prefill_worker" if role == "prefill" else "decode_worker"
    argv = [sys.executable, "-m", module, "--engine", "sim", "--engine-arg", f"profile={profile}"]
    argv += ["--port", str(port), "--metrics-port", "0", "--kv-events-port", str(free_port()), "--log-level", "WARNING"]
    proc = procs.start(name or role, [*argv, *extra])
    return f"127.0.0.1:{port}", proc


def sim_worker(procs: Procs, role: str, name: str = "", profile: str = SLOW) -> str:
    """Start a sim prefill or decode worker; its gRPC address."""
    return start_sim(procs, role, name, profile)[0]


def start_router(procs: Procs, model_dir: Path, prefill: str, decode: str, *extra: str) -> tuple[Any, str]:
    """(process, base URL) of a router over the given workers, once it serves a model."""
    port = free_port()
    argv = [sys.executable, "-m", "router", "--port", str(port), "--model", str(model_dir)]
    proc = procs.start("router", [*argv, "--prefill", prefill, "--decode", decode, *extra])
    url = f"http://127.0.0.1:{port}"
    procs.wait_http(f"{url}/v1/models", timeout_s=300, ready=lambda r: bool(r.json()["data"]))
    return proc, url


def served_model(url: str) -> str:
    return str(httpx.get(f"{url}/v1/models", timeout=10).json()["data"][0]["id"])


async def decode_inflight(addr: str) -> int:
    """Decode RPCs the worker has in flight."""
    async with grpc.aio.insecure_channel(addr) as channel:
        load = await pb_grpc.DecodeWorkerStub(channel).Load(pb.LoadRequest(), timeout=5)
        return int(load.num_inflight)
