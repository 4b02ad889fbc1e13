"""A worker's presence in the shared registry, and its KV events in the block index.

Runs only when the worker is given a state store (``--state-url``); with static
worker lists the router finds workers itself. ``Registration.run`` registers,
heart-beats every ``ttl_s / 3`` (registering again if the entry expired, e.g.
while Redis was down) and follows the engine's KV events into the index; each
of the two loops is restarted with backoff if it fails (pdserve.supervise).
``deregister`` is the first step of a graceful stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import uuid
from dataclasses import dataclass

from pdserve.engine.base import EngineInfo
from pdserve.flags import flag, group
from pdserve.kv.events import EventSubscriber
from pdserve.kv.feed import IndexFeed, follow
from pdserve.kv.hashing import SCHEME
from pdserve.security import TlsFiles, read_secrets
from pdserve.state import StateAccess, StateStore, StoreUnavailable, WorkerRecord, check_namespace, make_store
from pdserve.state.trust import RegistryTrust
from pdserve.supervise import Supervisor
from pdserve.types import WorkerId
from pdserve.worker.metrics import WorkerMetrics

log = logging.getLogger(__name__)

STORE_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class RegistrationOptions:
    state_url: str = flag(
        "",
        env="PDSERVE_STATE_URL",
        help="register in this shared store (redis://host:port, rediss:// for TLS) and feed it the engine's "
        "KV events; "
        "none: the router has a static worker list",
    )
    advertise: str = flag(
        "",
        env="PDSERVE_ADVERTISE",
        help="host:port routers dial (default --host:--port; required when --host is 0.0.0.0)",
    )
    state_namespace: str = flag(
        "pdserve",
        env="PDSERVE_STATE_NAMESPACE",
        help="prefix of this cluster's keys in --state-url (the routers' flag must match)",
    )
    ttl_s: float = flag(
        10.0,
        name="--heartbeat-ttl",
        env="PDSERVE_HEARTBEAT_TTL_S",
        help="seconds a registration lives without a heartbeat",
    )
    state_access: StateAccess = group("shared state access", default_factory=StateAccess)
    registry_secret_file: str = flag(
        "",
        env="PDSERVE_REGISTRY_SECRET_FILE",
        help="sign this worker's registry record with the file's first secret (also the comma-separated "
        "PDSERVE_REGISTRY_SECRET); routers configured with a secret dial only signed records",
    )
    secrets: tuple[str, ...] = ()  # read by ``with_secrets``; the first signs
    state_password: str = ""  # read by ``with_secrets``

    def __post_init__(self) -> None:
        if self.ttl_s <= 0:
            raise ValueError("heartbeat_ttl_s must be > 0")
        check_namespace(self.state_namespace)
        _ = self.state_tls  # ValueError naming the flag: a file missing, or TLS files without rediss://

    @property
    def state_tls(self) -> TlsFiles:
        return self.state_access.tls(self.state_url)

    def with_secrets(self) -> RegistrationOptions:
        """These options with the registry secrets and the store's password read (file, then variable)."""
        return dataclasses.replace(
            self,
            secrets=read_secrets(self.registry_secret_file, "PDSERVE_REGISTRY_SECRET"),
            state_password=self.state_access.password(),
        )


class Registration:
    def __init__(
        self, store: StateStore, record: WorkerRecord, ttl_s: float, metrics: WorkerMetrics | None = None
    ) -> None:
        self._store = store
        self.record = record
        self._ttl_s = ttl_s
        self._up: bool | None = None
        self._feed: IndexFeed | None = None
        self._metrics = metrics  # loop restarts, store errors

    @classmethod
    def create(
        cls,
        options: RegistrationOptions,
        worker_id: WorkerId,
        info: EngineInfo,
        metrics: WorkerMetrics | None = None,
    ) -> Registration:
        record = WorkerRecord(
            worker_id=worker_id,
            role=info.role,
            model=info.model,
            block_size=info.block_size,
            hash_scheme=SCHEME,
            capacity_tokens=info.kv_capacity_tokens,
            instance_id=uuid.uuid4().hex,
            kv_events=info.kv_events,
            kv_replay=info.kv_replay,
            ttl_ms=int(options.ttl_s * 1000),
        )
        trust = RegistryTrust(options.secrets)
        if not trust.enabled:
            log.warning(
                "NO REGISTRY SECRET: this worker's record goes unsigned; routers with a secret will not dial it, "
                "and anyone who can write to the store can register addresses. Set PDSERVE_REGISTRY_SECRET or "
                "--registry-secret-file outside local development."
            )
        # Heartbeats and index writes run in the background: a longer timeout than a
        # router's per-request reads, so a starved CPU does not flap the registration.
        store = make_store(
            options.state_url,
            timeout_s=STORE_TIMEOUT_S,
            namespace=options.state_namespace,
            password=options.state_password,
            tls=options.state_tls,
        )
        return cls(store, trust.sign(record), options.ttl_s, metrics)

    async def run(self) -> None:
        """Heartbeat and follow KV events until cancelled."""
        loops = Supervisor(self._metrics.loop_restarted if self._metrics is not None else None)
        loops.spawn("heartbeat", self._heartbeat)
        if self.record.kv_events:
            self._feed = IndexFeed(self._store, self.record.model, self.record.worker_id, self.record.block_size)
            loops.spawn("kv_feed", self._follow)
        try:
            await asyncio.Event().wait()  # until cancelled
        finally:
            await loops.close()

    async def _follow(self) -> None:
        assert self._feed is not None
        self._feed.dirty = True  # a restarted feed may have missed events: rewrite the block set
        await follow(EventSubscriber(self.record.kv_events, self.record.kv_replay), self._feed)

    async def _heartbeat(self) -> None:
        registered = False
        while True:
            try:
                if not registered or not await self._store.heartbeat(self.record.worker_id, self._ttl_s):
                    await self._store.register(self.record, self._ttl_s)
                    log.info("registered as %s (%s, %s)", self.record.worker_id, self.record.role, self.record.model)
                    if registered and self._feed is not None:  # the store lost us (e.g. Redis restarted empty)
                        self._feed.dirty = True
                        await self._feed.resync()
                registered = True
                self._set_up(True)
            except StoreUnavailable as exc:
                if self._metrics is not None:
                    self._metrics.store_failed(exc.kind)
                self._set_up(False, str(exc))
            await asyncio.sleep(self._ttl_s / 3)

    def _set_up(self, up: bool, why: str = "") -> None:
        if up != self._up:
            (log.info if up else log.warning)("state store %s%s", "reachable" if up else "unreachable: ", why)
        self._up = up

    async def deregister(self) -> None:
        with contextlib.suppress(StoreUnavailable):
            await self._store.deregister(self.record.worker_id)
            log.info("deregistered %s", self.record.worker_id)

    async def close(self) -> None:
        await self._store.close()
