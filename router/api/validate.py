"""OpenAI request → token-space ``Generation``: every rule about what a request may ask
for (vLLM's OpenAI server is the reference for edge cases). Raises ``BadRequestError``."""

from __future__ import annotations

from collections.abc import Sequence

from pdserve.engine.base import SamplingSpec
from router.api.schemas import ChatCompletionRequest, CompletionRequest, SamplingFields
from router.errors import BadRequestError
from router.pool import ModelPool
from router.request import Generation


def completion(req: CompletionRequest, pool: ModelPool, arrival: float) -> Generation:
    _unsupported(req)
    if req.echo or req.suffix is not None or (req.best_of or 1) > 1:
        raise BadRequestError("echo, suffix and best_of are not supported", "echo")
    prompt = req.prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        if len(prompt) != 1:
            raise BadRequestError("only one prompt per request is supported", "prompt")
        prompt = prompt[0]
    try:
        ids = pool.tokenizer.encode(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
    except ValueError as exc:  # a model without a tokenizer takes token ids only
        raise BadRequestError(str(exc), "prompt") from None
    return _generation(pool, req, ids, req.max_tokens, arrival)


def chat(req: ChatCompletionRequest, pool: ModelPool, arrival: float) -> Generation:
    _unsupported(req)
    if req.tools or req.response_format not in (None, {"type": "text"}):
        raise BadRequestError("tools and response_format are not supported", "tools")
    messages = [{"role": m.role, "content": m.text()} for m in req.messages]
    try:
        ids = pool.tokenizer.encode_chat(messages)
    except ValueError as exc:
        raise BadRequestError(str(exc), "messages") from None
    limit = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    return _generation(pool, req, ids, limit, arrival)


def _unsupported(req: SamplingFields) -> None:
    if req.n != 1:
        raise BadRequestError("n > 1 is not supported yet", "n")
    if req.logprobs not in (None, False):
        raise BadRequestError("logprobs are not supported yet", "logprobs")
    if req.presence_penalty or req.frequency_penalty:
        raise BadRequestError("presence_penalty and frequency_penalty are not supported yet", "presence_penalty")


def _generation(
    pool: ModelPool, req: SamplingFields, ids: Sequence[int], max_tokens: int | None, arrival: float
) -> Generation:
    room = _room(pool, req, ids)
    stop_ids = _stop_ids(pool, req)
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


def _room(pool: ModelPool, req: SamplingFields, ids: Sequence[int]) -> int:
    """Tokens the context leaves for the completion, once the prompt is known valid."""
    room = pool.max_model_len - len(ids)
    if room < 1:
        raise BadRequestError(
            f"This model's maximum context length is {pool.max_model_len} tokens. "
            f"However, your prompt has {len(ids)} tokens.",
            "messages" if isinstance(req, ChatCompletionRequest) else "prompt",
        )
    if not ids:
        raise BadRequestError("the prompt is empty", "prompt")
    vocab = pool.tokenizer.vocab_size
    if any(t >= vocab for t in ids):
        raise BadRequestError(f"token ids must be below the vocabulary size {vocab}", "prompt")
    return room


def _stop_ids(pool: ModelPool, req: SamplingFields) -> tuple[int, ...]:
    """The request's stop token ids, then the model's EOS ids unless ``ignore_eos``."""
    vocab = pool.tokenizer.vocab_size
    stop_ids = tuple(req.stop_token_ids or ())
    if any(t >= vocab for t in stop_ids):
        raise BadRequestError(f"stop_token_ids must be below the vocabulary size {vocab}", "stop_token_ids")
    if not req.ignore_eos:
        stop_ids += tuple(t for t in pool.tokenizer.eos_token_ids if t not in stop_ids)
    return stop_ids
