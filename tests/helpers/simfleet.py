"""Sim workers and a router as real processes (real gRPC), for tests that need a fleet
but not a real engine's numbers: the tests' profiles over ``pdserve.tools.fleet``."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

import grpc
import httpx

from pdserve.tools import fleet
from pdserve.tools.procs import Procs
from pdserve.v1 import worker_pb2 as pb
from pdserve.v1 import worker_pb2_grpc as pb_grpc

# ~8 ms a token and a realistic prefill: a 400-token stream lasts ~3 s
SLOW = "llama-3.1-8b-h200"
ZERO = "zero"


def start_sim(
    procs: Procs, role: str, name: str = "", profile: str = SLOW, extra: Sequence[str] = ()
) -> tuple[str, subprocess.Popen[bytes]]:
    """Start a sim prefill or decode worker (``extra``: more worker flags): (gRPC address, process)."""
    worker = fleet.start_sim_worker(procs, role, name or role, ["--engine-arg", f"profile={profile}", *extra])
    return worker.address, worker.proc


def sim_worker(procs: Procs, role: str, name: str = "", profile: str = SLOW) -> str:
    """Start a sim prefill or decode worker; its gRPC address."""
    return start_sim(procs, role, name, profile)[0]


def numbered_sim_worker(procs: Procs, role: str, i: int, *extra: str) -> tuple[str, int]:
    """Worker ``i`` of a role, on the slow profile: (gRPC address, pid)."""
    addr, proc = start_sim(procs, role, f"{role}{i}", SLOW, extra)
    return addr, proc.pid


def start_router(
    procs: Procs, model_dir: Path, prefill: str, decode: str, *extra: str
) -> tuple[subprocess.Popen[bytes], str]:
    """(process, base URL) of a router over the given workers, once it serves a model."""
    router = fleet.start_router(procs, model_dir, [prefill], [decode], extra)
    return router.proc, router.address


def served_model(url: str) -> str:
    return str(httpx.get(f"{url}/v1/models", timeout=10).json()["data"][0]["id"])


async def decode_load(addr: str) -> pb.WorkerLoad:
    async with grpc.aio.insecure_channel(addr) as channel:
        return await pb_grpc.DecodeWorkerStub(channel).Load(pb.LoadRequest(), timeout=5)


async def decode_inflight(addr: str) -> int:
    """Decode RPCs the worker has in flight."""
    return int((await decode_load(addr)).num_inflight)
