"""PrefillWorker servicer: translates wire ⇄ domain and calls the engine, nothing else."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import grpc

from pdserve.engine.base import PrefillEngine
from pdserve.rpc import convert
from pdserve.types import RequestId
from pdserve.v1 import worker_pb2 as pb
from pdserve.v1 import worker_pb2_grpc as pb_grpc
from pdserve.worker import errors
from pdserve.worker.servicer import WorkerServicer

log = logging.getLogger("pdserve.prefill")


class PrefillServicer(WorkerServicer[PrefillEngine], pb_grpc.PrefillWorkerServicer):
    async def Prefill(self, request: pb.PrefillRequest, context: grpc.aio.ServicerContext) -> pb.PrefillResponse:
        async def call() -> pb.PrefillResponse:
            started = time.perf_counter()
            with self._gate.admit():
                result = await self._engine.prefill(
                    RequestId(request.request_id),
                    list(request.prompt_token_ids),
                    convert.sampling_from_pb(request.sampling),
                )
            log.info(
                "%s: prefilled %d tokens (%d cached) in %.3f s",
                request.request_id,
                len(request.prompt_token_ids),
                result.cached_tokens,
                time.perf_counter() - started,
            )
            return convert.prefill_to_pb(result)

        return await errors.unary(context, call, self._on_error)


def register(servicer: PrefillServicer) -> Callable[[grpc.aio.Server], None]:
    def add(server: grpc.aio.Server) -> None:
        pb_grpc.add_PrefillWorkerServicer_to_server(servicer, server)

    return add
