"""Who may put a worker in front of the routers: registry records signed with a shared secret.

Anyone who can write to the registry's Redis could otherwise register any address and
receive the routers' requests — with the worker token in their metadata. So a worker
signs its record (HMAC-SHA256 over every field, ``WorkerRecord.payload``) with the
registry secret, and a router dials only records whose signature one of its secrets
verifies. Several secrets are accepted at once (rotation: add the new one to the
routers, move the workers to it, then drop the old one); a worker signs with its first.

With no secret configured (local development) records go unsigned and a router trusts
every valid record; both say so loudly at start-up. A router with a secret refuses
unsigned records.

What it does not stop: replay. A record copied from a live worker names that worker's
address (it is signed), so a replayed one sends traffic only where a real worker runs
or ran; a worker's address is reused only by the orchestrator.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac

from pdserve.state.base import MalformedRecord, WorkerRecord


class UntrustedRecord(ValueError):
    """A registry entry a router must not dial; ``reason`` is its metrics label
    (``malformed``, ``unsigned``, ``bad_signature``)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class RegistryTrust:
    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        self._keys = tuple(s.encode() for s in secrets)

    @property
    def enabled(self) -> bool:
        """Records are signed and checked (a secret is configured)."""
        return bool(self._keys)

    def sign(self, record: WorkerRecord) -> WorkerRecord:
        """``record`` signed with the first secret; unchanged (unsigned) without one."""
        if not self._keys:
            return record
        return dataclasses.replace(record, signature=_mac(self._keys[0], record))

    def check(self, entry: str) -> WorkerRecord:
        """The record of a registry entry, if it is valid and (with secrets) signed with one
        of them; else ``UntrustedRecord``. Every secret is compared, in constant time."""
        try:
            record = WorkerRecord.from_json(entry)
        except MalformedRecord as exc:
            raise UntrustedRecord("malformed", str(exc)) from None
        if not self._keys:
            return record
        if not record.signature:
            raise UntrustedRecord("unsigned", f"worker {record.worker_id}: unsigned record")
        ok = False
        for key in self._keys:
            ok |= hmac.compare_digest(record.signature, _mac(key, record))
        if not ok:
            raise UntrustedRecord("bad_signature", f"worker {record.worker_id}: no registry secret signed it")
        return record


def _mac(key: bytes, record: WorkerRecord) -> str:
    return hmac.new(key, record.payload(), hashlib.sha256).hexdigest()
