"""Worker processes over real gRPC with a real vLLM CPU engine on a tiny random Llama:
status codes, cancellation, SIGTERM drain and engine death."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pdserve.lifetime import launch_env
from pdserve.v1 import worker_pb2 as pb
from pdserve.v1 import worker_pb2_grpc as pb_grpc
from tests.conftest import engine_env
from tests.factories import make_tiny_llama
from tests.helpers.net import REPO, free_port

pytestmark = pytest.mark.engine

GREEDY = pb.SamplingParams(max_tokens=8, temperature=0, top_p=1)


@dataclass
class Worker:
    addr: str
    proc: subprocess.Popen[bytes]
    log: Path


def start_decode_worker(model: Path, log: Path, *extra: str, start_timeout_s: float = 300) -> Worker:
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
    worker = Worker(f"127.0.0.1:{port}", proc, log)
    try:
        wait_serving(worker, time.monotonic() + start_timeout_s)
    except BaseException:
        _stop(worker, grace_s=0)  # a worker we gave up on must not come up later and spin
        raise
    return worker


def wait_serving(worker: Worker, deadline: float) -> None:
    while asyncio.run(_health(worker.addr)) != health_pb2.HealthCheckResponse.SERVING:
        assert worker.proc.poll() is None, worker.log.read_text()[-3000:]
        assert time.monotonic() < deadline, "decode worker did not start"
        time.sleep(1)


async def _health(addr: str) -> int:
    async with grpc.aio.insecure_channel(addr) as ch:
        try:
            resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
            return int(resp.status)
        except grpc.aio.AioRpcError:
            return -1


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-model"))


def _stop(worker: Worker, grace_s: float = 60) -> None:
    """SIGTERM, then SIGKILL for the whole process group: vLLM's engine-core and worker
    processes outlive a worker that is killed alone, and spin on the CPU."""
    if worker.proc.poll() is None and grace_s:
        worker.proc.terminate()
        try:
            worker.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(worker.proc.pid, signal.SIGKILL)
    worker.proc.wait()


@pytest.fixture(scope="module")
def decode_worker(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """Shared by the tests that leave the worker serving."""
    worker = start_decode_worker(tiny_model, tmp_path_factory.mktemp("shared-decode") / "decode.log")
    yield worker
    _stop(worker)


@pytest.fixture
def fresh_decode_worker(tiny_model: Path, tmp_path: Path) -> Iterator[Worker]:
    """For tests that end the worker."""
    worker = start_decode_worker(tiny_model, tmp_path / "decode.log")
    yield worker
    _stop(worker)


async def _decode(addr: str, request: pb.DecodeRequest) -> list[pb.DecodeChunk]:
    async with grpc.aio.insecure_channel(addr) as ch:
        return [c async for c in pb_grpc.DecodeWorkerStub(ch).Decode(request, timeout=120)]


def _code(addr: str, request: pb.DecodeRequest) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        asyncio.run(_decode(addr, request))
    return err.value.code()


def test_bad_requests_map_to_invalid_argument_and_worker_keeps_serving(decode_worker: Worker) -> None:
    addr = decode_worker.addr
    too_long = pb.DecodeRequest(request_id="a", prompt_token_ids=[5] * 5000, sampling=GREEDY)
    bad_kv = pb.DecodeRequest(request_id="b", prompt_token_ids=[5, 6], sampling=GREEDY, kv_transfer_params_json="[")
    zero = pb.DecodeRequest(request_id="c", prompt_token_ids=[5, 6], sampling=pb.SamplingParams(max_tokens=0))
    empty = pb.DecodeRequest(request_id="d", prompt_token_ids=[], sampling=GREEDY)
    for request in (too_long, bad_kv, zero, empty):
        assert _code(addr, request) is grpc.StatusCode.INVALID_ARGUMENT
    chunks = asyncio.run(_decode(addr, pb.DecodeRequest(request_id="e", prompt_token_ids=[5, 6], sampling=GREEDY)))
    assert chunks[-1].finish_reason == pb.FINISH_REASON_LENGTH and chunks[-1].completion_tokens == 8
    assert "Traceback" not in decode_worker.log.read_text()


def test_cancelled_stream_aborts_the_engine_request(decode_worker: Worker) -> None:
    async def run() -> pb.WorkerLoad:
        async with grpc.aio.insecure_channel(decode_worker.addr) as ch:
            stub = pb_grpc.DecodeWorkerStub(ch)
            call = stub.Decode(
                pb.DecodeRequest(
                    request_id="long",
                    prompt_token_ids=[5, 6, 7],
                    sampling=pb.SamplingParams(max_tokens=3000, temperature=0, top_p=1, ignore_eos=True),
                ),
                timeout=120,
            )
            async for _ in call:
                break
            busy = await stub.Load(pb.LoadRequest(), timeout=5)
            assert busy.num_running + busy.num_inflight >= 1
            call.cancel()
            for _ in range(60):
                load = await stub.Load(pb.LoadRequest(), timeout=5)
                if load.num_running == load.num_inflight == 0:
                    return load
                await asyncio.sleep(0.5)
            return load

    load = asyncio.run(run())
    assert load.num_running == 0 and load.num_waiting == 0 and load.num_inflight == 0


def test_sigterm_drains_in_flight_stream_then_exits_zero(fresh_decode_worker: Worker) -> None:
    decode_worker = fresh_decode_worker

    async def run() -> tuple[list[pb.DecodeChunk], grpc.StatusCode | None]:
        async with grpc.aio.insecure_channel(decode_worker.addr) as ch:
            stub = pb_grpc.DecodeWorkerStub(ch)
            call = stub.Decode(
                pb.DecodeRequest(
                    request_id="drain",
                    prompt_token_ids=[5, 6],
                    sampling=pb.SamplingParams(max_tokens=1500, temperature=0, top_p=1, ignore_eos=True),
                ),
                timeout=120,
            )
            chunks = [await call.read()]  # the stream has started; now stop the worker
            decode_worker.proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(1.0)
            refused = None
            try:
                await stub.Load(pb.LoadRequest(), timeout=5)  # reads are still answered while draining
                await _decode(
                    decode_worker.addr, pb.DecodeRequest(request_id="late", prompt_token_ids=[5], sampling=GREEDY)
                )
            except grpc.aio.AioRpcError as exc:
                refused = exc.code()
            while (chunk := await call.read()) is not grpc.aio.EOF:
                chunks.append(chunk)
            return chunks, refused

    chunks, refused = asyncio.run(run())
    assert chunks[-1].finish_reason == pb.FINISH_REASON_LENGTH and chunks[-1].completion_tokens == 1500
    # UNAVAILABLE while draining; CANCELLED if the (tiny, fast) in-flight stream had already
    # finished and the server was stopping. Routers retry both elsewhere (router/recovery.py).
    assert refused in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    assert decode_worker.proc.wait(120) == 0


def test_engine_death_ends_the_worker_with_a_clear_log_line(fresh_decode_worker: Worker) -> None:
    decode_worker = fresh_decode_worker
    engine_cores = [
        p for p in psutil.Process(decode_worker.proc.pid).children(recursive=True) if "EngineCore" in p.name()
    ]
    assert engine_cores
    for proc in engine_cores:
        proc.kill()
    assert decode_worker.proc.wait(120) == 1
    assert "engine died" in decode_worker.log.read_text()
