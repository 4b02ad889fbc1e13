"""One check through the official ``openai`` SDK: what a real client parses from each
server (a model list, a greedy chat completion, streamed and not) must agree."""

from __future__ import annotations

import asyncio
from typing import Any

from pdserve.tools.parity.cases import MESSAGES
from pdserve.tools.parity.client import TIMEOUT_S, Server
from pdserve.tools.parity.compare import Mismatch

CASE = "sdk.chat"


async def sdk_mismatches(servers: tuple[Server, Server]) -> list[Mismatch]:
    try:
        import openai
    except ImportError:
        return [Mismatch(CASE, "sdk_missing", "the openai package is not installed", "")]
    a, b = await asyncio.gather(*(_ask(openai, s) for s in servers))
    return [Mismatch(CASE, key, a.get(key), b.get(key)) for key in sorted(a | b) if a.get(key) != b.get(key)]


async def _ask(openai: Any, server: Server) -> dict[str, Any]:
    """What the SDK returned: parsed values, or the exception's class for a failed call."""
    client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="parity", timeout=TIMEOUT_S, max_retries=0)
    out: dict[str, Any] = {}
    args = {"model": server.model, "messages": MESSAGES, "temperature": 0, "max_tokens": 8}
    try:
        models = await client.models.list()
        out["models.listed"] = server.model in [m.id for m in models.data]
        resp = await client.chat.completions.create(**args)
        out["text"] = resp.choices[0].message.content
        out["finish_reason"] = resp.choices[0].finish_reason
        out["completion_tokens"] = resp.usage.completion_tokens if resp.usage else None
        stream = await client.chat.completions.create(**args, stream=True, stream_options={"include_usage": True})
        pieces, reasons, usage = [], [], None
        async for chunk in stream:
            for choice in chunk.choices:
                pieces.append(choice.delta.content or "")
                reasons.append(choice.finish_reason)
            usage = chunk.usage or usage
        out["stream.text"] = "".join(pieces)
        out["stream.finish_reason"] = next((r for r in reversed(reasons) if r), None)
        out["stream.completion_tokens"] = usage.completion_tokens if usage else None
    except openai.OpenAIError as exc:
        out["error"] = type(exc).__name__
    finally:
        await client.close()
    return out
