"""An OpenAI-compatible HTTP server over one sim engine (llm-d-inference-sim's role).

Peer routers that speak HTTP to vLLM servers (sglang-router, vllm-router) drive a
simulated fleet through this: each process is one colocated sim engine (it
prefills and decodes) behind ``/v1/completions`` and ``/v1/chat/completions``
(streamed or not), ``/v1/models``, ``/health``, vLLM's ``/tokenize`` (vllm-router's
prefix-aware policies tokenize through it) and vLLM-named ``/metrics``, and
publishes KV cache events in vLLM's ZMQ format (``--kv-events-port``) for
routers that follow them (vllm-router's ``kv_aware``). Prompts are tokenized with
the model directory's tokenizer so that a shared text prefix is a shared token
prefix, as in a real server. A benchmark tool, never an inference server: the
tokens it returns are the sim engine's, not a model's.

``pdserve sim-http --port 8100 --kv-events-port 5557 --profile zero``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from transformers import AutoTokenizer

from pdserve.config import resolve_model, setup_logging
from pdserve.engine.base import EngineError, InvalidRequestError, SamplingSpec, TokenDelta
from pdserve.engine.config import EngineConfig, add_engine_flags, engine_config_from_args
from pdserve.engine.sim.engine import SimDecodeEngine
from pdserve.lifetime import die_with_parent
from pdserve.types import RequestId

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SimHttpConfig:
    host: str
    port: int
    engine: EngineConfig


class _BadRequest(Exception):
    pass


class TextCodec:
    """Text ⇄ token ids with the model's tokenizer (the chat template included)."""

    def __init__(self, model_dir: str) -> None:
        self._tok = AutoTokenizer.from_pretrained(model_dir)

    def prompt(self, body: dict[str, Any], chat: bool) -> list[int]:
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise _BadRequest("messages must be a non-empty list")
            text = self._tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            return list(self._tok(text, add_special_tokens=False)["input_ids"])
        prompt = body.get("prompt")
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            return list(prompt)
        if isinstance(prompt, str) and prompt:
            return list(self._tok(prompt, add_special_tokens=True)["input_ids"])
        raise _BadRequest("prompt must be a non-empty string or list of token ids")

    def text(self, token_ids: tuple[int, ...]) -> str:
        return str(self._tok.decode(list(token_ids), skip_special_tokens=True))


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


def _error(status: int, message: str) -> JSONResponse:
    kind = "BadRequestError" if status < 500 else "ServiceUnavailableError"
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": status}}, status)


class _Shapes:
    """OpenAI response objects of one request, completion or chat."""

    def __init__(self, chat: bool, model: str, request_id: str) -> None:
        self.chat, self.model, self.id = chat, model, request_id
        self.created = int(time.time())

    def _wrap(self, kind: str, choices: list[dict[str, Any]], usage: dict[str, Any] | None) -> dict[str, Any]:
        obj: dict[str, Any] = {"id": self.id, "object": kind, "created": self.created, "model": self.model}
        obj["choices"] = choices
        if usage is not None:
            obj["usage"] = usage
        return obj

    def chunk(self, text: str, finish: str | None) -> dict[str, Any]:
        if self.chat:
            choice = {"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": finish}
            return self._wrap("chat.completion.chunk", [choice], None)
        return self._wrap("text_completion", [{"index": 0, "text": text, "finish_reason": finish}], None)

    def usage_chunk(self, usage: dict[str, Any]) -> dict[str, Any]:
        return self._wrap("chat.completion.chunk" if self.chat else "text_completion", [], usage)

    def whole(self, text: str, finish: str, usage: dict[str, Any]) -> dict[str, Any]:
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
            return self._wrap("chat.completion", [choice], usage)
        return self._wrap("text_completion", [{"index": 0, "text": text, "finish_reason": finish}], usage)


def _usage(prompt_tokens: int, last: TokenDelta | None) -> dict[str, Any]:
    completion = last.completion_tokens if last else 0
    cached = last.cached_tokens if last else 0
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def create_app(engine: SimDecodeEngine, codec: TextCodec, model: str, lifespan: Any = None) -> FastAPI:
    app = FastAPI(title="pdserve sim-http", lifespan=lifespan)

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
        ]
        return PlainTextResponse("\n".join(lines) + "\n")

    @app.post("/tokenize")
    async def tokenize(request: Request) -> Any:
        """vLLM's shape: a completion ``prompt`` or chat ``messages`` → the ids this engine sees."""
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise _BadRequest("the body must be a JSON object")
            tokens = codec.prompt(body, chat="messages" in body)
        except (_BadRequest, ValueError) as exc:
            return _error(400, str(exc))
        return {"count": len(tokens), "max_model_len": engine.info().max_model_len, "tokens": tokens}

    async def serve(request: Request, chat: bool) -> Any:
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise _BadRequest("the body must be a JSON object")
            prompt, sampling = codec.prompt(body, chat), _sampling(body)
        except (_BadRequest, ValueError) as exc:  # json.JSONDecodeError is a ValueError
            return _error(400, str(exc))
        shapes = _Shapes(chat, model, f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}")
        deltas = engine.decode(RequestId(shapes.id), prompt, sampling, None)
        if body.get("stream"):
            usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(_sse(deltas, codec, shapes, len(prompt), usage), media_type="text/event-stream")
        return await _whole(deltas, codec, shapes, len(prompt))

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await serve(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        return await serve(request, chat=True)

    return app


async def _whole(deltas: AsyncIterator[TokenDelta], codec: TextCodec, shapes: _Shapes, n_prompt: int) -> Any:
    tokens: list[int] = []
    last: TokenDelta | None = None
    try:
        async with contextlib.aclosing(deltas):  # type: ignore[type-var]
            async for delta in deltas:
                tokens.extend(delta.token_ids)
                last = delta
    except InvalidRequestError as exc:
        return _error(400, str(exc))
    except EngineError as exc:
        return _error(503, str(exc))
    finish = last.finish_reason.value if last and last.finish_reason else "stop"
    return shapes.whole(codec.text(tuple(tokens)), finish, _usage(n_prompt, last))


async def _sse(
    deltas: AsyncIterator[TokenDelta], codec: TextCodec, shapes: _Shapes, n_prompt: int, include_usage: bool
) -> AsyncIterator[str]:
    last: TokenDelta | None = None
    try:
        async with contextlib.aclosing(deltas):  # type: ignore[type-var]  # a client that leaves aborts it
            async for delta in deltas:
                last = delta
                finish = delta.finish_reason.value if delta.finish_reason else None
                yield f"data: {json.dumps(shapes.chunk(codec.text(delta.token_ids), finish))}\n\n"
    except EngineError as exc:
        yield f"data: {json.dumps({'error': {'message': str(exc), 'type': 'EngineError', 'code': 503}})}\n\n"
    if include_usage:
        yield f"data: {json.dumps(shapes.usage_chunk(_usage(n_prompt, last)))}\n\n"
    yield "data: [DONE]\n\n"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pdserve sim-http", allow_abbrev=False, description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default=os.environ.get("PDSERVE_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("PDSERVE_PORT", "8100")))
    p.add_argument("--log-level", default=os.environ.get("PDSERVE_LOG_LEVEL", "WARNING"))
    add_engine_flags(p, default_kv_port=5600, default_events_port=0)
    return p


def config_from_args(argv: list[str] | None = None) -> tuple[SimHttpConfig, str]:
    args, rest = _parser().parse_known_args(argv)
    model_dir, served = resolve_model(args.model, args.served_model_name)
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
        try:
            yield
        finally:
            await engine.shutdown()

    app = create_app(engine, TextCodec(cfg.engine.model), cfg.engine.served_model_name, lifespan)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=level.lower(), access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
