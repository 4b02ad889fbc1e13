"""FastAPI application: routes translate HTTP ⇄ RouterService calls, nothing more.

A generation route reads its body (api/body.py: a large one off the event loop),
validates it against the model's pool (api/validate.py), makes one call,
``RouterService.serve``, and renders the ``Answer`` it returns. The others answer from
the service's view of its pools (/health, /ping, /version, /v1/models) or a pool's
tokenizer (/tokenize, /detokenize: api/tokenize.py), shaped as vLLM 0.32's server
answers them."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST

from router.admission import ANONYMOUS
from router.api import body as body_of
from router.api import errors, render, size, tokenize, tool_grammar, validate
from router.api.chat_output import ChatParsing
from router.api.limits import BodyLimit
from router.api.middleware import Authenticate, CountResponses
from router.api.schemas import ChatCompletionRequest, CompletionRequest
from router.chat import ChatOptions
from router.pool import ModelPool
from router.request import Answer
from router.service import Health, RouterService

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]
T = TypeVar("T")
CLIENT_CLOSED = 499  # nginx's "client closed request": logged and counted, never sent


def create_app(
    get_service: Callable[[], RouterService],
    lifespan: Lifespan | None = None,
    api_keys: tuple[str, ...] = (),
    *,
    max_body_bytes: int,
    chat: ChatOptions | None = None,
    cache_salts: Mapping[str, str] | None = None,
    prompt_chars_per_token: int = size.PROMPT_CHARS_PER_TOKEN,
) -> FastAPI:
    """``api_keys``: if any, every /v1/* request needs ``Authorization: Bearer <one of them>``,
    and rate limits count per key. Bodies over ``max_body_bytes`` get 413 unread. ``chat``:
    the server's chat-template options (router/chat.py). ``cache_salts``: client id → the
    prefix-cache salt of its requests (router/tenants.py). A prompt over
    ``prompt_chars_per_token`` x the model's context gets 400 before it is tokenized."""
    salts = cache_salts or {}
    chat_options = chat or ChatOptions()
    app = FastAPI(title="pdserve router", version="0.1.0", lifespan=lifespan)
    errors.install(app, lambda reason: get_service().rejected(reason))
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)

    if api_keys:
        app.add_middleware(Authenticate, keys=api_keys, salts=salts, rejected=lambda r: get_service().rejected(r))
    # Added last: the outermost, so it also counts what the others refuse.
    app.add_middleware(CountResponses, count=lambda route, status: get_service().responded(route, status))

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(get_service().exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/health")
    async def health() -> JSONResponse:
        return _health(get_service().health())

    @app.get("/ready")
    async def ready() -> JSONResponse:
        """Kubernetes' readinessProbe: 200 while requests can be served (as /health)."""
        return _health(get_service().health())

    async def ping() -> JSONResponse:
        """SageMaker's health route: answered as /health, as vLLM's server answers it."""
        return _health(get_service().health())

    for method in ("GET", "POST"):  # one route per method: one operationId each in the OpenAPI document
        app.add_api_route("/ping", ping, methods=[method], operation_id=f"ping_{method.lower()}")

    @app.get("/version")
    async def version() -> dict[str, str]:
        return {"version": get_service().vllm_version()}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        now = int(time.time())
        return {"object": "list", "data": [_model_card(pool, now) for pool in get_service().served()]}

    @app.post("/tokenize")
    async def tokenize_prompt(body: tokenize.TokenizeRequest) -> dict[str, Any]:
        service = get_service()
        return await service.prepare(tokenize.tokenize, body, service.pool(body.model), chat_options)

    @app.post("/detokenize")
    async def detokenize_tokens(body: tokenize.DetokenizeRequest) -> dict[str, Any]:
        service = get_service()
        return await service.prepare(tokenize.detokenize, body, service.pool(body.model))

    def checked(body: CompletionRequest | ChatCompletionRequest) -> None:
        """What needs no tokenizer, before the request waits for admission: a 400 (or the
        404 of an unknown model) even while every slot is taken."""
        size.check(body, get_service().pool(body.model).max_model_len, prompt_chars_per_token)
        validate.fields(body)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        arrival = time.perf_counter()
        body = await body_of.read(request, CompletionRequest, get_service().prepare, checked)
        _take_request_id(body, request)
        serving = get_service().serve(
            body.model,
            lambda pool: validate.completion(body, pool, arrival),
            *_caller(request),
            inline=await body_of.small(request),
        )
        return await _unless_gone(request, _answered(serving, body, chat=False))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        arrival = time.perf_counter()
        body = await body_of.read(request, ChatCompletionRequest, get_service().prepare, checked)
        _take_request_id(body, request)
        serving = get_service().serve(
            body.model,
            lambda pool: [validate.chat(body, pool, arrival, chat_options)],
            *_caller(request),
            inline=await body_of.small(request),
        )
        return await _unless_gone(request, _answered(serving, body, chat=True, options=chat_options))

    body_of.describe(app, {"/v1/completions": CompletionRequest, "/v1/chat/completions": ChatCompletionRequest})
    return app


def _take_request_id(body: CompletionRequest | ChatCompletionRequest, request: Request) -> None:
    """An ``X-Request-Id`` header names the request, over the body's ``request_id``, as in vLLM."""
    header = request.headers.get("x-request-id")
    if header:
        body.request_id = header


def _health(health: Health) -> JSONResponse:
    """200 while every model the router knows has a decode worker; else 503, saying which
    have none (or that no worker has joined yet). The body also names what is degraded
    but still serving: a background loop restarting, the shared state store unreachable, a
    decode worker whose KV path measures under its bandwidth floor."""
    details: dict[str, Any] = {}
    if health.background.loops_down:
        details["loops_down"] = dict(health.background.loops_down)
    if not health.background.store_up:
        kind = f" ({health.background.store_down_kind})" if health.background.store_down_kind else ""
        details["state_store"] = f"unreachable{kind}: serving from this router's local view"
    if health.kv_slow:  # requests succeed, slowly: DESIGN §8's 0.4 GB/s case
        details["kv_path_slow"] = dict(health.kv_slow)
    if health.ok:
        return JSONResponse({"status": "degraded" if health.degraded else "ok", **details})
    missing = list(health.without_decode)
    message = f"no decode worker serves {', '.join(missing)}" if missing else "no model is served yet"
    body = {"status": "unavailable", "message": message, "models_without_decode": missing, **details}
    return JSONResponse(body, 503)


def _model_card(pool: ModelPool, now: int) -> dict[str, Any]:
    """vLLM's ``ModelCard``: ``root`` is the model directory the workers loaded, ``parent``
    null (a base model, not an adapter), one permission with vLLM's defaults."""
    permission = {
        "id": f"modelperm-{uuid.uuid4().hex}",
        "object": "model_permission",
        "created": now,
        "allow_create_engine": False,
        "allow_sampling": True,
        "allow_logprobs": True,
        "allow_search_indices": False,
        "allow_view": True,
        "allow_fine_tuning": False,
        "organization": "*",
        "group": None,
        "is_blocking": False,
    }
    return {
        "id": pool.name,
        "object": "model",
        "created": now,
        "owned_by": "pdserve",
        "root": pool.model_path or None,
        "parent": None,
        "max_model_len": pool.max_model_len,
        "permission": [permission],
    }


def _caller(request: Request) -> tuple[str, str]:
    """(client id, its cache salt)."""
    return getattr(request.state, "client", ANONYMOUS), getattr(request.state, "cache_salt", "")


async def _answered(
    serving: Awaitable[Answer],
    body: CompletionRequest | ChatCompletionRequest,
    chat: bool,
    options: ChatOptions | None = None,
) -> Response:
    answer = await serving
    parsing = _parsing(answer, body, options) if isinstance(body, ChatCompletionRequest) and options else None
    return await _respond(answer, body, chat=chat, parsing=parsing)


async def _unless_gone(request: Request, responding: Awaitable[Response]) -> Response:
    """``responding``, cancelled if the client disconnects first: queued, tokenizing, or
    generating a non-streamed response, the request ends and its engine requests are
    aborted (closing the chunk stream cancels the worker RPCs). A stream is ended by the
    server when its client leaves. Waits on the ASGI ``http.disconnect`` message, which
    comes once the body has been read; nothing polls."""
    work = asyncio.ensure_future(responding)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not work.done():
            work.cancel()
    if work.cancelled() or not work.done():
        with contextlib.suppress(asyncio.CancelledError):
            await work  # its clean-up (aborting the engine requests) has run when this returns
        return Response(status_code=CLIENT_CLOSED)
    return work.result()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _parsing(answer: Answer, body: ChatCompletionRequest, options: ChatOptions) -> ChatParsing | None:
    """What the server's parsers do with this chat request's output (api/chat_output.py)."""
    mode, named = validate.tool_mode(body)
    if not options.reasoning_parser and not options.tool_call_parser:
        return None  # as vLLM without a parser: the output is the content
    return ChatParsing(
        reasoning_parser=options.reasoning_parser,
        tool_parser=options.tool_call_parser,
        mode=mode,
        named=named,
        tools=tuple(t.model_dump() for t in body.tools or ()),
        include_reasoning=body.include_reasoning,
        prompt_text=answer.decode(answer.prompts[0]),
        template_kwargs=body.chat_template_kwargs or {},
        native=tool_grammar.native(options.tool_call_parser, mode),
        auto_tools=options.enable_auto_tool_choice,
        single_call=body.parallel_tool_calls is False,
    )


async def _respond(
    answer: Answer, body: CompletionRequest | ChatCompletionRequest, chat: bool, parsing: ChatParsing | None = None
) -> Response:
    shape = render.Shape(
        chat=chat,
        model=answer.model,
        prompts=answer.prompts,
        n=answer.n,
        include_usage=bool(body.stream_options and body.stream_options.include_usage),
        continuous_usage=bool(
            body.stream_options and body.stream_options.include_usage and body.stream_options.continuous_usage_stats
        ),
        return_token_ids=bool(body.return_token_ids),
        request_id=body.request_id,
        logprobs=_shown_logprobs(body),
        as_token_ids=bool(body.return_tokens_as_token_ids),
        token_texts=answer.token_texts,
        decode=answer.decode,
        system_fingerprint=answer.system_fingerprint,
        echo=_echo(answer, body),
        echo_only=isinstance(body, CompletionRequest) and bool(body.echo) and body.max_tokens == 0,
        parsing=parsing,
        prompt_text=answer.decode(answer.prompts[0])
        if isinstance(body, ChatCompletionRequest) and body.return_prompt_text
        else None,
    )
    if not body.stream:
        return JSONResponse(await render.collect(shape, answer.chunks()))
    return StreamingResponse(_guarded(render.stream(shape, answer.first, answer.rest)), media_type="text/event-stream")


def _echo(answer: Answer, body: CompletionRequest | ChatCompletionRequest) -> tuple[str, ...] | None:
    """What ``echo`` puts before each choice's text, per prompt, as vLLM's server: a
    completion's prompt (its text, or its ids decoded; nothing with ``return_token_ids``), a
    chat's last message when its role is the response's (the assistant's, or with
    ``add_generation_prompt`` off the last message's own)."""
    if not body.echo:
        return None
    if isinstance(body, ChatCompletionRequest):
        last = body.messages[-1]
        role = "assistant" if body.add_generation_prompt else last.role
        if last.role != role or last.content is None:
            return ("",)
        if isinstance(last.content, str):
            return (last.content,)
        return ("\n".join(p if isinstance(p, str) else str(p.get("text", "")) for p in last.content),)
    if body.return_token_ids:
        return ("",) * len(answer.prompts)
    texts = validate.prompts(body.prompt)
    return tuple(p if isinstance(p, str) else answer.decode(ids) for p, ids in zip(texts, answer.prompts, strict=True))


def _shown_logprobs(body: CompletionRequest | ChatCompletionRequest) -> int | None:
    """How many top logprobs a response shows per token; None: no logprobs."""
    if isinstance(body, ChatCompletionRequest):
        return body.top_logprobs if body.logprobs else None
    return body.logprobs


async def _guarded(events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Once streaming has started the status is sent: report errors in-stream, as OpenAI does."""
    try:
        async for event in events:
            yield event
    except Exception as exc:  # noqa: BLE001 - mapped, never leaked
        err = errors.to_api_error(exc)
        yield render.sse(errors.error_body(err))
        yield b"data: [DONE]\n\n"
