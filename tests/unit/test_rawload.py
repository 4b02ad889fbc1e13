"""The ceiling bench's bare HTTP/1.1 client (pdserve/tools/bench/rawload.py) against a
scripted server: chunked SSE replies reuse their connection and pass the check; a sized
error reply, a short stream and a server that hangs up are errors, not timings."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

from pdserve.tools.bench import rawload
from pdserve.tools.bench.ceiling import cores

Reply = Callable[[asyncio.StreamWriter], Awaitable[None]]


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def sse(writer: asyncio.StreamWriter, tokens: int = 8) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
    writer.write(_chunk(b'data: {"choices":[{"text":"a"}]}\n\n'))
    writer.write(_chunk(b'data: {"choices":[],"usage":{"completion_tokens": %d}}\n\n' % tokens))
    writer.write(_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")


async def refused(writer: asyncio.StreamWriter) -> None:
    body = json.dumps({"error": {"message": "no"}}).encode()
    writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))


async def serve(reply: Reply) -> tuple[asyncio.Server, str, list[int]]:
    """A server answering every request with ``reply``; (server, URL, connections accepted)."""
    accepted: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(ln.split(b":")[1]) for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")
                )
                json.loads(await reader.readexactly(length))
                await reply(writer)
                await writer.drain()
        except asyncio.IncompleteReadError:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", accepted


async def drive(reply: Reply, rate: float = 400.0) -> tuple[list[rawload.Sample], int]:
    server, url, accepted = await serve(reply)
    async with server:
        point = rawload.Point((url,), "m", rate, duration_s=0.2, seed=1, warm_connections=2)
        return await rawload._drive(point), len(accepted)


async def test_streamed_replies_pass_and_reuse_their_connections() -> None:
    samples, connections = await drive(sse)
    assert len(samples) > 20 and all(s.error == "" and s.e2e_s > 0 for s in samples)
    assert connections < len(samples)  # kept alive: not one connection per request


async def test_error_statuses_short_streams_and_hangups_are_errors() -> None:
    samples, _ = await drive(refused)
    assert samples and all(s.error == "HTTP/1.1 400 Bad Request" for s in samples)
    samples, _ = await drive(lambda w: sse(w, tokens=3))
    assert samples and all("completion_tokens" in s.error for s in samples)

    async def hang_up(writer: asyncio.StreamWriter) -> None:
        writer.close()

    samples, _ = await drive(hang_up)
    assert samples and all(s.error.startswith("IncompleteReadError") for s in samples)


def test_core_lists() -> None:
    assert cores("0-3,8") == [0, 1, 2, 3, 8] and cores("") == []
