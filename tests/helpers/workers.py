"""Worker processes the tests start on their own (outside `pdserve up`), and the gRPC
probes tests use on any worker: health, load."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pdserve.engine.base import EngineLoad
from pdserve.lifetime import launch_env
from pdserve.rpc.convert import load_from_pb
from pdserve.v1 import worker_pb2 as pb
from pdserve.v1 import worker_pb2_grpc as pb_grpc
from tests.helpers.cluster import engine_env
from tests.helpers.net import REPO, free_port
from tests.helpers.waiting import wait_until

GREEDY = pb.SamplingParams(max_tokens=8, temperature=0, top_p=1)
# A backstop for a worker that neither serves nor exits: one that crashes fails the wait
# at once, one that serves ends it. Engine starts take minutes on 2 busy cores.
START_TIMEOUT_S = 900.0


@dataclass
class Worker:
    addr: str
    proc: subprocess.Popen[bytes]
    log: Path


def start_decode_worker(model: Path, log: Path, *extra: str, start_timeout_s: float = START_TIMEOUT_S) -> Worker:
    """A decode worker (no KV connector) on ``model``, returned once its health check says SERVING."""
    (worker,) = start_decode_workers(model, [log], *extra, start_timeout_s=start_timeout_s)
    return worker


def start_decode_workers(
    model: Path, logs: list[Path], *extra: str, start_timeout_s: float = START_TIMEOUT_S
) -> list[Worker]:
    """One decode worker per log file, as ``start_decode_worker`` starts one, all launched
    before any is waited for: an engine start is mostly one thread's work, so on 2 cores
    starts that overlap take far less than one after another. Returned once all serve."""
    workers: list[Worker] = []
    try:
        for log in logs:
            workers.append(_launch_decode_worker(model, log, extra))
        for worker in workers:
            wait_serving(worker, start_timeout_s)
    except BaseException:
        for worker in workers:
            stop_worker(worker, grace_s=0)  # a worker we gave up on must not come up later and spin
        raise
    return workers


def _launch_decode_worker(model: Path, log: Path, extra: tuple[str, ...]) -> Worker:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "decode_worker",
        "--model",
        str(model),
        "--port",
        str(port),
        "--kv-connector",
        "none",
        "--kv-cache-gib",
        "0.25",
        "--max-model-len",
        "4096",
        "--grace",
        "60",
        "--metrics-port",
        str(free_port()),
        "--kv-events-port",
        str(free_port()),
        *extra,
    ]
    env = launch_env(engine_env())  # the worker (and its engine core) dies with this process
    out = log.open("wb")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return Worker(f"127.0.0.1:{port}", proc, log)


def wait_serving(worker: Worker, timeout_s: float = START_TIMEOUT_S) -> None:
    def exited() -> None:
        assert worker.proc.poll() is None, worker.log.read_text(errors="replace")[-3000:]

    serving = health_pb2.HealthCheckResponse.SERVING
    wait_until(lambda: asyncio.run(health(worker.addr)) == serving, "decode worker did not start", timeout_s, 1, exited)


async def health(addr: str) -> int:
    """The worker's gRPC health status, or -1 when it does not answer."""
    async with grpc.aio.insecure_channel(addr) as ch:
        try:
            resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
            return int(resp.status)
        except grpc.aio.AioRpcError:
            return -1


async def engine_load(addr: str, service: str) -> EngineLoad:
    """A worker's Load RPC; ``service`` is "prefill" or "decode"."""
    async with grpc.aio.insecure_channel(addr) as ch:
        stub = (pb_grpc.PrefillWorkerStub if service == "prefill" else pb_grpc.DecodeWorkerStub)(ch)
        # Load asks the engine core between steps; a step can take seconds on busy cores.
        return load_from_pb(await stub.Load(pb.LoadRequest(), timeout=30))


def stop_worker(worker: Worker, grace_s: float = 60) -> None:
    """SIGTERM, then SIGKILL for the whole process group: vLLM's engine-core and worker
    processes outlive a worker that is killed alone, and spin on the CPU."""
    if worker.proc.poll() is None and grace_s:
        worker.proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.proc.wait(grace_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(worker.proc.pid, signal.SIGKILL)
    worker.proc.wait()
