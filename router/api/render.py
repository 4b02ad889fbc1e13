"""OpenAI response bodies (completion and chat, whole and streamed)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pdserve.engine.base import TokenLogprobs
from router.api import chat_output
from router.api.chat_output import ChatParsing, ChoiceStream
from router.request import Chunk


@dataclass(frozen=True)
class Shape:
    """What differs between /v1/completions and /v1/chat/completions."""

    chat: bool
    model: str
    prompts: tuple[tuple[int, ...], ...]  # each prompt's ids: one, or a completions batch's
    n: int = 1  # choices per prompt: choice index = prompt index * n + choice, as vLLM numbers them
    include_usage: bool = False
    continuous_usage: bool = False  # stream_options.continuous_usage_stats (with include_usage): usage per chunk
    return_token_ids: bool = False
    request_id: str = ""  # the response id's suffix (vLLM's request_id field); "" = a new one
    logprobs: int | None = None  # logprobs asked for: how many top ones to show per token
    as_token_ids: bool = False  # return_tokens_as_token_ids
    token_texts: Callable[[Sequence[int]], list[str]] = lambda ids: [""] * len(ids)
    decode: Callable[[Sequence[int]], str] = lambda ids: ""
    system_fingerprint: str | None = None  # the decode workers' (vLLM's): whole responses, final chunks
    echo: tuple[str, ...] | None = None  # echo: per prompt, the text its choices start with (None: no echo)
    echo_only: bool = False  # echo with max_tokens 0: the prompt alone, the generated token hidden
    parsing: ChatParsing | None = None  # chat: reasoning and tool-call parsing of the output
    prompt_text: str | None = None  # chat return_prompt_text: the rendered prompt (whole; a stream's first chunk)

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)

    def prompt(self, index: int) -> int:
        """The prompt that choice ``index`` answers."""
        return index // self.n

    @property
    def object(self) -> str:
        return "chat.completion" if self.chat else "text_completion"

    @property
    def chunk_object(self) -> str:
        return "chat.completion.chunk" if self.chat else "text_completion"


def usage(
    shape: Shape, completion_tokens: int, cached_tokens: int, reasoning_tokens: int | None = None
) -> dict[str, Any]:
    """vLLM's usage; ``reasoning_tokens``: None without a reasoning parser (no details)."""
    details = None if reasoning_tokens is None else {"reasoning_tokens": reasoning_tokens}
    return {
        "prompt_tokens": shape.prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": shape.prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
        "completion_tokens_details": details,
    }


def counts_reasoning(shape: Shape) -> bool:
    return shape.parsing is not None and bool(shape.parsing.reasoning_parser)


def token_texts(shape: Shape, token_ids: Sequence[int]) -> list[str]:
    """Each token decoded on its own, as vLLM's parser engine decodes them to count reasoning."""
    return [shape.decode([t]) for t in token_ids] if counts_reasoning(shape) else []


def reasoning_tokens(shape: Shape, text: str, texts: Sequence[str], finished: bool = True) -> int | None:
    """One choice's reasoning tokens (its output ``text``, so far unless ``finished``;
    ``texts``: ``token_texts`` of its tokens); None without a reasoning parser."""
    if shape.parsing is None or not counts_reasoning(shape):
        return None
    return shape.parsing.reasoning_tokens(text, texts, finished)


def new_id(shape: Shape) -> str:
    return ("chatcmpl-" if shape.chat else "cmpl-") + (shape.request_id or uuid.uuid4().hex)


def _names(shape: Shape, ids: Sequence[int]) -> list[str]:
    return [f"token_id:{t}" for t in ids] if shape.as_token_ids else shape.token_texts(ids)


def _floor(logprob: float) -> float:
    return max(logprob, -9999.0)  # -inf is not JSON; vLLM's (and OpenAI's) floor


def chat_logprobs(shape: Shape, lps: Sequence[TokenLogprobs]) -> dict[str, Any]:
    """vLLM's ``_create_chat_logprobs``: per token its string, logprob and bytes, and the
    first ``top_logprobs`` entries of vLLM's order (which starts with the sampled token)."""
    content = []
    k = shape.logprobs or 0
    for lp in lps:
        names = _names(shape, [e[0] for e in lp.entries])
        top = [
            {"token": n, "logprob": _floor(e[1]), "bytes": list(n.encode("utf-8", errors="replace"))}
            for i, (n, e) in enumerate(zip(names, lp.entries, strict=True))
            if k == -1 or i < k
        ]
        token = names[0]
        content.append(
            {
                "token": token,
                "logprob": _floor(lp.entries[0][1]),
                "bytes": list(token.encode("utf-8", errors="replace")),
                "top_logprobs": top,
            }
        )
    return {"content": content}


def completion_logprobs(
    shape: Shape, lps: Sequence[TokenLogprobs], offset: int = 0, bare: Sequence[int] = ()
) -> dict[str, Any]:
    """vLLM's ``_create_completion_logprobs``: tokens, their logprobs, the top ``logprobs``
    + 1 entries of vLLM's order as {token: logprob}, and each token's text offset. ``bare``:
    tokens shown first without logprobs (an echoed prompt's first token), named as
    vLLM names them, by decoding."""
    out: dict[str, list[Any]] = {"text_offset": [], "token_logprobs": [], "tokens": [], "top_logprobs": []}
    k = shape.logprobs or 0
    for token_id in bare:
        name = f"token_id:{token_id}" if shape.as_token_ids else shape.decode([token_id])
        out["tokens"].append(name)
        out["token_logprobs"].append(None)
        out["top_logprobs"].append(None)
        out["text_offset"].append(offset)
        offset += len(name)
    for lp in lps:
        names = _names(shape, [e[0] for e in lp.entries])
        out["tokens"].append(names[0])
        out["token_logprobs"].append(_floor(lp.entries[0][1]))
        top = {n: _floor(e[1]) for i, (n, e) in enumerate(zip(names, lp.entries, strict=True)) if k == -1 or k >= i}
        out["top_logprobs"].append(top)
        out["text_offset"].append(offset)
        offset += len(names[0])
    return out


def prompt_logprobs(shape: Shape, lps: Sequence[TokenLogprobs] | None) -> list[dict[str, Any] | None] | None:
    """vLLM's ``prompt_logprobs`` field: position 0 null, then per position token id →
    {logprob, rank, decoded_token}, in vLLM's order (the prompt's token first)."""
    if lps is None:
        return None
    out: list[dict[str, Any] | None] = [None]
    for lp in lps:
        names = shape.token_texts([e[0] for e in lp.entries])
        out.append(
            {
                str(tid): {"logprob": _floor(logprob), "rank": rank, "decoded_token": name}
                for (tid, logprob, rank), name in zip(lp.entries, names, strict=True)
            }
        )
    return out


def _choice_logprobs(
    shape: Shape,
    index: int,
    lps: Sequence[TokenLogprobs],
    offset: int = 0,
    prompt: Sequence[TokenLogprobs] | None = None,
) -> dict[str, Any] | None:
    """Choice ``index``'s logprobs (or a chunk's); ``prompt``: its prompt's, which an echoing
    completion shows before its own (its first token bare)."""
    if shape.logprobs is None:
        return None
    if shape.chat:
        return chat_logprobs(shape, lps)
    if prompt is None:
        return completion_logprobs(shape, lps, offset)
    shown = () if shape.echo_only else lps
    return completion_logprobs(shape, [*prompt, *shown], offset, bare=shape.prompts[shape.prompt(index)][:1])


def _shown_text(shape: Shape, index: int, text: str, first: bool) -> str:
    """Choice ``index``'s text as sent: its prompt's echo starts its first part; echo-only
    shows no output."""
    if shape.echo is None:
        return text
    if not first:
        return "" if shape.echo_only else text
    return shape.echo[shape.prompt(index)] + ("" if shape.echo_only else text)


@dataclass
class _Choice:
    """One choice as its chunks add up."""

    parts: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprobs] = field(default_factory=list)
    last: Chunk | None = None
    prompt_logprobs: tuple[TokenLogprobs, ...] | None = None

    def add(self, chunk: Chunk) -> None:
        if chunk.prompt_logprobs is not None:
            self.prompt_logprobs = chunk.prompt_logprobs
        self.parts.append(chunk.text)
        self.token_ids.extend(chunk.token_ids)
        self.logprobs.extend(chunk.logprobs)
        self.last = chunk


def _usage_of(
    shape: Shape, lasts: dict[int, Chunk], cached: int, reasoning: Sequence[int | None] = ()
) -> dict[str, Any]:
    """Completion tokens of every choice, each prompt counted once. ``cached``: one prompt's
    cache hits, as vLLM reports them for a batch (the last prompt's in a whole response,
    the first answer's in a stream); ``reasoning``: each choice's reasoning tokens."""
    counted = [r for r in reasoning if r is not None]
    return usage(shape, sum(c.completion_tokens for c in lasts.values()), cached, sum(counted) if counted else None)


def whole(shape: Shape, choices: dict[int, _Choice]) -> dict[str, Any]:
    """A whole response, key for key as vLLM's server writes it (``null`` where it has
    nothing to say), so a client reading vLLM's fields finds them."""
    rendered = []
    # each prompt's logprobs come with its first choice (the others do not ask again)
    scored = {shape.prompt(i): c.prompt_logprobs for i, c in choices.items() if c.prompt_logprobs is not None}
    reasoning = []
    for index, c in sorted(choices.items()):
        assert c.last is not None and c.last.finish_reason is not None  # the orchestrator guarantees it
        p = shape.prompt(index)
        output = "".join(c.parts)
        text = _shown_text(shape, index, output, first=True)
        reasoning.append(reasoning_tokens(shape, output, token_texts(shape, c.token_ids)))
        echoed = scored.get(p) if shape.echo is not None else None
        choice: dict[str, Any] = {
            "index": index,
            "finish_reason": c.last.finish_reason,
            "stop_reason": c.last.stop_reason,
            "logprobs": _choice_logprobs(shape, index, c.logprobs, prompt=echoed),
            "token_ids": c.token_ids if shape.return_token_ids else None,
            "routed_experts": None,
        }
        if shape.chat:
            choice["message"] = {"role": "assistant", "content": text, **_CHAT_MESSAGE_NULLS}
            if shape.parsing is not None:  # reasoning and tool calls, as vLLM's parsers split them
                fields, choice["finish_reason"] = shape.parsing.whole(output, c.last.finish_reason)
                if shape.echo is not None:  # vLLM puts the echo before the parsed content
                    fields["content"] = shape.echo[p] + (fields["content"] or "")
                choice["message"] |= fields
                if shape.parsing.suppresses_metadata:
                    choice["logprobs"] = choice["token_ids"] = None
        else:
            choice |= {
                "text": text,
                "prompt_logprobs": prompt_logprobs(shape, scored.get(p)),
                "prompt_token_ids": _prompt_ids(shape, p),
            }
        rendered.append(choice)
    lasts = {i: c.last for i, c in choices.items() if c.last is not None}
    last_prompt = lasts.get((len(shape.prompts) - 1) * shape.n)
    body = {
        "id": new_id(shape),
        "object": shape.object,
        "created": int(time.time()),
        "model": shape.model,
        "choices": rendered,
        "service_tier": None,
        "system_fingerprint": shape.system_fingerprint,
        "usage": _usage_of(shape, lasts, last_prompt.cached_tokens if last_prompt else 0, reasoning),
        "kv_transfer_params": None,
        "ec_transfer_params": None,
    }
    if shape.chat:
        body |= {
            "prompt_logprobs": prompt_logprobs(shape, scored.get(0)),
            "prompt_token_ids": _prompt_ids(shape, 0),
            "prompt_text": shape.prompt_text,
        }
    return body


def _prompt_ids(shape: Shape, prompt: int) -> list[int] | None:
    """A prompt's ids where the response shows them: only with ``return_token_ids``."""
    return list(shape.prompts[prompt]) if shape.return_token_ids else None


# Chat message fields vLLM's server writes as null when it has no refusal, audio,
# reasoning parser or legacy function call to report.
_CHAT_MESSAGE_NULLS: dict[str, Any] = {
    "refusal": None,
    "annotations": None,
    "audio": None,
    "function_call": None,
    "reasoning": None,
}


async def collect(shape: Shape, chunks: AsyncIterator[Chunk]) -> dict[str, Any]:
    choices: dict[int, _Choice] = {}
    async for chunk in chunks:
        choices.setdefault(chunk.index, _Choice()).add(chunk)
    return whole(shape, choices)


def sse(body: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(body, separators=(',', ':'))}\n\n".encode()


async def stream(shape: Shape, first: Chunk, rest: AsyncIterator[Chunk]) -> AsyncIterator[bytes]:
    """SSE events: one per chunk, a usage chunk if asked for, then ``[DONE]``.

    ``first`` was pulled before the response started so errors before the first
    token still get a proper HTTP status.
    """
    rid, created = new_id(shape), int(time.time())
    offsets: dict[int, int] = {}  # completions' text_offset runs on across a choice's chunks
    lasts: dict[int, Chunk] = {}
    scored: dict[int, tuple[TokenLogprobs, ...]] = {}  # each prompt's logprobs (its first choice's first chunk)
    parsers: dict[int, ChoiceStream] = {}  # per choice, with chat parsing
    outputs: dict[int, tuple[list[str], list[str]]] = {}  # per choice: its text and token_texts so far

    def reasoning_so_far(index: int) -> int | None:
        parts, texts = outputs.get(index, ([], []))
        last = lasts.get(index)
        return reasoning_tokens(shape, "".join(parts), texts, last is not None and last.finish_reason is not None)

    def event(chunk: Chunk) -> bytes:
        p = shape.prompt(chunk.index)
        if chunk.prompt_logprobs is not None:
            scored[p] = chunk.prompt_logprobs
        role = chunk.index not in lasts  # a choice's first chunk names the role
        lasts[chunk.index] = chunk
        if counts_reasoning(shape):  # the output so far, kept only to count its reasoning tokens
            parts, texts = outputs.setdefault(chunk.index, ([], []))
            parts.append(chunk.text)
            texts.extend(token_texts(shape, chunk.token_ids))
        echoed = scored.get(p) if role and shape.echo is not None else None
        logprobs = _choice_logprobs(shape, chunk.index, chunk.logprobs, offsets.get(chunk.index, 0), prompt=echoed)
        if logprobs is not None and not shape.chat and logprobs["tokens"]:
            offsets[chunk.index] = logprobs["text_offset"][-1] + len(logprobs["tokens"][-1])
        text = _shown_text(shape, chunk.index, chunk.text, first=role)
        choice: dict[str, Any] = {"index": chunk.index, "finish_reason": chunk.finish_reason, "logprobs": logprobs}
        choice["stop_reason"] = chunk.stop_reason
        body: dict[str, Any] = {"id": rid, "object": shape.chunk_object, "created": created, "model": shape.model}
        if chunk.finish_reason is not None and not shape.include_usage and shape.system_fingerprint is not None:
            body["system_fingerprint"] = shape.system_fingerprint  # a choice's last chunk, as vLLM's server
        if shape.chat:
            delta: dict[str, Any] = {"content": text}
            if shape.parsing is not None:  # reasoning and tool calls, as vLLM's parsers stream them
                parse = parsers.setdefault(chunk.index, shape.parsing.stream())
                delta = parse.feed(chunk.text)
                if chunk.finish_reason is not None:
                    held, choice["finish_reason"] = parse.finish(chunk.finish_reason)
                    delta = chat_output.join(delta, held)
                if text != chunk.text:  # the echo comes first, as vLLM sends it before the output
                    delta = chat_output.join({"content": text[: len(text) - len(chunk.text)]}, delta)
                delta = parse.hides_reasoning(delta)
                if shape.parsing.suppresses_metadata:
                    choice["logprobs"] = None
            if role:  # vLLM's first delta names the role with (at least) empty content
                delta = {"role": "assistant", "content": "", **delta}
            choice["delta"] = delta
            if role:  # a choice's first chunk has the key, as vLLM's server writes it
                body["prompt_token_ids"] = _prompt_ids(shape, p)
            body["prompt_text"] = shape.prompt_text if role else None
        else:
            choice["text"] = text
            # every chunk has the key, the ids on a choice's first (vLLM also sends them with an echo)
            shown = role and (shape.return_token_ids or shape.echo is not None)
            choice["prompt_token_ids"] = list(shape.prompts[p]) if shown else None
        # vLLM's server writes the key in every chunk, null unless asked for
        hidden = shape.parsing is not None and shape.parsing.suppresses_metadata
        choice["token_ids"] = list(chunk.token_ids) if shape.return_token_ids and not hidden else None
        body["choices"] = [choice]
        if shape.include_usage:  # continuous: the choice's tokens so far, as vLLM's server counts them
            n, prompt = chunk.completion_tokens, len(shape.prompts[p])
            body["usage"] = None
            if shape.continuous_usage:
                body["usage"] = {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n}
                reasoning = reasoning_so_far(chunk.index)
                if reasoning is not None:
                    body["usage"]["completion_tokens_details"] = {"reasoning_tokens": reasoning}
        return sse(body)

    yield event(first)
    async for chunk in rest:
        yield event(chunk)
    done = b"data: [DONE]\n\n"
    if shape.include_usage:
        final = _usage_of(shape, lasts, first.cached_tokens, [reasoning_so_far(i) for i in sorted(lasts)])
        if final["completion_tokens_details"] is None:  # vLLM's streamed usage then has no such key
            del final["completion_tokens_details"]
        usage = {
            "id": rid,
            "object": shape.chunk_object,
            "created": created,
            "model": shape.model,
            "choices": [],
            **({"system_fingerprint": shape.system_fingerprint} if shape.system_fingerprint else {}),
            "usage": final,
        }
        done = sse(usage) + done  # ready together: one write to the socket, not two
    yield done
