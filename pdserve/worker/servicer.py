"""What both roles' servicers answer alike: the worker's identity (Info) and load (Load)."""

from __future__ import annotations

from typing import Generic, TypeVar

import grpc

from pdserve.engine.base import DecodeEngine, PrefillEngine
from pdserve.rpc import convert
from pdserve.v1 import worker_pb2 as pb
from pdserve.worker import errors
from pdserve.worker.errors import ErrorHook
from pdserve.worker.server import RpcGate

E = TypeVar("E", PrefillEngine, DecodeEngine)


class WorkerServicer(Generic[E]):
    """Base of each role's servicer (mixed in before the generated one): holds the engine,
    the RPC gate that counts requests in flight, and the error hook every RPC reports to."""

    def __init__(self, engine: E, gate: RpcGate, on_error: ErrorHook | None = None) -> None:
        self._engine: E = engine
        self._gate = gate
        self._on_error = on_error

    async def Info(self, request: pb.InfoRequest, context: grpc.aio.ServicerContext) -> pb.WorkerInfo:
        async def call() -> pb.WorkerInfo:
            return convert.info_to_pb(self._engine.info())

        return await errors.unary(context, call, self._on_error)

    async def Load(self, request: pb.LoadRequest, context: grpc.aio.ServicerContext) -> pb.WorkerLoad:
        async def call() -> pb.WorkerLoad:
            return convert.load_to_pb(await self._engine.load(), self._gate.inflight)

        return await errors.unary(context, call, self._on_error)
