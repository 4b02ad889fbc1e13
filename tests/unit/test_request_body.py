"""Generation bodies read by router/api/body.py: a large one is parsed, validated and
size-checked on a thread, a small one inline, and either way a client gets the answer
FastAPI's own parsing gave (status, message, param); the OpenAPI document still shows them."""

from __future__ import annotations

import asyncio
import json
import threading
import warnings
from typing import Any

import pytest
from starlette.requests import Request

from router.api import body
from router.api.schemas import ChatCompletionRequest
from router.tokenizer import Tokenizer
from tests.helpers.router import tiny_tokenizer as make_tokenizer
from tests.unit.test_router_http import make_client

PAD = b" " * (body.INLINE_BYTES + 1)  # JSON allows leading whitespace: the same body, now large
NOT_AN_OBJECT = "Input should be a valid dictionary or object to extract fields from"
UNPARSED = "There was an error parsing the body"


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    return make_tokenizer(tmp_path_factory.mktemp("tiny"))


def _request(raw: bytes, content_type: bytes = b"application/json") -> Request:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": raw, "more_body": False}

    return Request({"type": "http", "method": "POST", "headers": [(b"content-type", content_type)]}, receive)


@pytest.mark.parametrize("padded", [False, True])
def test_a_large_body_is_parsed_and_checked_on_a_thread_a_small_one_inline(padded: bool) -> None:
    raw = (PAD if padded else b"") + b'{"messages": [{"role": "user", "content": "hi"}]}'
    checked_on: list[int] = []

    async def run() -> tuple[ChatCompletionRequest, int]:
        offloaded = []

        async def offload(fn: Any, *args: Any) -> Any:
            offloaded.append(fn)
            return await asyncio.to_thread(fn, *args)

        def check(parsed: ChatCompletionRequest) -> None:
            checked_on.append(threading.get_ident())

        parsed = await body.read(_request(raw), ChatCompletionRequest, offload, check)
        assert bool(offloaded) == padded
        return parsed, threading.get_ident()

    parsed, loop_thread = asyncio.run(run())
    assert parsed.messages[0].content == "hi"
    assert (checked_on[0] != loop_thread) == padded


# (name, body, content type, status and message as FastAPI's own parsing of a declared body gave them)
BODIES: list[tuple[str, bytes, str, int, str | None]] = [
    (
        "wrong type",
        b'{"model": "tiny", "prompt": "x", "temperature": "hot"}',
        "application/json",
        400,
        "temperature: Input should be a valid number, unable to parse string as a number",
    ),
    ("unknown model", b'{"model": "nope", "prompt": "x"}', "application/json", 404, "The model `nope` does not exist."),
    ("truncated", b'{"model": "tiny", "prompt": "x"', "application/json", 400, "request body is not valid JSON"),
    ("not an object", b"[1, 2]", "application/json", 400, NOT_AN_OBJECT),
    ("not utf-8", b'{"model": "\xff\xfe", "prompt": "x"}', "application/json", 400, UNPARSED),
    ("deep nesting", b"[" * 100_000 + b"]" * 100_000, "application/json", 400, UNPARSED),
    ("text/plain", b'{"model": "tiny", "prompt": "x"}', "text/plain", 400, NOT_AN_OBJECT),
    ("+json", b'{"model": "tiny", "prompt": "x", "max_tokens": 2}', "application/vnd.api+json", 200, None),
    ("valid", b'{"model": "tiny", "prompt": "x", "max_tokens": 2}', "application/json", 200, None),
]


def test_large_and_small_bodies_get_the_answers_fastapi_gave(tiny_tokenizer: Tokenizer) -> None:
    client, _ = make_client(tiny_tokenizer, "ab")
    for name, raw, content_type, status, message in BODIES:
        for content in (raw, PAD + raw):
            resp = client.post("/v1/completions", content=content, headers={"content-type": content_type})
            assert resp.status_code == status, (name, len(content), resp.text[:300])
            assert (resp.json().get("error") or {}).get("message") == message, (name, len(content))
    empty = client.post("/v1/completions", content=b"", headers={"content-type": "application/json"})
    assert empty.status_code == 400 and empty.json()["error"]["message"] == "Field required"
    bare = client.post("/v1/completions", content=b'{"model": "tiny", "prompt": "x"}', headers={"content-type": ""})
    assert bare.status_code == 400 and bare.json()["error"]["message"] == NOT_AN_OBJECT  # no type: no JSON


def test_the_openapi_document_still_describes_the_generation_bodies(tiny_tokenizer: Tokenizer) -> None:
    client, _ = make_client(tiny_tokenizer, "ab")
    doc = client.get("/openapi.json").json()
    for path, model in (("/v1/completions", "CompletionRequest"), ("/v1/chat/completions", "ChatCompletionRequest")):
        request_body = doc["paths"][path]["post"]["requestBody"]
        assert request_body["required"] is True
        assert request_body["content"]["application/json"]["schema"] == {"$ref": f"#/components/schemas/{model}"}
        assert "messages" in doc["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    assert client.post("/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 2}).status_code == 200


def test_every_operation_has_its_own_operation_id(tiny_tokenizer: Tokenizer) -> None:
    client, _ = make_client(tiny_tokenizer, "ab")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # FastAPI warns on a duplicate operationId
        doc = client.get("/openapi.json").json()
    ids = [op["operationId"] for path in doc["paths"].values() for op in path.values()]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    assert {"ping_get", "ping_post"} <= set(ids)
    for method in ("get", "post"):
        assert client.request(method.upper(), "/ping").status_code in (200, 503)


def test_a_small_request_is_tokenized_on_the_loop_a_large_one_on_a_thread(
    tiny_tokenizer: Tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Templating and tokenizing a small prompt costs less than the hop to a thread and back;
    a large one would stall every stream on the loop. Same answers either way."""
    client, _ = make_client(tiny_tokenizer, "ab")
    encode, threads = tiny_tokenizer.encode, []

    def recorded(text: str, add_special_tokens: bool = True) -> list[int]:
        threads.append(threading.current_thread().name)
        return encode(text, add_special_tokens)

    monkeypatch.setattr(tiny_tokenizer, "encode", recorded)
    pad = b" " * (body.PREPARE_INLINE_BYTES + 1)  # the same request, in a body over the bound
    usages = []
    for padding in (b"", pad):
        for route, request in (
            ("completions", {"prompt": "a prompt"}),
            ("chat/completions", {"messages": [{"role": "user", "content": "a prompt"}]}),
        ):
            raw = padding + json.dumps({"model": "tiny", "max_tokens": 2, **request}).encode()
            resp = client.post(f"/v1/{route}", content=raw, headers={"content-type": "application/json"})
            assert resp.status_code == 200, resp.text
            usages.append(resp.json()["usage"])
    assert [not name.startswith("tokenize") for name in threads] == [True, True, False, False], threads
    assert usages[:2] == usages[2:]
