"""The router's domain object: one call per request, admission, orchestration and
metrics stacked in one place.

Routes (router/api/app.py) only translate: they validate the OpenAI body into a
``Generation`` against the model's pool (router/api/validate.py), call ``serve``,
and render the ``Answer``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Sequence

from pdserve.state.memory import MemoryStore
from router.admission import ANONYMOUS, Admission, AdmissionLimits
from router.errors import UnknownModelError
from router.metrics import RouterMetrics
from router.orchestrator import Orchestrator
from router.pool import ModelPool
from router.request import Answer, Chunk, Generation


class RouterService:
    def __init__(
        self,
        pools: dict[str, ModelPool],
        orchestrator: Orchestrator,
        metrics: RouterMetrics,
        admission: Admission | None = None,
    ) -> None:
        self.pools = pools
        self._orchestrator = orchestrator
        self._metrics = metrics
        self.admission = admission or Admission(AdmissionLimits(), MemoryStore())
        metrics.watch(self.admission.gate)

    def pool(self, model: str | None) -> ModelPool:
        """The named model's pool; no name (vLLM allows omitting it) means the first
        served model, as ``vllm serve`` takes its first served name."""
        if model is None:
            served = [name for name, _ in self.served_models()]
            if not served:
                raise UnknownModelError("no model is served yet")
            model = served[0]
        try:
            return self.pools[model]
        except KeyError:
            raise UnknownModelError(f"The model `{model}` does not exist.") from None

    async def serve(
        self, model: str | None, generations: Callable[[ModelPool], Sequence[Generation]], client: str = ANONYMOUS
    ) -> Answer:
        """One request: ``generations`` validates it against the model's pool, into one
        Generation per prompt (a completions batch has several). Admission (``RateLimited`` /
        ``Overloaded``) charges the sum over prompts of prompt + n·max_tokens; admission,
        placement and the first chunk happen before this returns, so every error before the
        first token is raised here."""
        pool = self.pool(model)
        gens = generations(pool)
        n = gens[0].n
        prompts = tuple(tuple(gen.prompt_ids) for gen in gens)
        chunks = self._orchestrator.generate(pool, gens)
        budget = sum(gen.spec.max_tokens * gen.n for gen in gens)
        admitted = self.admission.admitted(client, sum(map(len, prompts)), budget, chunks)
        observed = self._metrics.observe(gens[0].arrival, [len(p) for p in prompts], n, admitted)
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
        )

    def served_models(self) -> list[tuple[str, int]]:
        """(name, max_model_len) of each model with a decode worker: one whose workers
        all left is not served."""
        return [(name, pool.max_model_len) for name, pool in self.pools.items() if pool.decode]

    def rejected(self, reason: str) -> None:
        """A request refused before it reached the service (auth, validation, errors)."""
        self._metrics.rejections.labels(reason).inc()

    def responded(self, route: str, status: int) -> None:
        self._metrics.requests.labels(route, str(status)).inc()

    def exposition(self) -> bytes:
        """The Prometheus text of the router's metrics."""
        return self._metrics.exposition()


async def _first(chunks: AsyncGenerator[Chunk, None]) -> Chunk:
    try:
        return await anext(chunks)
    except BaseException:
        await chunks.aclose()
        raise
