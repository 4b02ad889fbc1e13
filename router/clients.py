"""gRPC clients for the workers. Every call carries a deadline.

Errors surface as ``WorkerError`` with the gRPC status code, so the orchestrator
decides (retry, fall back, fail) without knowing gRPC types. What a request needs
of a worker is the ``PrefillWorker`` / ``DecodeWorker`` Protocol: the pools hold
those, so scripted test workers stand in without gRPC.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any, Protocol

import grpc

from pdserve.engine.base import EngineInfo, EngineLoad, PrefillResult, SamplingSpec, TokenDelta
from pdserve.rpc import convert
from pdserve.security import WorkerLink
from pdserve.types import RequestId, WorkerId
from pdserve.v1 import worker_pb2 as pb
from pdserve.v1 import worker_pb2_grpc as pb_grpc
from router.errors import WorkerError

CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    # Reconnect quickly after a worker restarts (gRPC's default backoff grows to 120 s).
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 5_000),
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", 64 << 20),
]


class PrefillWorker(Protocol):
    """A prefill worker as one request uses it. Raises ``WorkerError``."""

    @property
    def worker(self) -> WorkerId: ...

    async def prefill(
        self, request_id: RequestId, prompt: list[int], spec: SamplingSpec, timeout: float
    ) -> PrefillResult: ...


class DecodeWorker(Protocol):
    """A decode worker as one request uses it. Raises ``WorkerError``."""

    @property
    def worker(self) -> WorkerId: ...

    def decode(
        self,
        request_id: RequestId,
        prompt: list[int],
        spec: SamplingSpec,
        kv_transfer_params: dict[str, Any] | None,
        timeout: float,
    ) -> AsyncGenerator[TokenDelta, None]:
        """Stream deltas. Closing the iterator ends the request on the worker."""
        ...

    async def release(self, request_id: RequestId, kv_transfer_params: dict[str, Any], timeout: float) -> None: ...


def _error(worker: WorkerId, exc: grpc.aio.AioRpcError) -> WorkerError:
    return WorkerError(worker, exc.code(), exc.details() or "")


class _WorkerClient:
    def __init__(self, address: str, link: WorkerLink | None = None) -> None:
        self.worker = WorkerId(address)
        link = link or WorkerLink()
        self._channel = link.channel(address, CHANNEL_OPTIONS)
        self._metadata = link.metadata  # the worker token, sent with every call

    _stub: Any  # both services have Info and Load

    async def close(self) -> None:
        await self._channel.close()

    async def info(self, timeout: float, wait_for_ready: bool = False) -> EngineInfo:
        """``wait_for_ready``: wait (within ``timeout``) for a worker that is still starting."""
        try:
            msg = await self._stub.Info(
                pb.InfoRequest(), timeout=timeout, wait_for_ready=wait_for_ready, metadata=self._metadata
            )
            return convert.info_from_pb(msg)
        except grpc.aio.AioRpcError as exc:
            raise _error(self.worker, exc) from None

    async def load(self, timeout: float) -> EngineLoad:
        try:
            return convert.load_from_pb(
                await self._stub.Load(pb.LoadRequest(), timeout=timeout, metadata=self._metadata)
            )
        except grpc.aio.AioRpcError as exc:
            raise _error(self.worker, exc) from None


class PrefillClient(_WorkerClient):
    def __init__(self, address: str, link: WorkerLink | None = None) -> None:
        super().__init__(address, link)
        self._stub = pb_grpc.PrefillWorkerStub(self._channel)

    async def prefill(
        self, request_id: RequestId, prompt: list[int], spec: SamplingSpec, timeout: float
    ) -> PrefillResult:
        req = pb.PrefillRequest(request_id=request_id, prompt_token_ids=prompt, sampling=convert.sampling_to_pb(spec))
        try:
            resp = await self._stub.Prefill(req, timeout=timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            raise _error(self.worker, exc) from None
        return convert.prefill_from_pb(resp)


class DecodeClient(_WorkerClient):
    def __init__(self, address: str, link: WorkerLink | None = None) -> None:
        super().__init__(address, link)
        self._stub = pb_grpc.DecodeWorkerStub(self._channel)

    async def decode(
        self,
        request_id: RequestId,
        prompt: list[int],
        spec: SamplingSpec,
        kv_transfer_params: dict[str, Any] | None,
        timeout: float,
    ) -> AsyncGenerator[TokenDelta, None]:
        """Stream deltas. Closing the iterator cancels the RPC, which aborts the engine request."""
        req = pb.DecodeRequest(
            request_id=request_id,
            prompt_token_ids=prompt,
            sampling=convert.sampling_to_pb(spec),
            kv_transfer_params_json=convert.kv_params_to_json(kv_transfer_params),
        )
        call = self._stub.Decode(req, timeout=timeout, metadata=self._metadata)
        try:
            async for chunk in call:
                yield convert.delta_from_pb(chunk)
        except grpc.aio.AioRpcError as exc:
            raise _error(self.worker, exc) from None
        finally:
            call.cancel()  # no-op when the stream already ended

    async def release(self, request_id: RequestId, kv_transfer_params: dict[str, Any], timeout: float) -> None:
        """Have the prefill worker named in ``kv_transfer_params`` free that KV unread."""
        req = pb.ReleaseRequest(
            request_id=request_id, kv_transfer_params_json=convert.kv_params_to_json(kv_transfer_params)
        )
        try:
            await self._stub.Release(req, timeout=timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            raise _error(self.worker, exc) from None
