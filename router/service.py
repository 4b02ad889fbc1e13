"""The router's domain object: one call per request, admission, orchestration and
metrics stacked in one place.

Routes (router/api/app.py) only translate: they validate the OpenAI body into a
``Generation`` against the model's pool (router/api/validate.py), call ``serve``,
and render the ``Answer``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pdserve.state.memory import MemoryStore
from router.admission import ANONYMOUS, Admission, AdmissionLimits
from router.errors import UnknownModelError
from router.metrics import RouterMetrics
from router.orchestrator import Orchestrator
from router.pool import ModelPool
from router.request import Answer, Chunk, Generation

PREPARE_THREADS = 4
T = TypeVar("T")


@dataclass(frozen=True)
class Background:
    """What runs behind the requests: loops waiting to restart (name → why) and whether the
    shared state store answers (False: serving from this router's local view)."""

    loops_down: Mapping[str, str] = field(default_factory=dict)
    store_up: bool = True
    store_down_kind: str = ""  # why it is down: a StoreUnavailable kind (e.g. "tls": a refused handshake)


@dataclass(frozen=True)
class Health:
    """The router's models: ``served`` have a decode worker; ``without_decode`` have workers
    (prefill only), none of which decodes, so every request for them fails with a 503.
    ``background``: degradations that do not stop serving (a loop restarting, Redis down)."""

    served: tuple[str, ...]
    without_decode: tuple[str, ...]
    background: Background = field(default_factory=Background)
    kv_slow: Mapping[str, str] = field(default_factory=dict)  # decode worker → its slow KV path, measured

    @property
    def ok(self) -> bool:
        """Every model the router knows can be served, and there is one."""
        return bool(self.served) and not self.without_decode

    @property
    def degraded(self) -> bool:
        return bool(self.background.loops_down) or not self.background.store_up or bool(self.kv_slow)


class RouterService:
    def __init__(
        self,
        pools: dict[str, ModelPool],
        orchestrator: Orchestrator,
        metrics: RouterMetrics,
        admission: Admission | None = None,
        background: Callable[[], Background] = Background,
    ) -> None:
        self.pools = pools
        self._background = background
        self._orchestrator = orchestrator
        self._metrics = metrics
        self.admission = admission or Admission(AdmissionLimits(), MemoryStore())
        metrics.watch(self.admission.gate, pools)
        # Chat templating and tokenizing: off the event loop, which streams every other
        # request's tokens. Fast tokenizers release the GIL while they encode.
        self._prepare = ThreadPoolExecutor(max_workers=PREPARE_THREADS, thread_name_prefix="tokenize")

    def close(self) -> None:
        self._prepare.shutdown(wait=False, cancel_futures=True)

    async def prepare(self, work: Callable[..., T], *args: Any) -> T:
        """``work(*args)`` on the templating/tokenizing threads, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._prepare, work, *args)

    def pool(self, model: str | None) -> ModelPool:
        """The named model's pool; no name (vLLM allows omitting it) means the first
        served model, as ``vllm serve`` takes its first served name."""
        if model is None:
            served = self.served()
            if not served:
                raise UnknownModelError("no model is served yet")
            return served[0]
        try:
            return self.pools[model]
        except KeyError:
            raise UnknownModelError(f"The model `{model}` does not exist.") from None

    async def serve(
        self,
        model: str | None,
        generations: Callable[[ModelPool], Sequence[Generation]],
        client: str = ANONYMOUS,
        cache_salt: str = "",
        inline: bool = False,
    ) -> Answer:
        """One request: ``generations`` validates it against the model's pool, into one
        Generation per prompt (a completions batch has several); it runs once the client
        has a slot (``Overloaded``), on a worker thread, or on the event loop when
        ``inline`` (a small request: api/body.py). The rate limit (``RateLimited``) then
        charges the sum over prompts of prompt + n·max_tokens. Placement and the first
        chunk happen before this returns, so every error before the first token is raised
        here. ``cache_salt``: the client's prefix-cache salt, set by the operator
        (router/tenants.py)."""
        pool = self.pool(model)
        ticket = await self.admission.gate.acquire(client)
        try:
            prepared = generations(pool) if inline else await self.prepare(generations, pool)
            gens = _salted(prepared, cache_salt)
            n = gens[0].n
            prompts = tuple(tuple(gen.prompt_ids) for gen in gens)
            chunks = self._orchestrator.generate(pool, gens)
            budget = sum(gen.spec.max_tokens * gen.n for gen in gens)
            admitted = self.admission.admitted(client, sum(map(len, prompts)), budget, chunks, ticket)
            observed = self._metrics.observe(gens[0].arrival, [len(p) for p in prompts], n, admitted)
        except BaseException:
            ticket.release()
            raise
        first = await _first(observed)
        tok = pool.tokenizer
        return Answer(
            pool.name,
            prompts,
            n,
            first,
            observed,
            tok.token_texts,
            lambda ids: tok.decode(ids, skip_special_tokens=False),
            pool.system_fingerprint,
        )

    def served(self) -> list[ModelPool]:
        """The pools of the models served now: those with a decode worker (one whose
        workers all left is not served)."""
        # A snapshot (one C call): a large body's size check asks from a preparing thread
        # while discovery may add a pool on the event loop.
        return [pool for pool in tuple(self.pools.values()) if pool.decode]

    def health(self) -> Health:
        """The models with a worker, by whether one decodes. A model whose workers all left
        is not counted: nothing tells it from one retired (/v1/models drops it too)."""
        known = [pool for pool in self.pools.values() if pool.prefill or pool.decode]
        return Health(
            tuple(pool.name for pool in known if pool.decode),
            tuple(pool.name for pool in known if not pool.decode),
            self._background(),
            {w: why for pool in known for w, why in pool.kv_slow().items()},
        )

    def vllm_version(self) -> str:
        """The vLLM version the workers run: the first served model's (the model a request
        without ``model`` gets; versions agree within a model); "" before a worker joined."""
        pools = self.served() or list(self.pools.values())
        return pools[0].vllm_version if pools else ""

    def rejected(self, reason: str) -> None:
        """A request refused before it reached the service (auth, validation, errors)."""
        self._metrics.rejections.labels(reason).inc()

    def responded(self, route: str, status: int) -> None:
        self._metrics.requests.labels(route, str(status)).inc()

    def exposition(self) -> bytes:
        """The Prometheus text of the router's metrics."""
        return self._metrics.exposition()


def _salted(gens: Sequence[Generation], salt: str) -> Sequence[Generation]:
    """The tenant's salt before the request's own: the tenant's cached blocks are shared
    with no other tenant's, whatever salt a request brings."""
    if not salt:
        return gens
    return [
        dataclasses.replace(g, spec=dataclasses.replace(g.spec, cache_salt=_salt(salt, g.spec.cache_salt)))
        for g in gens
    ]


def _salt(tenant: str, own: str) -> str:
    # length-prefixed: no (tenant, own) pair reads as another tenant's salt
    return f"{len(tenant)}:{tenant}:{own}" if own else tenant


async def _first(chunks: AsyncGenerator[Chunk, None]) -> Chunk:
    try:
        return await anext(chunks)
    except BaseException:
        await chunks.aclose()
        raise
