"""Wire identities. Typed so a worker address is never passed where a request id belongs."""

from __future__ import annotations

from typing import NewType

RequestId = NewType("RequestId", str)
WorkerId = NewType("WorkerId", str)  # the worker's gRPC address, "host:port"
BlockHash = NewType("BlockHash", int)  # pdserve's chained hash of one full KV block (pdserve.kv.hashing)


def to_hex(h: BlockHash) -> str:
    """A block hash as the shared index spells it (Redis keys, logs): 16 hex digits."""
    return f"{h:016x}"
