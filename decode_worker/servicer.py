"""DecodeWorker servicer: translates wire ⇄ domain and calls the engine, nothing else."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable

import grpc

from pdserve.engine.base import DecodeEngine
from pdserve.rpc import convert
from pdserve.types import RequestId
from pdserve.v1 import worker_pb2 as pb
from pdserve.v1 import worker_pb2_grpc as pb_grpc
from pdserve.worker import errors
from pdserve.worker.servicer import WorkerServicer

log = logging.getLogger("pdserve.decode")


class DecodeServicer(WorkerServicer[DecodeEngine], pb_grpc.DecodeWorkerServicer):
    async def Decode(
        self, request: pb.DecodeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.DecodeChunk]:
        # A cancelled RPC cancels this generator; closing the engine stream aborts the request.
        async for chunk in errors.stream(context, self._decode(request), self._on_error):
            yield chunk

    async def _decode(self, request: pb.DecodeRequest) -> AsyncIterator[pb.DecodeChunk]:
        received = time.perf_counter()
        with self._gate.admit():
            deltas = self._engine.decode(
                RequestId(request.request_id),
                list(request.prompt_token_ids),
                convert.sampling_from_pb(request.sampling),
                convert.kv_params_from_json(request.kv_transfer_params_json),
            )
            started, last, first = time.perf_counter(), None, True
            async for delta in deltas:
                last = delta
                chunk = convert.delta_to_pb(delta)
                if first and delta.token_ids:
                    chunk.first_token_s, first = time.perf_counter() - received, False
                yield chunk
            log.info(
                "%s: decoded %d tokens (%s) in %.3f s, %s",
                request.request_id,
                last.completion_tokens if last else 0,
                last.finish_reason.value if last and last.finish_reason else "unfinished",
                time.perf_counter() - started,
                "KV pulled" if request.kv_transfer_params_json else "prefilled here",
            )

    async def Release(self, request: pb.ReleaseRequest, context: grpc.aio.ServicerContext) -> pb.ReleaseResponse:
        # Not admitted: a notice takes no engine capacity, and a draining worker still
        # frees a prefill's KV that its own failed decode would have pulled.
        async def call() -> pb.ReleaseResponse:
            params = convert.kv_params_from_json(request.kv_transfer_params_json)
            if not params:
                raise ValueError("kv_transfer_params_json is empty: nothing to release")
            await self._engine.release(RequestId(request.request_id), params)
            return pb.ReleaseResponse()

        return await errors.unary(context, call, self._on_error)


def register(servicer: DecodeServicer) -> Callable[[grpc.aio.Server], None]:
    def add(server: grpc.aio.Server) -> None:
        pb_grpc.add_DecodeWorkerServicer_to_server(servicer, server)

    return add
