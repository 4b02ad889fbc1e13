"""Send one case to one server and keep what came back: status, JSON body or SSE events."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from pdserve.tools.parity.cases import MODEL, Case

TIMEOUT_S = 120.0  # a backstop for one small request on a busy CPU host


@dataclass(frozen=True)
class Server:
    """One side of the comparison: its base URL (no ``/v1``) and served model name."""

    url: str
    model: str


@dataclass
class Reply:
    """What one server answered. ``status`` 0: no HTTP answer (``transport`` says why).
    ``body``: the JSON body of a non-streamed answer (or an error); ``events``: the JSON
    data of each SSE event of a streamed 2xx answer; ``done``: it ended with ``[DONE]``."""

    status: int
    body: Any = None
    events: list[Any] = field(default_factory=list)
    done: bool = False
    text: str = ""  # the raw body when it was not JSON
    transport: str = ""
    seconds: float = 0.0


def request_body(case: Case, model: str) -> dict[str, Any]:
    return {k: (model if v == MODEL else v) for k, v in case.body.items()}


async def send(client: httpx.AsyncClient, server: Server, case: Case) -> Reply:
    start = time.monotonic()
    try:
        reply = await _send(client, server, case)
    except httpx.HTTPError as exc:
        reply = Reply(0, transport=f"{type(exc).__name__}: {exc}")
    reply.seconds = time.monotonic() - start
    return reply


async def _send(client: httpx.AsyncClient, server: Server, case: Case) -> Reply:
    body = request_body(case, server.model)
    async with client.stream("POST", server.url + case.route, json=body, timeout=TIMEOUT_S) as resp:
        raw = (await resp.aread()).decode("utf-8", errors="replace")
    is_sse = resp.headers.get("content-type", "").startswith("text/event-stream")
    if is_sse:
        events, done = parse_sse(raw)
        return Reply(resp.status_code, events=events, done=done)
    try:
        return Reply(resp.status_code, body=json.loads(raw))
    except json.JSONDecodeError:
        return Reply(resp.status_code, text=raw[:500])


def parse_sse(raw: str) -> tuple[list[Any], bool]:
    """The JSON payloads of ``data:`` lines, and whether ``data: [DONE]`` ended the stream."""
    events: list[Any] = []
    done = False
    for line in raw.splitlines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            done = True
            continue
        try:
            events.append(json.loads(data))
        except json.JSONDecodeError:
            events.append({"unparsable_event": data[:200]})
    return events, done
