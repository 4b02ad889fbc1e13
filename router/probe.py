"""The probe that lets an ejected worker back into placement (router/outliers.py): a
one-token request through its engine. A Load poll is not enough: the server answers it
while the engine behind it is wedged.

A prefill probe's KV is not pulled by any decode worker: the prefill worker frees its
one block after its KV lease.
"""

from __future__ import annotations

import contextlib
import uuid

from pdserve.engine.base import FinishReason, SamplingSpec
from pdserve.types import RequestId
from router.clients import DecodeClient, PrefillClient
from router.errors import BrokenStreamError

PROMPT = [1, 2, 3, 4]  # valid in any vocabulary; the probe asks for no text
SPEC = SamplingSpec(max_tokens=1, temperature=0.0)


async def probe(client: PrefillClient | DecodeClient, timeout_s: float) -> None:
    """One token through the worker's engine; ``WorkerError`` / ``BrokenStreamError`` if not."""
    request_id = RequestId(f"probe-{uuid.uuid4().hex}")
    if isinstance(client, PrefillClient):
        await client.prefill(request_id, PROMPT, SPEC, timeout=timeout_s)
        return
    async with contextlib.aclosing(client.decode(request_id, PROMPT, SPEC, None, timeout=timeout_s)) as deltas:
        async for delta in deltas:
            if delta.finish_reason is not None:
                if delta.finish_reason in (FinishReason.ABORT, FinishReason.ERROR) or delta.completion_tokens < 1:
                    raise BrokenStreamError(client.worker, f"the probe ended {delta.finish_reason.value}")
                return
    raise BrokenStreamError(client.worker, "the probe's stream ended without a finish reason")
