"""An OpenAI-compatible HTTP server over one sim engine (llm-d-inference-sim's role).

Peer routers that speak HTTP to vLLM servers (sglang-router, vllm-router) drive a
simulated fleet through this: each process is one colocated sim engine (it
prefills and decodes) behind ``/v1/completions`` and ``/v1/chat/completions``
(streamed or not), ``/v1/models``, ``/health``, vLLM's ``/tokenize`` (vllm-router's
prefix-aware policies tokenize through it) and vLLM-named ``/metrics``, and
publishes KV cache events in vLLM's ZMQ format (``--kv-events-port``) for
routers that follow them (vllm-router's ``kv_aware``). Prompts are tokenized, and
responses rendered, by the router's own tokenizer and OpenAI renderer, so that a
shared text prefix is a shared token prefix and every body has the router's shape.
A benchmark tool, never an inference server: the tokens it returns are the sim
engine's, not a model's.

``pdserve sim-http --port 8100 --kv-events-port 5557 --profile zero``
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from pdserve import heap
from pdserve.config import resolve_model, setup_logging
from pdserve.engine.base import EngineError, InvalidRequestError, SamplingSpec, TokenDelta
from pdserve.engine.config import EngineConfig, add_engine_flags, engine_config_from_args
from pdserve.engine.sim.engine import SimDecodeEngine
from pdserve.lifetime import die_with_parent
from pdserve.tools.model import model_or_default
from pdserve.types import RequestId
from router.api import render
from router.request import Chunk
from router.tokenizer import TokenIdsOnly, Tokenizer, load_tokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SimHttpConfig:
    host: str
    port: int
    engine: EngineConfig


class _BadRequest(Exception):
    pass


def _prompt(tok: Tokenizer | TokenIdsOnly, body: dict[str, Any], chat: bool) -> list[int]:
    """The token ids the engine sees, as the router would tokenize them."""
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _BadRequest("messages must be a non-empty list")
        return tok.encode_chat(messages)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return list(prompt)
    if isinstance(prompt, str) and prompt:
        return tok.encode(prompt)
    raise _BadRequest("prompt must be a non-empty string or list of token ids")


def _sampling(body: dict[str, Any]) -> SamplingSpec:
    try:
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or 16
        return SamplingSpec(
            max_tokens=int(max_tokens),
            temperature=float(body.get("temperature", 1.0)),
            seed=body.get("seed"),
            ignore_eos=bool(body.get("ignore_eos", False)),
        )
    except (TypeError, ValueError) as exc:
        raise _BadRequest(str(exc)) from None


def _error_body(status: int, message: str) -> dict[str, Any]:
    kind = "BadRequestError" if status < 500 else "ServiceUnavailableError"
    return {"error": {"message": message, "type": kind, "param": None, "code": status}}


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(_error_body(status, message), status)


async def _chunks(
    deltas: AsyncIterator[TokenDelta], tok: Tokenizer | TokenIdsOnly, prompt: list[int]
) -> AsyncGenerator[Chunk, None]:
    """The engine's deltas as the router's chunks (text decoded incrementally)."""
    decoder = tok.stream_decoder(prompt)
    async with contextlib.aclosing(deltas):  # type: ignore[type-var]  # a client that leaves aborts it
        async for delta in deltas:
            text = "".join(decoder.step(t) for t in delta.token_ids)
            finish = delta.finish_reason.value if delta.finish_reason else None
            yield Chunk(text, delta.completion_tokens, finish, delta.cached_tokens, delta.token_ids)


def create_app(engine: SimDecodeEngine, tok: Tokenizer | TokenIdsOnly, model: str, lifespan: Any = None) -> FastAPI:
    app = FastAPI(title="pdserve sim-http", lifespan=lifespan)
    counts: Counter[str] = Counter()  # completion requests handed to the engine (the bench's per-worker share)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        card = {"id": model, "object": "model", "created": 0, "owned_by": "pdserve-sim"}
        return {"object": "list", "data": [{**card, "max_model_len": engine.info().max_model_len}]}

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        load = await engine.load()
        labels = f'{{model_name="{model}"}}'
        lines = [
            f"vllm:num_requests_running{labels} {load.num_running}",
            f"vllm:num_requests_waiting{labels} {load.num_waiting}",
            f"vllm:kv_cache_usage_perc{labels} {load.kv_cache_usage}",
            f"vllm:prefix_cache_queries_total{labels} {load.prefix_queries}",
            f"vllm:prefix_cache_hits_total{labels} {load.prefix_hits}",
            f"pdserve_sim_requests_total{labels} {counts['requests']}",
        ]
        return PlainTextResponse("\n".join(lines) + "\n")

    @app.post("/tokenize")
    async def tokenize(request: Request) -> Any:
        """vLLM's shape: a completion ``prompt`` or chat ``messages`` → the ids this engine sees."""
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise _BadRequest("the body must be a JSON object")
            tokens = _prompt(tok, body, chat="messages" in body)
        except (_BadRequest, ValueError) as exc:
            return _error(400, str(exc))
        return {"count": len(tokens), "max_model_len": engine.info().max_model_len, "tokens": tokens}

    async def serve(request: Request, chat: bool) -> Any:
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise _BadRequest("the body must be a JSON object")
            prompt, sampling = _prompt(tok, body, chat), _sampling(body)
        except (_BadRequest, ValueError) as exc:  # json.JSONDecodeError is a ValueError
            return _error(400, str(exc))
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        counts["requests"] += 1
        shape = render.Shape(chat=chat, model=model, prompts=(tuple(prompt),), include_usage=include_usage)
        deltas = engine.decode(RequestId(render.new_id(shape)), prompt, sampling, None)
        chunks = _chunks(deltas, tok, prompt)
        try:
            if not body.get("stream"):
                return JSONResponse(await render.collect(shape, chunks))
            first = await anext(chunks)  # errors before the first token keep their HTTP status
        except InvalidRequestError as exc:
            return _error(400, str(exc))
        except EngineError as exc:
            return _error(503, str(exc))
        events = _guarded(render.stream(shape, first, chunks), chunks)
        return StreamingResponse(events, media_type="text/event-stream")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await serve(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        return await serve(request, chat=True)

    return app


async def _guarded(events: AsyncIterator[bytes], chunks: AsyncGenerator[Chunk, None]) -> AsyncIterator[bytes]:
    """Once streaming has started the status is sent: an engine error goes in-stream.
    A client that leaves closes this, and so the engine request, at once."""
    try:
        async for event in events:
            yield event
    except EngineError as exc:
        yield render.sse(_error_body(503, str(exc)))
        yield b"data: [DONE]\n\n"
    finally:
        await chunks.aclose()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pdserve sim-http", allow_abbrev=False, description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default=os.environ.get("PDSERVE_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("PDSERVE_PORT", "8100")))
    p.add_argument("--log-level", default=os.environ.get("PDSERVE_LOG_LEVEL", "WARNING"))
    add_engine_flags(p, default_kv_port=5600, default_events_port=0)
    return p


def config_from_args(argv: list[str] | None = None) -> tuple[SimHttpConfig, str]:
    args, rest = _parser().parse_known_args(argv)
    model_dir, served = resolve_model(*model_or_default(args.model, args.served_model_name))
    args.engine, args.kv_connector, args.served_model_name = "sim", "none", served
    return SimHttpConfig(args.host, args.port, engine_config_from_args(args, model_dir, rest)), args.log_level


def main(argv: list[str] | None = None) -> int:
    cfg, level = config_from_args(argv)
    setup_logging(level)
    die_with_parent()
    engine = SimDecodeEngine(cfg.engine)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await engine.start()
        heap.freeze("start-up")  # as pdserve's workers and router: the bench compares like with like
        try:
            yield
        finally:
            await engine.shutdown()

    app = create_app(engine, load_tokenizer(cfg.engine.model), cfg.engine.served_model_name, lifespan)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=level.lower(), access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
