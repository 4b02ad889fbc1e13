"""Worker processes over real gRPC with a real vLLM CPU engine on a tiny random Llama:
status codes, cancellation, SIGTERM drain and engine death."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import psutil
import pytest

from pdserve.v1 import worker_pb2 as pb
from pdserve.v1 import worker_pb2_grpc as pb_grpc
from tests.factories import make_tiny_llama
from tests.helpers.workers import GREEDY, Worker, start_decode_worker, start_decode_workers, stop_worker

pytestmark = pytest.mark.engine


# The module's context. With a CPU hog beside the suite, three 4000-token streams ended in
# 15 s, each before a starved Load call answered; a stream of CONTEXT tokens lasts ~8x as
# long, so a check made while it runs is not outrun by it, and a cancelled one that was not
# aborted would still be running when the cancel test's 30-s wait for an idle engine ends.
CONTEXT = 32768
WORKER_ARGS = ("--max-model-len", str(CONTEXT))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = make_tiny_llama(tmp_path_factory.mktemp("tiny-model"))
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "max_position_embeddings": CONTEXT}))
    return path


# Tests below that end their worker and need one no request has reached (SIGTERM drain):
# each gets one of its own. The engine-death test, last in the module, ends the shared one.
ENDING_TESTS = 1


@dataclass
class ModuleWorkers:
    shared: Worker  # for the tests that leave it serving
    spares: list[Worker]  # untouched; a test that ends its worker takes one


@pytest.fixture(scope="module")
def module_workers(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleWorkers]:
    """Every worker the module needs, started together: starts one after another were most
    of the module's time on 2 cores."""
    tmp = tmp_path_factory.mktemp("decode")
    logs = [tmp / f"decode{i}.log" for i in range(1 + ENDING_TESTS)]
    workers = start_decode_workers(tiny_model, logs, *WORKER_ARGS)
    module = ModuleWorkers(workers[0], workers[1:])
    yield module
    for worker in [module.shared, *module.spares]:  # those taken were stopped by their test
        stop_worker(worker)


@pytest.fixture(scope="module")
def decode_worker(module_workers: ModuleWorkers) -> Worker:
    """Shared by the tests that leave the worker serving, then ended by the module's last test."""
    return module_workers.shared


@pytest.fixture
def fresh_decode_worker(module_workers: ModuleWorkers, tiny_model: Path, tmp_path: Path) -> Iterator[Worker]:
    """For tests that end the worker: a spare no request has reached (a new worker once
    the spares are used up, as when a test runs again)."""
    spares = module_workers.spares
    worker = spares.pop(0) if spares else start_decode_worker(tiny_model, tmp_path / "decode.log", *WORKER_ARGS)
    yield worker
    stop_worker(worker)


async def _decode(addr: str, request: pb.DecodeRequest) -> list[pb.DecodeChunk]:
    async with grpc.aio.insecure_channel(addr) as ch:
        return [c async for c in pb_grpc.DecodeWorkerStub(ch).Decode(request, timeout=120)]


def _code(addr: str, request: pb.DecodeRequest) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        asyncio.run(_decode(addr, request))
    return err.value.code()


def test_bad_requests_map_to_invalid_argument_and_worker_keeps_serving(decode_worker: Worker) -> None:
    addr = decode_worker.addr
    too_long = pb.DecodeRequest(request_id="a", prompt_token_ids=[5] * (CONTEXT + 1000), sampling=GREEDY)
    bad_kv = pb.DecodeRequest(request_id="b", prompt_token_ids=[5, 6], sampling=GREEDY, kv_transfer_params_json="[")
    zero = pb.DecodeRequest(request_id="c", prompt_token_ids=[5, 6], sampling=pb.SamplingParams(max_tokens=0))
    empty = pb.DecodeRequest(request_id="d", prompt_token_ids=[], sampling=GREEDY)
    for request in (too_long, bad_kv, zero, empty):
        assert _code(addr, request) is grpc.StatusCode.INVALID_ARGUMENT
    chunks = asyncio.run(_decode(addr, pb.DecodeRequest(request_id="e", prompt_token_ids=[5, 6], sampling=GREEDY)))
    assert chunks[-1].finish_reason == pb.FINISH_REASON_LENGTH and chunks[-1].completion_tokens == 8
    assert "Traceback" not in decode_worker.log.read_text()


LONG = pb.SamplingParams(max_tokens=CONTEXT - 100, temperature=0, top_p=1, ignore_eos=True)


def test_cancelled_stream_aborts_the_engine_request(decode_worker: Worker) -> None:
    async def cancelled_while_busy(stub: pb_grpc.DecodeWorkerStub, attempt: int) -> bool:
        """Cancel a long stream the worker was seen running; False when the tiny model
        finished it before the load check could look (a CPU-starved client), so the
        cancel proves nothing and the caller tries again."""
        call = stub.Decode(
            pb.DecodeRequest(request_id=f"long-{attempt}", prompt_token_ids=[5, 6, 7], sampling=LONG), timeout=120
        )
        assert await call.read() is not grpc.aio.EOF
        # A backstop, not a guess: on a starved 2-core box a busy worker took over 5 s to
        # answer Load (fresh-clone run 8), and one answered only after the stream ended.
        busy = await stub.Load(pb.LoadRequest(), timeout=120)
        if busy.num_running + busy.num_inflight == 0:
            last = None
            while (chunk := await call.read()) is not grpc.aio.EOF:  # read() only: gRPC forbids mixing in a for
                last = chunk
            assert last is not None and last.finish_reason == pb.FINISH_REASON_LENGTH  # it ran to its end
            return False
        call.cancel()
        return True

    async def run() -> pb.WorkerLoad:
        async with grpc.aio.insecure_channel(decode_worker.addr) as ch:
            stub = pb_grpc.DecodeWorkerStub(ch)
            for attempt in range(3):
                if await cancelled_while_busy(stub, attempt):
                    break
            else:
                raise AssertionError("the worker finished every long stream before one load check")
            for _ in range(60):
                load = await stub.Load(pb.LoadRequest(), timeout=120)
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


def test_engine_death_ends_the_worker_with_a_clear_log_line(decode_worker: Worker) -> None:
    engine_cores = [
        p for p in psutil.Process(decode_worker.proc.pid).children(recursive=True) if "EngineCore" in p.name()
    ]
    assert engine_cores
    for proc in engine_cores:
        proc.kill()
    assert decode_worker.proc.wait(120) == 1
    assert "engine died" in decode_worker.log.read_text()
