"""Freeing a prefill's KV that no decode will read.

A remote prefill keeps the prompt's KV on its engine until the decode side reads it.
When the decode fails, or its caller leaves, before the first token, nothing may ever
read it, and the prefill engine holds it until its KV lease runs out (``--kv-lease-s``):
it cannot free it early itself (vLLM does not abort a finished request). A decode
worker can, by telling the prefill side the KV will not be read (DecodeWorker.Release).

The same holds for a prefill whose caller leaves while its RPC is in flight. Cancelling
the RPC aborts a prefill the engine still runs, but one the engine has just finished (its
answer on its way) keeps its KV, and the router never learns the handle to release it: on
a 2-core test host three of a soak's eight early leavers left KV to the lease that way. So
the RPC gets a moment to answer (``settle``), and what it answers is released.

Fire-and-forget: the client's request never waits for a release, and a release that
fails leaves the KV to the lease. One that comes after the KV was read is harmless
(the prefill worker logs a notice for an unknown request).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from pdserve.types import RequestId, WorkerId
from router.clients import DecodeWorker
from router.errors import WorkerError
from router.pool import ModelPool

log = logging.getLogger(__name__)

TRIES = 2  # the decode worker the request was on, then one other


class KvReleaser:
    """Starts releases on the event loop and keeps their tasks until they end."""

    def __init__(self, timeout_s: float, on_released: Callable[[], None]) -> None:
        self._timeout_s = timeout_s  # per Release RPC
        self._on_released = on_released
        self._tasks: set[asyncio.Task[None]] = set()

    def release(
        self, pool: ModelPool, request_id: RequestId, kv_transfer_params: dict[str, Any], decode: WorkerId
    ) -> None:
        """Release through ``decode`` (the worker the request was placed on, which may have
        failed), else another live decode worker of ``pool``. Returns at once."""
        workers = [decode, *(w for w in pool.live("decode") if w != decode)][:TRIES]
        clients = [pool.decode[w] for w in workers if w in pool.decode]
        self._keep(self._release(clients, request_id, kv_transfer_params))

    def settle(
        self,
        pool: ModelPool,
        request_id: RequestId,
        prefill: asyncio.Future[Any],
        decode: WorkerId,
        within_s: float,
    ) -> None:
        """``prefill``, a prefill RPC whose caller left, gets ``within_s`` to answer: its KV
        is then released as ``release`` does; past that it is cancelled (the engine aborts a
        prefill still running). Returns at once."""

        async def settled() -> None:
            try:
                result = await asyncio.wait_for(prefill, within_s)  # cancels it past within_s
            except (TimeoutError, WorkerError, asyncio.CancelledError):
                return  # aborted, failed or never answered: no handle (a lost race is the lease's)
            log.debug("%s: a prefill answered after its caller left; releasing its KV", request_id)
            self.release(pool, request_id, result.kv_transfer_params, decode)

        self._keep(settled())

    def _keep(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _release(self, clients: list[DecodeWorker], request_id: RequestId, params: dict[str, Any]) -> None:
        for client in clients:
            try:
                await client.release(request_id, params, timeout=self._timeout_s)
            except WorkerError as exc:
                log.debug("%s: %s did not release the prefill's KV: %s", request_id, client.worker, exc)
                continue
            log.debug("%s: the prefill's unread KV released through %s", request_id, client.worker)
            self._on_released()
            return
        log.warning("%s: no decode worker released the prefill's unread KV; its lease frees it", request_id)
