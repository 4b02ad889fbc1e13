"""OpenAI request → token-space ``Generation``: every rule about what a request may ask
for (vLLM's OpenAI server is the reference for edge cases). Raises ``BadRequestError``
naming the field.

Sampling defaults, as ``vllm serve`` resolves them: the request's value, else the
model's generation config (``ModelPool.sampling_defaults``, empty with
``--generation-config vllm``), else vLLM's neutral value."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any, cast

from pdserve.engine.base import LOGIT_BIAS_LIMIT, SamplingSpec
from router import chat as chat_render
from router.api import chat_output, structured, tool_grammar
from router.api.schemas import (
    CHAT_REFUSED,
    COMPLETION_REFUSED,
    INT32_MAX,
    INT64,
    ChatCompletionRequest,
    CompletionRequest,
    NamedToolChoice,
    Refused,
    SamplingFields,
)
from router.errors import BadRequestError
from router.parsers.reasoning import starts_in_reasoning
from router.parsers.registry import REASONING_PARSERS
from router.pool import ModelPool
from router.request import Generation

log = logging.getLogger("pdserve.router.validate")

# vLLM's own defaults for what a request and the generation config leave unset.
NEUTRAL: Mapping[str, float] = {
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": 0,
    "min_p": 0.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "repetition_penalty": 1.0,
}
# Removed from vLLM's models, which now ignore them with a warning: the client asked for
# constrained output and would get free text, so they are refused instead.
GUIDED = ("guided_json", "guided_regex", "guided_choice", "guided_grammar", "guided_decoding_backend")
MAX_PROMPTS = 1024  # prompts per completions request: vLLM's VLLM_MAX_COMPLETION_PROMPTS default
MAX_N = 128  # choices per prompt (vLLM sets no bound; this keeps one request's fan-out sane)
MAX_BAD_WORDS = 128  # vLLM's VLLM_MAX_NUM_BAD_WORDS default, counted after tokenization


def fields(req: CompletionRequest | ChatCompletionRequest) -> None:
    """The checks that need no tokenizer and no prompt tokens (refused fields, ``n``,
    ``stream_options``). Routes run them before the request waits for admission, so a bad
    field is a 400 even while every slot is taken; ``completion`` and ``chat`` rely on it."""
    _check_fields(req, CHAT_REFUSED if isinstance(req, ChatCompletionRequest) else COMPLETION_REFUSED)


def completion(req: CompletionRequest, pool: ModelPool, arrival: float) -> list[Generation]:
    """One Generation per prompt: a completions ``prompt`` is one prompt (text or token ids)
    or a batch of them, each generated on its own with the request's sampling. ``fields``
    has checked ``req``."""
    texts = prompts(req.prompt)
    # echo with max_tokens 0 returns the prompt alone: vLLM generates one token and shows none
    echo_only = bool(req.echo) and req.max_tokens == 0
    limit = 1 if echo_only else req.max_tokens
    return [_generation(pool, req, _prompt_ids(pool, req, p), limit, arrival) for p in texts]


def prompts(prompt: str | list[int] | list[str] | list[list[int]]) -> list[str | list[int]]:
    """The prompts of a completions request, read as vLLM's ``prompt_to_seq`` reads them: a
    string or one list of token ids is one prompt; a list of strings or of token-id lists
    is a batch of at most ``MAX_PROMPTS``."""
    if prompt == "":
        raise BadRequestError("Either prompt or prompt_embeds must be provided and non-empty.", "prompt")
    if isinstance(prompt, str) or not prompt or isinstance(prompt[0], int):
        return [cast("str | list[int]", prompt)]
    if len(prompt) > MAX_PROMPTS:
        raise BadRequestError(
            f"prompt list length {len(prompt)} exceeds the maximum allowed count of {MAX_PROMPTS}.", "prompt"
        )
    return list(cast("list[str | list[int]]", prompt))


def _prompt_ids(pool: ModelPool, req: CompletionRequest, prompt: str | list[int]) -> list[int]:
    if not isinstance(prompt, str):
        return prompt
    try:
        return pool.tokenizer.encode(prompt, req.add_special_tokens)
    except ValueError as exc:  # a model without a tokenizer takes token ids only
        raise BadRequestError(str(exc), "prompt") from None


def chat(
    req: ChatCompletionRequest, pool: ModelPool, arrival: float, options: chat_render.ChatOptions | None = None
) -> Generation:
    options = options or chat_render.ChatOptions()
    ids = chat_prompt_ids(req, pool, options)  # ``fields`` has checked ``req``
    limit = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    gen = _generation(pool, req, ids, limit, arrival)
    mode, name = tool_mode(req)
    if mode in ("named", "required") and gen.spec.structured_outputs:
        raise BadRequestError(
            "You can only use one kind of structured outputs constraint: a tool_choice that forces a call "
            "constrains the output itself",
            "structured_outputs",
        )
    tools = [t.model_dump() for t in req.tools or ()]
    own = json.loads(gen.spec.structured_outputs) if gen.spec.structured_outputs else None
    constraint = tool_grammar.constraint(
        options.tool_call_parser, tools, mode, name, req.parallel_tool_calls, options.tool_strict_level, own
    )
    if constraint.structured_outputs is not None:
        spec = dataclasses.replace(gen.spec, structured_outputs=json.dumps(constraint.structured_outputs))
        gen = dataclasses.replace(gen, spec=spec)
    if _keeps_special_tokens(options, mode):
        gen = dataclasses.replace(gen, skip_special_tokens=False)
    if options.reasoning_parser:
        ended = reasoning_ended(req, options.reasoning_parser, pool.tokenizer.decode(ids, skip_special_tokens=False))
        gen = dataclasses.replace(gen, spec=dataclasses.replace(gen.spec, reasoning_ended=ended))
    return gen


def reasoning_ended(req: ChatCompletionRequest, parser: str, prompt: str) -> bool:
    """vLLM's ``resolve_reasoning_ended``: grammars constrain from the first token when the
    client does not want reasoning or the rendered ``prompt`` already closed it; otherwise the
    workers' engines (given the same --reasoning-parser) wait for its end."""
    if not req.include_reasoning:
        return True
    rules = REASONING_PARSERS[parser]
    return not starts_in_reasoning(rules, prompt, req.chat_template_kwargs or {})


def tool_choice(req: ChatCompletionRequest) -> Any:
    """The request's ``tool_choice``; ``tools`` without one means "auto", as in vLLM."""
    return "auto" if req.tools and "tool_choice" not in req.model_fields_set else req.tool_choice


def tool_mode(req: ChatCompletionRequest) -> tuple[chat_output.ToolMode, str]:
    """How the request's tools shape the output: ("none" | "auto" | "named" | "required",
    the named tool)."""
    if not req.tools:
        return "none", ""
    choice = tool_choice(req)
    if isinstance(choice, NamedToolChoice):
        return "named", choice.function.name
    if choice in ("auto", "required"):
        return choice, ""
    return "none", ""


def _keeps_special_tokens(options: chat_render.ChatOptions, mode: str) -> bool:
    """Parsers that read special-token markers see them in the text, as vLLM arranges: hermes
    and mistral when tools may be called, qwen3's reasoning always."""
    tool_markers = options.tool_call_parser in ("hermes", "qwen3_json", "mistral") and mode != "none"
    return tool_markers or options.reasoning_parser == "qwen3"


def chat_prompt(
    req: ChatCompletionRequest, pool: ModelPool, options: chat_render.ChatOptions | None = None
) -> list[int]:
    """A chat request's messages → the prompt's token ids. The one way from messages to ids:
    /tokenize's chat form takes it too (router/api/tokenize.py), so it answers exactly the
    ids a chat completion of the same messages generates from."""
    fields(req)
    return chat_prompt_ids(req, pool, options or chat_render.ChatOptions())


def chat_prompt_ids(req: ChatCompletionRequest, pool: ModelPool, options: chat_render.ChatOptions) -> list[int]:
    """A chat request's prompt ids, rendered as vLLM's server renders them (router/chat.py)."""
    if req.continue_final_message and req.add_generation_prompt:
        raise BadRequestError("Cannot set both `continue_final_message` and `add_generation_prompt` to True.")
    tools = _tools(req, options)
    try:
        kwargs = chat_render.template_kwargs(
            add_generation_prompt=req.add_generation_prompt,
            continue_final_message=req.continue_final_message,
            documents=req.documents,
            reasoning_effort=req.reasoning_effort,
            chat_template_kwargs=req.chat_template_kwargs,
            tools=tools,
        )
        messages = [m.as_sent() for m in req.messages]
        text = chat_render.render(pool.tokenizer, messages, options, kwargs, req.chat_template)
        return pool.tokenizer.encode(text, req.add_special_tokens)
    except chat_render.ChatError as exc:
        raise BadRequestError(str(exc), exc.param) from None
    except ValueError as exc:  # a model without a tokenizer
        raise BadRequestError(str(exc), "messages") from None


def _tools(req: ChatCompletionRequest, options: chat_render.ChatOptions) -> list[dict[str, Any]] | None:
    """The tools for the template, after vLLM's checks of ``tools`` and ``tool_choice``
    (``tool_choice``). A choice that needs a tool-call parser the server lacks gets vLLM's
    answer for a server started without it."""
    if req.tools is not None and not req.tools:
        raise BadRequestError(
            "`tools` must not be an empty array. Either provide at least one tool or omit the field entirely.", "tools"
        )
    choice = tool_choice(req)
    if choice is not None and choice != "none":
        if req.tools is None:
            raise BadRequestError("When using `tool_choice`, `tools` must be set.", "tool_choice")
        if isinstance(choice, NamedToolChoice) and choice.function.name not in {t.function.name for t in req.tools}:
            raise BadRequestError(
                "The tool specified in `tool_choice` does not match any of the specified `tools`", "tool_choice"
            )
        if choice == "auto" and not (options.enable_auto_tool_choice and options.tool_call_parser):
            raise BadRequestError(
                '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'
            )
        if choice != "auto" and not options.tool_call_parser:
            named = f'function "{choice.function.name}"' if isinstance(choice, NamedToolChoice) else f'"{choice}"'
            raise BadRequestError(f"tool_choice={named} requires --tool-call-parser to be set")
    return None if req.tools is None else [t.model_dump() for t in req.tools]


def _check_fields(req: SamplingFields, refused: Mapping[str, Refused]) -> None:
    """Refused fields asking for something → 400; fields vLLM does not know → a debug log."""
    unknown = []
    for name, value in (req.model_extra or {}).items():
        rule = refused.get(name)
        if rule is not None:
            if not any(value == ok and type(value) is type(ok) for ok in rule.neutral):
                raise BadRequestError(f"{name} {rule.why}", name)
        elif name in GUIDED:
            raise BadRequestError(f"{name} was removed from vLLM's API: use structured_outputs", name)
        else:
            unknown.append(name)
    if unknown:
        log.debug("The following fields were present in the request but ignored: %s", sorted(unknown))
    n = 1 if req.n is None else req.n
    if not 1 <= n <= MAX_N:
        raise BadRequestError(f"n must be between 1 and {MAX_N}, got {n}.", "n")
    if req.stream_options is not None and not req.stream:
        raise BadRequestError("Stream options can only be defined when `stream=True`.", "stream_options")


def _generation(
    pool: ModelPool, req: SamplingFields, ids: Sequence[int], max_tokens: int | None, arrival: float
) -> Generation:
    ids = _truncated(pool, req, ids)
    room = _room(pool, req, ids)
    limit_name = "max_completion_tokens" if getattr(req, "max_completion_tokens", None) is not None else "max_tokens"
    if max_tokens is not None and max_tokens < 1:  # vLLM's SamplingParams names max_tokens either way
        raise BadRequestError(f"max_tokens must be at least 1, got {max_tokens}.", "max_tokens")
    if max_tokens is not None and max_tokens > pool.max_model_len:
        raise BadRequestError(
            f"{limit_name}={max_tokens} cannot be greater than max_model_len={pool.max_model_len}. "
            "Please request fewer output tokens.",
            limit_name,
        )
    # Like vLLM: a max_tokens past the context is reduced to what fits, and the generation
    # config's max_new_tokens caps it.
    limit = min(max_tokens, room) if max_tokens is not None else room
    if "max_tokens" in pool.sampling_defaults:
        limit = min(limit, max(1, int(pool.sampling_defaults["max_tokens"])))
    if req.min_tokens > limit:
        raise BadRequestError(f"min_tokens ({req.min_tokens}) is more than max_tokens ({limit})", "min_tokens")
    knobs = _knobs(pool, req)
    n = 1 if req.n is None else req.n
    if n > 1 and knobs["temperature"] == 0:
        raise BadRequestError(f"n must be 1 when using greedy sampling, got {n}.", "n")
    if n > 1 and req.seed is not None and req.seed + n - 1 >= INT64:
        raise BadRequestError("seed + n - 1 (choice i samples with seed + i) must fit in 64 bits", "seed")
    spec = SamplingSpec(
        max_tokens=limit,
        temperature=knobs["temperature"],
        top_p=knobs["top_p"],
        top_k=max(int(knobs["top_k"]), 0),
        min_p=knobs["min_p"],
        presence_penalty=knobs["presence_penalty"],
        frequency_penalty=knobs["frequency_penalty"],
        repetition_penalty=knobs["repetition_penalty"],
        seed=req.seed,
        stop_token_ids=_stop_ids(pool, req),
        ignore_eos=req.ignore_eos,
        min_tokens=req.min_tokens,
        logit_bias=_logit_bias(pool, req.logit_bias),
        allowed_token_ids=_allowed(pool, req.allowed_token_ids),
        bad_words=_bad_words(pool, req.bad_words),
        priority=_priority(pool, req.priority),
        cache_salt=req.cache_salt or "",
        logprobs=_logprobs(pool, req),
        structured_outputs=structured.constraint(req),
        prompt_logprobs=_prompt_logprobs(pool, req),
    )
    return Generation(
        list(ids),
        spec,
        req.stop_strings(),
        arrival,
        include_stop=req.include_stop_str_in_output,
        skip_special_tokens=req.skip_special_tokens,
        n=n,
        request_id=req.request_id,
    )


def _knobs(pool: ModelPool, req: SamplingFields) -> dict[str, float]:
    """Request value, else generation config, else vLLM's neutral value; range-checked as
    vLLM's ``SamplingParams`` checks them (a 400 naming the field)."""
    out: dict[str, float] = {}
    for name, neutral in NEUTRAL.items():
        value = getattr(req, name)
        out[name] = value if value is not None else pool.sampling_defaults.get(name, neutral)
    _in_range(out["temperature"], 0, 2, "temperature", closed_low=True)
    _in_range(out["top_p"], 0, 1, "top_p", closed_low=False)
    if not -1 <= out["top_k"] <= INT32_MAX:
        raise BadRequestError(f"top_k must be 0 (disable), or at least 1, got {out['top_k']:g}.", "top_k")
    _in_range(out["min_p"], 0, 1, "min_p", closed_low=True)
    _in_range(out["presence_penalty"], -2, 2, "presence_penalty", closed_low=True)
    _in_range(out["frequency_penalty"], -2, 2, "frequency_penalty", closed_low=True)
    rep = out["repetition_penalty"]
    if not (math.isfinite(rep) and rep > 0):
        raise BadRequestError(f"repetition_penalty must be greater than zero, got {rep}.", "repetition_penalty")
    if out["temperature"] == 0:  # greedy: vLLM turns the filters off
        out.update(top_p=1.0, top_k=0, min_p=0.0)
    return out


def _in_range(value: float, low: float, high: float, name: str, *, closed_low: bool) -> None:
    ok = math.isfinite(value) and (value >= low if closed_low else value > low) and value <= high
    if not ok:
        bracket = "[" if closed_low else "("
        raise BadRequestError(f"{name} must be in {bracket}{low:g}, {high:g}], got {value}.", name)


def _logit_bias(pool: ModelPool, bias: Mapping[str, float] | None) -> tuple[tuple[int, float], ...]:
    """Keys are token ids as strings, checked against the vocabulary; values clamped to
    [-100, 100], as vLLM does."""
    out = []
    for key, value in (bias or {}).items():
        try:
            token = int(key)
        except ValueError:
            raise BadRequestError(f"logit_bias keys must be token ids, got {key!r}", "logit_bias") from None
        if not 0 <= token < pool.tokenizer.vocab_size:
            raise BadRequestError(f"logit_bias contains out-of-vocab token id {token}", "logit_bias")
        if not math.isfinite(value):
            raise BadRequestError("logit_bias values must be finite numbers", "logit_bias")
        out.append((token, min(LOGIT_BIAS_LIMIT, max(-LOGIT_BIAS_LIMIT, value))))
    return tuple(out)


def _allowed(pool: ModelPool, ids: Sequence[int] | None) -> tuple[int, ...]:
    if ids is None:
        return ()
    if not ids:
        raise BadRequestError("allowed_token_ids is not None and empty!", "allowed_token_ids")
    if any(not 0 <= t < pool.tokenizer.vocab_size for t in ids):
        raise BadRequestError("allowed_token_ids contains out-of-vocab token id!", "allowed_token_ids")
    return tuple(ids)


def _bad_words(pool: ModelPool, words: Sequence[str]) -> tuple[tuple[int, ...], ...]:
    if any(not w for w in words):
        raise BadRequestError("bad_words cannot contain an empty string.", "bad_words")
    try:
        seqs = pool.tokenizer.bad_words_ids(list(dict.fromkeys(words)))
    except ValueError as exc:
        raise BadRequestError(str(exc), "bad_words") from None
    if len(seqs) > MAX_BAD_WORDS:
        raise BadRequestError(f"Too many bad words after tokenization: {len(seqs)}.", "bad_words")
    return seqs


def _logprobs(pool: ModelPool, req: SamplingFields) -> int | None:
    """The top logprobs to compute per token (0: the sampled token's only), or None."""
    if isinstance(req, ChatCompletionRequest):
        name, k = "top_logprobs", req.top_logprobs
        if k < 0 and k != -1:
            raise BadRequestError("`top_logprobs` must be a positive value or -1.", name)
        if k != 0 and not req.logprobs:
            raise BadRequestError("when using `top_logprobs`, `logprobs` must be set to true.", name)
        if not req.logprobs:
            return None
    else:
        name, asked_k = "logprobs", getattr(req, "logprobs", None)
        if asked_k is None:
            return None
        k = int(asked_k)
        if k < 0 and k != -1:
            raise BadRequestError("`logprobs` must be a positive value or -1.", name)
    asked = pool.tokenizer.vocab_size if k == -1 else k
    if asked > pool.max_logprobs:  # vLLM's engine names "logprobs" on both routes
        raise BadRequestError(
            f"Requested sample logprobs of {asked}, which is greater than max allowed: {pool.max_logprobs}", "logprobs"
        )
    return int(k)


def _prompt_logprobs(pool: ModelPool, req: SamplingFields) -> int | None:
    """The top logprobs to compute per prompt position, or None: ``prompt_logprobs``, else
    with ``echo`` the request's logprobs (completions ``logprobs``, chat ``top_logprobs``)."""
    name, k = "prompt_logprobs", req.prompt_logprobs
    if k is not None:
        if req.stream and (k > 0 or k == -1):
            raise BadRequestError("`prompt_logprobs` are not available when `stream=True`.", name)
        if k < 0 and k != -1:
            raise BadRequestError("`prompt_logprobs` must be a positive value or -1.", name)
    elif isinstance(req, ChatCompletionRequest):
        k = req.top_logprobs if req.echo else None
    elif isinstance(req, CompletionRequest):
        k = req.logprobs if req.echo else None
    if k is None:
        return None
    asked = pool.tokenizer.vocab_size if k == -1 else k
    if asked > pool.max_logprobs:
        raise BadRequestError(
            f"Requested prompt logprobs of {asked}, which is greater than max allowed: {pool.max_logprobs}", name
        )
    return int(k)


def _priority(pool: ModelPool, priority: int) -> int:
    """Passed on; engines that schedule first come, first served ignore it, as vLLM 0.32
    does (its field description promises a 400 that its server does not give)."""
    if priority and not pool.priority_scheduling:
        log.debug("priority %d ignored: the workers of %s schedule first come, first served", priority, pool.name)
    return priority


def _truncated(pool: ModelPool, req: SamplingFields, ids: Sequence[int]) -> Sequence[int]:
    """``truncate_prompt_tokens`` as vLLM applies it: keep the last k prompt tokens (the first
    k with ``truncation_side`` "right"); -1 means as many as the context allows."""
    k = req.truncate_prompt_tokens
    if k is None:
        return ids
    most = pool.max_model_len - 1  # one token of context is left for the output
    if k == -1:
        k = most
    if k < -1 or k > pool.max_model_len:
        raise BadRequestError(
            f"truncate_prompt_tokens value ({k}) is greater than max_model_len ({pool.max_model_len}).",
            "truncate_prompt_tokens",
        )
    if len(ids) <= k:
        return ids
    return ids[:k] if req.truncation_side == "right" else ids[len(ids) - k :]


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
