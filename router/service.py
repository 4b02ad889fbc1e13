"""The router's domain object: OpenAI request → token-space Generation → chunks.

Routes call this and only translate; every rule about what a request may ask
for lives here (vLLM's OpenAI server is the reference for edge cases).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from pdserve.engine.base import SamplingSpec
from pdserve.state.memory import MemoryStore
from router.admission import ANONYMOUS, Admission, AdmissionLimits
from router.api.schemas import ChatCompletionRequest, CompletionRequest, _SamplingFields
from router.metrics import RouterMetrics
from router.orchestrator import Chunk, Generation, Orchestrator
from router.pool import ModelPool


class UnknownModelError(LookupError):
    pass


class BadRequestError(ValueError):
    """The request asks for something this server cannot do; ``param`` names the field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


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
        self.metrics = metrics
        self.admission = admission or Admission(AdmissionLimits(), MemoryStore())
        metrics.watch(self.admission.gate)

    def pool(self, model: str) -> ModelPool:
        try:
            return self.pools[model]
        except KeyError:
            raise UnknownModelError(f"The model `{model}` does not exist.") from None

    def completion(self, req: CompletionRequest, arrival: float) -> tuple[ModelPool, Generation]:
        pool = self.pool(req.model)
        _unsupported(req)
        if req.echo or req.suffix is not None or (req.best_of or 1) > 1:
            raise BadRequestError("echo, suffix and best_of are not supported", "echo")
        prompt = req.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            if len(prompt) != 1:
                raise BadRequestError("only one prompt per request is supported", "prompt")
            prompt = prompt[0]
        ids = pool.tokenizer.encode(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
        return pool, self._generation(pool, req, ids, req.max_tokens, arrival)

    def chat(self, req: ChatCompletionRequest, arrival: float) -> tuple[ModelPool, Generation]:
        pool = self.pool(req.model)
        _unsupported(req)
        if req.tools or req.response_format not in (None, {"type": "text"}):
            raise BadRequestError("tools and response_format are not supported", "tools")
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        try:
            ids = pool.tokenizer.encode_chat(messages)
        except ValueError as exc:
            raise BadRequestError(str(exc), "messages") from None
        limit = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        return pool, self._generation(pool, req, ids, limit, arrival)

    def generate(self, pool: ModelPool, gen: Generation, client: str = ANONYMOUS) -> AsyncIterator[Chunk]:
        """The request's chunks, once admission control lets it in (``RateLimited`` /
        ``Overloaded`` are raised by the first ``anext``)."""
        chunks = self._orchestrator.generate(pool, gen)
        return self.admission.admitted(client, len(gen.prompt_ids), gen.spec.max_tokens, chunks)

    def _generation(
        self, pool: ModelPool, req: _SamplingFields, ids: Sequence[int], max_tokens: int | None, arrival: float
    ) -> Generation:
        room = pool.max_model_len - len(ids)
        if room < 1:
            raise BadRequestError(
                f"This model's maximum context length is {pool.max_model_len} tokens. "
                f"However, your prompt has {len(ids)} tokens.",
                "messages" if hasattr(req, "messages") else "prompt",
            )
        if not ids:
            raise BadRequestError("the prompt is empty", "prompt")
        vocab = pool.tokenizer.vocab_size
        if any(t >= vocab for t in ids):
            raise BadRequestError(f"token ids must be below the vocabulary size {vocab}", "prompt")
        stop_ids = tuple(req.stop_token_ids or ())
        if any(t >= vocab for t in stop_ids):
            raise BadRequestError(f"stop_token_ids must be below the vocabulary size {vocab}", "stop_token_ids")
        if not req.ignore_eos:
            stop_ids += tuple(t for t in pool.tokenizer.eos_token_ids if t not in stop_ids)
        # Like vLLM: a max_tokens past the context is reduced to what fits.
        limit = min(max_tokens, room) if max_tokens is not None else room
        if req.min_tokens > limit:
            raise BadRequestError(f"min_tokens ({req.min_tokens}) is more than max_tokens ({limit})", "min_tokens")
        spec = SamplingSpec(
            max_tokens=limit,
            temperature=req.temperature,
            top_p=req.top_p,
            top_k=max(req.top_k, 0),
            seed=req.seed,
            stop_token_ids=stop_ids,
            ignore_eos=req.ignore_eos,
            min_tokens=req.min_tokens,
        )
        return Generation(list(ids), spec, req.stop_strings(), arrival)


def _unsupported(req: _SamplingFields) -> None:
    if req.n != 1:
        raise BadRequestError("n > 1 is not supported yet", "n")
    if req.logprobs not in (None, False):
        raise BadRequestError("logprobs are not supported yet", "logprobs")
    if req.presence_penalty or req.frequency_penalty:
        raise BadRequestError("presence_penalty and frequency_penalty are not supported yet", "presence_penalty")
