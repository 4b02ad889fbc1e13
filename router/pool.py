"""The workers serving one model, and what the router knows of their load.

Mutated on the event loop only, through its own methods: the fleet joins and
removes workers and records their Load polls, requests are counted while they
run on a worker, failures and successes feed the pool's outlier ejection
(router/outliers.py). Placement reads a snapshot (``WorkerView`` per candidate).
Every per-worker map is pruned when the worker leaves or its count returns to zero.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType
from typing import TypeVar

import grpc

from pdserve.engine.base import EngineInfo, EngineLoad
from pdserve.types import WorkerId
from router.clients import DecodeWorker, PrefillWorker
from router.errors import WorkerError
from router.outliers import Ejections, Failure, OutlierPolicy
from router.placement.base import Stream, WorkerView
from router.tokenizer import TokenIdsOnly, Tokenizer

_C = TypeVar("_C", PrefillWorker, DecodeWorker)


class ModelPool:
    """One served model: its tokenizer, limits and workers."""

    def __init__(
        self,
        name: str,
        tokenizer: Tokenizer | TokenIdsOnly,
        max_model_len: int,
        block_size: int,
        vllm_version: str = "",
        prefill: Mapping[WorkerId, PrefillWorker] | None = None,
        decode: Mapping[WorkerId, DecodeWorker] | None = None,
        *,
        sampling_defaults: Mapping[str, float] | None = None,
        scheduling_policy: str = "fcfs",
        max_logprobs: int = 20,
        model_path: str = "",
        outliers: OutlierPolicy | None = None,
    ) -> None:
        self.name = name
        self.model_path = model_path  # where the first worker loaded the model ("" if it reports none)
        self.tokenizer = tokenizer
        self.block_size = block_size
        self.vllm_version = vllm_version
        # The model's generation config (router/generation_config.py): what a request leaves unset.
        self.sampling_defaults: Mapping[str, float] = MappingProxyType(dict(sampling_defaults or {}))
        # Every worker of the pool schedules alike: a join that differs is refused (add_*).
        self.scheduling_policy = scheduling_policy
        self._max_model_len = max_model_len  # until a worker reports its own
        self._max_logprobs = max_logprobs
        self._limits: dict[WorkerId, tuple[int, int]] = {}  # worker → (max_model_len, max_logprobs)
        self._fingerprints: dict[WorkerId, str] = {}  # the decode workers' (they write the output)
        self._prefill: dict[WorkerId, PrefillWorker] = dict(prefill or {})
        self._decode: dict[WorkerId, DecodeWorker] = dict(decode or {})
        self._inflight: Counter[WorkerId] = Counter()
        self._prefill_tokens: Counter[WorkerId] = Counter()  # uncached prompt tokens in flight
        self._streams: dict[WorkerId, dict[int, Stream]] = {}  # decode streams in flight, by id()
        self._loads: dict[WorkerId, EngineLoad] = {}  # last Load poll
        self._polled_inflight: Counter[WorkerId] = Counter()  # ``_inflight`` at that poll
        self._ejections = Ejections(outliers or OutlierPolicy())

    @property
    def priority_scheduling(self) -> bool:
        """Requests may carry a ``priority`` (both engines schedule by it)."""
        return self.scheduling_policy == "priority"

    @property
    def max_model_len(self) -> int:
        """The smallest context of the pool's workers now (it goes up again when the worker
        with the smallest leaves)."""
        return min((lens for lens, _ in self._limits.values()), default=self._max_model_len)

    @property
    def system_fingerprint(self) -> str | None:
        """The decode workers' fingerprint when they all report the same one (responses carry
        it as vLLM's server does); None for a mixed or silent fleet."""
        prints = set(self._fingerprints.values())
        return prints.pop() if len(prints) == 1 and "" not in prints else None

    @property
    def max_logprobs(self) -> int:
        """The fewest top logprobs per position any of the pool's workers computes (vLLM's
        ``max_logprobs``, which the workers report): a request asking for more is a 400."""
        return min((n for _, n in self._limits.values()), default=self._max_logprobs)

    @property
    def prefill(self) -> Mapping[WorkerId, PrefillWorker]:
        return MappingProxyType(self._prefill)

    @property
    def decode(self) -> Mapping[WorkerId, DecodeWorker]:
        return MappingProxyType(self._decode)

    @property
    def down(self) -> frozenset[WorkerId]:
        """Workers ejected from placement (router/outliers.py)."""
        return self._ejections.ejected

    def tracked(self) -> dict[str, int]:
        """Sizes of the per-worker maps (a churn test checks they stay bounded)."""
        return {
            "inflight": len(self._inflight),
            "prefill_tokens": len(self._prefill_tokens),
            "streams": len(self._streams),
            "loads": len(self._loads),
            "polled_inflight": len(self._polled_inflight),
            "fingerprints": len(self._fingerprints),
            "ejections": len(self._ejections),
        }

    # --- membership (the fleet) ---------------------------------------------------------

    def add_prefill(self, client: PrefillWorker, info: EngineInfo) -> None:
        self._join(info, client.worker)
        self._prefill[client.worker] = client

    def add_decode(self, client: DecodeWorker, info: EngineInfo) -> None:
        self._join(info, client.worker)
        self._decode[client.worker] = client
        self._fingerprints[client.worker] = info.system_fingerprint

    def _join(self, info: EngineInfo, worker: WorkerId) -> None:
        """Values that must agree within a model's pool (the P/D pair shares KV layout)."""
        for attr in ("block_size", "vllm_version", "scheduling_policy"):
            if getattr(info, attr) != getattr(self, attr):
                raise ValueError(
                    f"worker {worker}: {attr} {getattr(info, attr)!r}, pool {self.name!r} has {getattr(self, attr)!r}"
                )
        self._limits[worker] = (info.max_model_len, info.max_logprobs)

    def remove(self, worker: WorkerId) -> None:
        """The worker leaves; requests in flight on it keep the client they hold."""
        self._prefill.pop(worker, None)
        self._decode.pop(worker, None)
        self._fingerprints.pop(worker, None)
        self._limits.pop(worker, None)
        self._loads.pop(worker, None)
        self._polled_inflight.pop(worker, None)
        self._ejections.forget(worker)

    # --- health and load ----------------------------------------------------------------

    def failed(self, worker: WorkerId, failure: Failure) -> bool:
        """A request, probe or Load poll of ``worker`` failed; True if that ejected it.
        A worker that already left is not counted."""
        role = self._prefill if worker in self._prefill else self._decode
        if worker not in role:
            return False
        return self._ejections.failed(worker, failure, role.keys())

    def succeeded(self, worker: WorkerId) -> None:
        """A request on ``worker`` finished: its failure counts start again."""
        self._ejections.succeeded(worker)

    def probe_due(self) -> list[WorkerId]:
        """Ejected workers to probe now; each must be answered with ``probed``."""
        return self._ejections.probe_due()

    def probed(self, worker: WorkerId, ok: bool) -> None:
        self._ejections.probed(worker, ok)

    def record_load(self, worker: WorkerId, load: EngineLoad) -> None:
        """A Load poll's answer, and how many of its requests were this router's then
        (a poll that returns after the worker left is dropped)."""
        if worker not in self._prefill and worker not in self._decode:
            return
        self._loads[worker] = load
        self._polled_inflight[worker] = self._inflight[worker]

    def busy(self, worker: WorkerId) -> bool:
        """Requests of this router run on ``worker`` (``counted``)."""
        return self._inflight[worker] > 0

    @contextmanager
    def counted(self, worker: WorkerId, prefill_tokens: int = 0) -> Iterator[None]:
        """One request on ``worker`` (and its uncached prompt tokens) while inside."""
        self._inflight[worker] += 1
        self._prefill_tokens[worker] += prefill_tokens
        try:
            yield
        finally:
            _decrement(self._inflight, worker, 1)
            _decrement(self._prefill_tokens, worker, prefill_tokens)

    @contextmanager
    def streaming(self, worker: WorkerId, stream: Stream) -> Iterator[None]:
        """``stream`` runs on decode ``worker`` while inside (``streams``)."""
        on = self._streams.setdefault(worker, {})
        on[id(stream)] = stream
        try:
            yield
        finally:
            on.pop(id(stream), None)
            if not on:
                self._streams.pop(worker, None)

    def streams(self, worker: WorkerId) -> tuple[Stream, ...]:
        """The decode streams this router runs on ``worker`` now."""
        return tuple(self._streams.get(worker, {}).values())

    def kv_slow(self) -> dict[WorkerId, str]:
        """Decode workers whose measured KV path is under their floor, with the numbers."""
        out = {}
        for worker in self._decode:
            kv = self._loads.get(worker, EngineLoad()).kv_path
            if kv.slow:
                out[worker] = f"{kv.path} at {kv.bandwidth_bps / 1e9:.3g} GB/s, floor {kv.floor_bps / 1e9:.3g} GB/s"
        return out

    # --- what placement and requests read ----------------------------------------------

    def live(self, role: str, exclude: frozenset[WorkerId] = frozenset()) -> list[WorkerId]:
        """The role's workers in placement, less ``exclude``."""
        workers = self._prefill if role == "prefill" else self._decode
        # Every decode worker failing its poll: try them anyway rather than refuse outright.
        out = self._ejections.ejected
        up = [w for w in workers if w not in out] or (list(workers) if role == "decode" else [])
        return [w for w in up if w not in exclude]

    def snapshot(self, workers: list[WorkerId], matched: Mapping[WorkerId, int]) -> list[WorkerView]:
        """What placement sees of ``workers``; ``matched``: leading prompt blocks each holds."""
        return [self.view(w, matched.get(w, 0)) for w in workers]

    def view(self, worker: WorkerId, matched_blocks: int = 0) -> WorkerView:
        load = self._loads.get(worker, EngineLoad())
        return WorkerView(
            worker_id=worker,
            inflight=self._inflight[worker],
            running=load.num_running,
            waiting=load.num_waiting,
            kv_usage=load.kv_cache_usage,
            prefill_tokens=self._prefill_tokens[worker],
            matched_blocks=matched_blocks,
            polled_inflight=self._polled_inflight[worker],
        )

    def prefill_client(self, worker: WorkerId) -> PrefillWorker:
        return _client(self._prefill, worker)

    def decode_client(self, worker: WorkerId) -> DecodeWorker:
        return _client(self._decode, worker)


def _decrement(counts: Counter[WorkerId], worker: WorkerId, by: int) -> None:
    """Count down; a worker's entry goes at zero (workers come and go: the maps stay bounded)."""
    counts[worker] -= by
    if counts[worker] <= 0:
        del counts[worker]


def _client(clients: dict[WorkerId, _C], worker: WorkerId) -> _C:
    """A worker the fleet removed after placement chose it fails like one that went away."""
    try:
        return clients[worker]
    except KeyError:
        raise WorkerError(worker, grpc.StatusCode.UNAVAILABLE, "left the pool") from None
