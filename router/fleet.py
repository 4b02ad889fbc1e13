"""The router's view of the fleet: pools per model, kept current.

Sources of workers: the static ``--prefill/--decode`` lists (asked for their
Info at start-up) and the shared registry (workers that register themselves,
re-read every ``refresh_s``; one that stops heart-beating leaves when its
entry has been gone for its heartbeat TTL). A registered worker is dialled
only once its record is trusted (router/registry.py), and joins only if its
Info agrees with its record and is sane. Every worker's Load is polled every ``poll_s``;
a poll that fails or times out counts against the worker in its pool's outlier ejection
(router/outliers.py), and an ejected worker whose time is up is probed
(router/probe.py) before it returns. With an in-process store
the router also follows each worker's KV events into its block index (with
Redis, the workers feed the index themselves).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from pdserve import heap
from pdserve.engine.base import EngineInfo
from pdserve.kv.events import EventSubscriber
from pdserve.kv.feed import IndexFeed, follow
from pdserve.security import WorkerLink
from pdserve.state import StateStore, StoreUnavailable, WorkerRecord
from pdserve.state.trust import RegistryTrust
from pdserve.supervise import Supervisor
from pdserve.types import WorkerId
from router.clients import DecodeClient, PrefillClient
from router.errors import WorkerError, WorkerFailure
from router.generation_config import sampling_defaults
from router.generations import Generations
from router.metrics import RouterMetrics
from router.outliers import Failure, OutlierPolicy
from router.pool import ModelPool
from router.probe import probe
from router.registry import RegistryReader
from router.tokenizer import TokenIdsOnly, Tokenizer, load_tokenizer

log = logging.getLogger(__name__)

Client = PrefillClient | DecodeClient
INFO_WAIT_S = 15.0
MAX_TOKENIZERS = 16


async def wait_for_info(client: Client, deadline_s: float) -> EngineInfo:
    """Ask a worker for its Info, waiting while it starts (engines take ~1 min on CPU)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while True:
        try:
            return await client.info(timeout=min(INFO_WAIT_S, max(0.1, end - loop.time())), wait_for_ready=True)
        except WorkerError as exc:
            if loop.time() >= end or exc.code is not grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
            log.info("still waiting for worker %s", client.worker)


@dataclass(frozen=True)
class FleetOptions:
    refresh_s: float = 1.0
    poll_s: float = 0.5
    rpc_timeout_s: float = 2.0
    follow_events: bool = True  # the router feeds its own (in-process) block index
    link: WorkerLink = field(default_factory=WorkerLink)  # TLS and token for dialling workers
    trust: RegistryTrust = field(default_factory=RegistryTrust)  # which registry records may be dialled
    # A registered worker leaves the pool once its entry has been gone for the heartbeat TTL
    # its record states (a restarted, empty Redis is refilled by the workers' next heartbeats,
    # every TTL/3); this for records that state none. It leaves placement sooner: at its
    # first failed Load poll.
    missing_grace_s: float = 10.0
    reasoning_parser: str = ""  # the router's --reasoning-parser; workers' engines should gate grammars alike
    outliers: OutlierPolicy = field(default_factory=OutlierPolicy)  # every pool's ejection policy


MAX_CONTEXT = 1 << 24  # a worker reporting a longer context (or none) is not believed


def check_info(record: WorkerRecord, info: EngineInfo) -> None:
    """``ValueError`` unless a registered worker's Info agrees with its record and is sane."""
    for attr in ("role", "model", "block_size"):
        if getattr(info, attr) != getattr(record, attr):
            raise ValueError(f"its Info says {attr} {getattr(info, attr)!r}, its record {getattr(record, attr)!r}")
    if not 0 < info.max_model_len <= MAX_CONTEXT:
        raise ValueError(f"max_model_len {info.max_model_len} outside [1, {MAX_CONTEXT}]")


class TokenizerSource:
    """Tokenizer and sampling defaults per served model, from its directory: an explicit
    ``--tokenizer NAME=DIR``, else the directory the worker reports (same host or shared
    volume), else ``fallback``. ``generation_config``: ``--generation-config``."""

    def __init__(self, explicit: dict[str, str], fallback: str, generation_config: str = "auto") -> None:
        self._explicit = explicit
        self._fallback = fallback
        self._generation_config = generation_config
        # Most recently used last; at most MAX_TOKENIZERS (a pool keeps its own tokenizer, so
        # an evicted one is only loaded again when that model's next worker joins).
        self._cache: OrderedDict[str, tuple[Tokenizer | TokenIdsOnly, dict[str, float]]] = OrderedDict()

    def get(self, model: str, model_path: str) -> Tokenizer | TokenIdsOnly:
        return self._load(model, model_path)[0]

    def sampling_defaults(self, model: str, model_path: str) -> dict[str, float]:
        return dict(self._load(model, model_path)[1])

    def _load(self, model: str, model_path: str) -> tuple[Tokenizer | TokenIdsOnly, dict[str, float]]:
        if model not in self._cache:
            path = self._explicit.get(model) or (
                model_path if model_path and (Path(model_path) / "config.json").is_file() else self._fallback
            )
            if not path:  # the router never converts a model to get one
                raise ValueError(
                    f"model {model}: no tokenizer: its workers report no readable model directory"
                    f" ({model_path or 'none'}); give the router --tokenizer {model}=DIR or --model DIR"
                )
            defaults = sampling_defaults(self._generation_config, path)
            self._cache[model] = (load_tokenizer(path), defaults)
            # the tokenizer's tables live as long as the pool: out of the collector's walks
            heap.freeze(f"loading the tokenizer of {model}", collect=False)
            log.info("model %s: tokenizer from %s; sampling defaults %s", model, path, defaults or "vLLM's")
            while len(self._cache) > MAX_TOKENIZERS:
                self._cache.popitem(last=False)
        self._cache.move_to_end(model)
        return self._cache[model]

    def __len__(self) -> int:
        return len(self._cache)


class Fleet:
    def __init__(
        self,
        store: StateStore,
        tokenizers: TokenizerSource,
        options: FleetOptions,
        metrics: RouterMetrics | None = None,
    ) -> None:
        self._generations = Generations()
        self.pools = self._generations.active  # model → the pool requests go to (router/generations.py)
        self._store = store
        self._tokenizers = tokenizers
        self._options = options
        self._metrics = metrics
        self._registry = RegistryReader(store, options.trust, metrics.registry_rejected if metrics else None)
        self._grace: dict[WorkerId, float] = {}  # registered worker → seconds it may be missing
        self._where: dict[WorkerId, ModelPool] = {}  # worker → the pool it joined
        self._clients: dict[WorkerId, Client] = {}  # polled for Load, closed at the end
        self._static: set[WorkerId] = set()
        self._instances: dict[WorkerId, str] = {}  # registry instance ids seen
        self._missing_since: dict[WorkerId, float] = {}
        self._retired: list[tuple[ModelPool, Client]] = []  # left, closed once no request uses them
        self._loops = Supervisor(metrics.loop_restarted if metrics else None)
        self._probes: dict[WorkerId, asyncio.Task[None]] = {}  # at most one per ejected worker

    async def add_static(self, prefill: list[str], decode: list[str], startup_timeout_s: float) -> None:
        link = self._options.link
        clients: list[Client] = [*(PrefillClient(a, link) for a in prefill), *(DecodeClient(a, link) for a in decode)]
        infos = await asyncio.gather(*(wait_for_info(c, startup_timeout_s) for c in clients))
        for client, info in zip(clients, infos, strict=True):
            self._static.add(client.worker)
            self._add(client, info)

    def start(self) -> None:
        """Discovery and Load polls, each restarted with backoff if it fails."""
        self._loops.spawn("discovery", self._refresh_loop)
        self._loops.spawn("load_poll", self._poll_loop)

    def loops_down(self) -> dict[str, str]:
        """Background loops waiting to restart, and why (for /health)."""
        return self._loops.down()

    def _add(self, client: Client, info: EngineInfo) -> None:
        worker = client.worker
        if info.role != ("prefill" if isinstance(client, PrefillClient) else "decode"):
            raise ValueError(f"worker {worker} is a {info.role} worker")
        pool = self._generations.pool_for(info, self._new_pool)
        try:
            if isinstance(client, PrefillClient):
                pool.add_prefill(client, info)
            else:
                pool.add_decode(client, info)
        finally:
            self._generations.settle(info.model)  # a refused first worker leaves no empty pool
        self._where[worker] = pool
        self._clients[worker] = client
        if self._options.follow_events and info.kv_events:
            feed = IndexFeed(self._store, info.model, worker, info.block_size)
            self._loops.spawn(f"kv_feed:{worker}", lambda: _follow(feed, info))
        self._warn_on_grammar_gating(worker, info)
        log.info("%s worker %s joined model %s", info.role, worker, info.model)
        self._changed()

    def _warn_on_grammar_gating(self, worker: WorkerId, info: EngineInfo) -> None:
        """vllm serve's one --reasoning-parser both splits the output and makes the engine's
        grammars wait for the end of reasoning; here the router and the workers each take it."""
        if info.engine != "vllm" or info.reasoning_parser == self._options.reasoning_parser:
            return
        log.warning(
            "%s worker %s: its engine's reasoning parser is %r, the router's %r: structured outputs and "
            "forced tool calls will %s the reasoning, unlike vllm serve (give both the same "
            "--reasoning-parser / PDSERVE_REASONING_PARSER)",
            info.role,
            worker,
            info.reasoning_parser,
            self._options.reasoning_parser,
            "wait for the end of" if info.reasoning_parser else "constrain",
        )

    def _new_pool(self, info: EngineInfo) -> ModelPool:
        return ModelPool(
            name=info.model,
            tokenizer=self._tokenizers.get(info.model, info.model_path),
            max_model_len=info.max_model_len,
            block_size=info.block_size,
            vllm_version=info.vllm_version,
            sampling_defaults=self._tokenizers.sampling_defaults(info.model, info.model_path),
            scheduling_policy=info.scheduling_policy,
            max_logprobs=info.max_logprobs,
            model_path=info.model_path,
            outliers=self._options.outliers,
        )

    def _remove(self, worker: WorkerId) -> None:
        pool = self._where.pop(worker, None)
        if pool is None:
            return
        model = pool.name
        pool.remove(worker)
        self._generations.settle(model)
        client = self._clients.pop(worker, None)
        if client is not None:
            self._retired.append((pool, client))  # requests in flight may still use it
        self._loops.stop(f"kv_feed:{worker}")
        log.info("worker %s left model %s", worker, model)
        self._changed()

    def _changed(self) -> None:
        if self._metrics is not None:
            self._metrics.fleet_changed(self.pools)

    async def refresh(self) -> None:
        """Join registered workers that are new (or restarted); drop expired ones."""
        try:
            records = await self._registry.records()
        except StoreUnavailable:
            return  # keep the current view
        live = {r.worker_id: r for r in records}
        now = asyncio.get_running_loop().time()
        for worker in [w for w in self._where if w not in self._static and w not in live]:
            since = self._missing_since.setdefault(worker, now)
            if now - since >= self._grace.get(worker, self._options.missing_grace_s):
                self._remove(worker)
                self._instances.pop(worker, None)
                self._missing_since.pop(worker, None)
                self._grace.pop(worker, None)
        for worker in live:
            self._missing_since.pop(worker, None)
        for record in records:
            if self._instances.get(record.worker_id) == record.instance_id or record.worker_id in self._static:
                continue
            if record.worker_id in self._where:
                self._remove(record.worker_id)  # restarted: a new instance
            await self._join(record)

    async def _join(self, record: WorkerRecord) -> None:
        """Dial a trusted record's worker (the only place a registered address is dialled)."""
        kind = PrefillClient if record.role == "prefill" else DecodeClient
        client: Client = kind(record.worker_id, self._options.link)
        try:
            info = await client.info(timeout=self._options.rpc_timeout_s)
            check_info(record, info)
        except ValueError as exc:
            self._registry.reject("bad_info", f"worker {record.worker_id}: {exc}")
            await client.close()
            return
        except WorkerError as exc:
            log.warning("registered worker %s not joined: %s", record.worker_id, exc)
            await client.close()
            return
        try:
            self._add(client, info)
        except ValueError as exc:
            log.warning("registered worker %s not joined: %s", record.worker_id, exc)
            await client.close()
            return
        self._instances[record.worker_id] = record.instance_id
        self._grace[record.worker_id] = record.ttl_ms / 1000 or self._options.missing_grace_s

    async def _refresh_loop(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self._options.refresh_s)

    async def poll(self) -> None:
        jobs = [(self._where[w], c) for w, c in self._clients.items()]
        results = await asyncio.gather(
            *(c.load(timeout=self._options.rpc_timeout_s) for _, c in jobs), return_exceptions=True
        )
        for (pool, client), result in zip(jobs, results, strict=True):
            if isinstance(result, WorkerError):
                # A poll past its deadline counts as slowness; a busy CPU engine may answer
                # one late, so it takes OutlierPolicy.max_timeouts in a row to eject.
                gone = result.code is grpc.StatusCode.UNAVAILABLE
                slow = result.code is grpc.StatusCode.DEADLINE_EXCEEDED
                if gone or slow:
                    pool.failed(client.worker, Failure.GONE if gone else Failure.TIMEOUT)
            elif isinstance(result, BaseException):
                raise result
            else:
                pool.record_load(client.worker, result)
        self._start_probes()
        await self._close_retired()

    async def _close_retired(self) -> None:
        """Close the channels of workers that left once no request runs on that address:
        a request takes its client from the pool inside ``pool.counted``."""
        idle = [(pool, c) for pool, c in self._retired if not pool.busy(c.worker)]
        self._retired = [(pool, c) for pool, c in self._retired if pool.busy(c.worker)]
        for _, client in idle:
            await client.close()

    def _start_probes(self) -> None:
        for pool in self.pools.values():
            for worker in pool.probe_due():
                client = self._clients.get(worker)
                if client is None:
                    pool.probed(worker, False)
                    continue
                self._probes[worker] = asyncio.create_task(self._probe(pool, client))

    async def _probe(self, pool: ModelPool, client: Client) -> None:
        try:
            await probe(client, self._options.outliers.probe_timeout_s)
        except WorkerFailure as exc:
            log.warning("worker %s failed its probe: %s", client.worker, exc)
            pool.probed(client.worker, False)
        else:
            pool.probed(client.worker, True)
        finally:
            self._probes.pop(client.worker, None)

    async def _poll_loop(self) -> None:
        while True:
            await self.poll()
            await asyncio.sleep(self._options.poll_s)

    async def close(self) -> None:
        await self._loops.close()
        probes = list(self._probes.values())
        for task in probes:
            task.cancel()
        await asyncio.gather(*probes, return_exceptions=True)
        for client in [*self._clients.values(), *(c for _, c in self._retired)]:
            await client.close()


async def _follow(feed: IndexFeed, info: EngineInfo) -> None:
    """One worker's KV events into this router's own index; a restart rewrites its block set."""
    feed.dirty = True
    await follow(EventSubscriber(info.kv_events, info.kv_replay), feed)
