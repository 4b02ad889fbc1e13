"""The shared registry as a router reads it: only records it can trust become workers.

A router dials a registered worker with the worker token, so it must know the record
came from a worker: each entry is validated (``WorkerRecord.from_json``: types, ranges)
and, with a registry secret, its signature verified (pdserve.state.trust) BEFORE any
connection is made. An entry that fails is skipped — never fatal to discovery —
counted by reason (``on_reject``) and logged at most once a minute per reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from pdserve.kv.hashing import SCHEME
from pdserve.state import StateStore, WorkerRecord
from pdserve.state.trust import RegistryTrust, UntrustedRecord

log = logging.getLogger(__name__)

LOG_EVERY_S = 60.0


class RegistryReader:
    def __init__(self, store: StateStore, trust: RegistryTrust, on_reject: Callable[[str], None] | None = None) -> None:
        self._store = store
        self._trust = trust
        self._on_reject = on_reject
        self._logged_at: dict[str, float] = {}  # reason → when it was last logged
        self._quiet: dict[str, int] = {}  # reason → rejections since

    async def records(self) -> list[WorkerRecord]:
        """The trusted live records; ``StoreUnavailable`` if the store does not answer."""
        out = []
        for entry in await self._store.entries():
            try:
                record = self._trust.check(entry)
                if record.hash_scheme != SCHEME:
                    raise UntrustedRecord(
                        "hash_scheme", f"worker {record.worker_id} hashes with {record.hash_scheme}, we with {SCHEME}"
                    )
            except UntrustedRecord as exc:
                self.reject(exc.reason, str(exc))
                continue
            out.append(record)
        return out

    def reject(self, reason: str, why: str) -> None:
        """Count (and now and then log) a record skipped for ``reason``."""
        if self._on_reject is not None:
            self._on_reject(reason)
        now = time.monotonic()
        if now - self._logged_at.get(reason, -LOG_EVERY_S) < LOG_EVERY_S:
            self._quiet[reason] = self._quiet.get(reason, 0) + 1
            return
        self._logged_at[reason] = now
        since = self._quiet.pop(reason, 0)
        more = f" ({since} more since the last such message)" if since else ""
        log.warning("registry entry skipped (%s): %s%s", reason, why[:300], more)
