"""PrefillWorker servicer: translates wire ⇄ domain and calls the engine, nothing else."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from pdserve.engine.base import PrefillEngine
from pdserve.rpc import convert
from pdserve.types import RequestId
from pdserve.v1 import worker_pb2 as pb
from pdserve.v1 import worker_pb2_grpc as pb_grpc
from pdserve.worker import errors
from pdserve.worker.errors import ErrorHook
from pdserve.worker.server import RpcGate


class PrefillServicer(pb_grpc.PrefillWorkerServicer):
    def __init__(self, engine: PrefillEngine, gate: RpcGate, on_error: ErrorHook | None = None) -> None:
        self._engine = engine
        self._gate = gate
        self._on_error = on_error

    async def Prefill(self, request: pb.PrefillRequest, context: grpc.aio.ServicerContext) -> pb.PrefillResponse:
        async def call() -> pb.PrefillResponse:
            with self._gate.admit():
                result = await self._engine.prefill(
                    RequestId(request.request_id),
                    list(request.prompt_token_ids),
                    convert.sampling_from_pb(request.sampling),
                )
            return pb.PrefillResponse(
                first_token_id=result.first_token_id,
                cached_tokens=result.cached_tokens,
                kv_transfer_params_json=convert.kv_params_to_json(result.kv_transfer_params),
            )

        return await errors.unary(context, call, self._on_error)

    async def Info(self, request: pb.InfoRequest, context: grpc.aio.ServicerContext) -> pb.WorkerInfo:
        async def call() -> pb.WorkerInfo:
            return convert.info_to_pb(self._engine.info())

        return await errors.unary(context, call, self._on_error)

    async def Load(self, request: pb.LoadRequest, context: grpc.aio.ServicerContext) -> pb.WorkerLoad:
        async def call() -> pb.WorkerLoad:
            return convert.load_to_pb(await self._engine.load(), self._gate.inflight)

        return await errors.unary(context, call, self._on_error)


def register(servicer: PrefillServicer) -> Callable[[grpc.aio.Server], None]:
    def add(server: grpc.aio.Server) -> None:
        pb_grpc.add_PrefillWorkerServicer_to_server(servicer, server)

    return add
