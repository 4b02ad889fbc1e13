"""Freeing a prefill's KV that no decode will read.

A remote prefill keeps the prompt's KV on its engine until the decode side reads it.
When the decode fails, or its caller leaves, before the first token, nothing may ever
read it, and the prefill engine holds it until its KV lease runs out (``--kv-lease-s``):
it cannot free it early itself (vLLM does not abort a finished request). A decode
worker can, by telling the prefill side the KV will not be read (DecodeWorker.Release).

Fire-and-forget: the client's request never waits for a release, and a release that
fails leaves the KV to the lease. One that comes after the KV was read is harmless
(the prefill worker logs a notice for an unknown request).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
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
        task = asyncio.get_running_loop().create_task(self._release(clients, request_id, kv_transfer_params))
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
