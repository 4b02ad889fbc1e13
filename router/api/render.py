"""OpenAI response bodies (completion and chat, whole and streamed)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from router.request import Chunk


@dataclass(frozen=True)
class Shape:
    """What differs between /v1/completions and /v1/chat/completions."""

    chat: bool
    model: str
    prompt_ids: tuple[int, ...]
    include_usage: bool = False
    return_token_ids: bool = False
    request_id: str = ""  # the response id's suffix (vLLM's request_id field); "" = a new one

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def object(self) -> str:
        return "chat.completion" if self.chat else "text_completion"

    @property
    def chunk_object(self) -> str:
        return "chat.completion.chunk" if self.chat else "text_completion"


def usage(shape: Shape, completion_tokens: int, cached_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": shape.prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": shape.prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def new_id(shape: Shape) -> str:
    return ("chatcmpl-" if shape.chat else "cmpl-") + (shape.request_id or uuid.uuid4().hex)


def whole(shape: Shape, text: str, token_ids: list[int], last: Chunk) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "finish_reason": last.finish_reason, "logprobs": None}
    if shape.chat:
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    body = {
        "id": new_id(shape),
        "object": shape.object,
        "created": int(time.time()),
        "model": shape.model,
        "choices": [choice],
        "usage": usage(shape, last.completion_tokens, last.cached_tokens),
    }
    if shape.return_token_ids:
        choice["token_ids"] = token_ids
        body["prompt_token_ids"] = list(shape.prompt_ids)
    return body


async def collect(shape: Shape, chunks: AsyncIterator[Chunk]) -> dict[str, Any]:
    parts: list[str] = []
    token_ids: list[int] = []
    last: Chunk | None = None
    async for chunk in chunks:
        parts.append(chunk.text)
        token_ids.extend(chunk.token_ids)
        last = chunk
    assert last is not None and last.finish_reason is not None  # the orchestrator guarantees it
    return whole(shape, "".join(parts), token_ids, last)


def sse(body: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(body, separators=(',', ':'))}\n\n".encode()


async def stream(shape: Shape, first: Chunk, rest: AsyncIterator[Chunk]) -> AsyncIterator[bytes]:
    """SSE events: one per chunk, a usage chunk if asked for, then ``[DONE]``.

    ``first`` was pulled before the response started so errors before the first
    token still get a proper HTTP status.
    """
    rid, created = new_id(shape), int(time.time())

    def event(chunk: Chunk, role: bool = False) -> bytes:
        choice: dict[str, Any] = {"index": 0, "finish_reason": chunk.finish_reason, "logprobs": None}
        if shape.chat:
            delta: dict[str, Any] = {"content": chunk.text}
            if role:
                delta["role"] = "assistant"
            choice["delta"] = delta
        else:
            choice["text"] = chunk.text
        if shape.return_token_ids:
            choice["token_ids"] = list(chunk.token_ids)
        body = {"id": rid, "object": shape.chunk_object, "created": created, "model": shape.model, "choices": [choice]}
        if shape.include_usage:
            body["usage"] = None
        return sse(body)

    last = first
    yield event(first, role=True)
    async for chunk in rest:
        last = chunk
        yield event(chunk)
    if shape.include_usage:
        yield sse(
            {
                "id": rid,
                "object": shape.chunk_object,
                "created": created,
                "model": shape.model,
                "choices": [],
                "usage": usage(shape, last.completion_tokens, last.cached_tokens),
            }
        )
    yield b"data: [DONE]\n\n"
