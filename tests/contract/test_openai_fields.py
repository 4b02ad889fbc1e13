"""The router's request models against vLLM's own (DESIGN §7): every field vLLM's
ChatCompletionRequest and CompletionRequest have is declared (honoured) or refused by
name, nothing else is declared, and ``null`` is accepted exactly where vLLM accepts it;
/tokenize, /detokenize and /v1/models take and answer vLLM's fields."""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from pdserve.engine.base import SamplingSpec
from router.api import schemas, structured, tokenize
from tests.helpers import structural_tags as tags
from tests.helpers.router import ScriptedDecode, ScriptedPrefill, scripted_router, tiny_tokenizer

vllm_chat = pytest.importorskip("vllm.entrypoints.openai.chat_completion.protocol")
vllm_completion = pytest.importorskip("vllm.entrypoints.openai.completion.protocol")

PAIRS = [
    ("chat", schemas.ChatCompletionRequest, schemas.CHAT_REFUSED, vllm_chat.ChatCompletionRequest),
    ("completion", schemas.CompletionRequest, schemas.COMPLETION_REFUSED, vllm_completion.CompletionRequest),
]


@pytest.mark.parametrize(("route", "ours", "refused", "theirs"), PAIRS, ids=[p[0] for p in PAIRS])
def test_every_vllm_field_is_declared_or_refused_and_nothing_else(
    route: str, ours: type[BaseModel], refused: dict[str, Any], theirs: type[BaseModel]
) -> None:
    declared, known = set(ours.model_fields), set(theirs.model_fields)
    assert declared & set(refused) == set(), "a field is both honoured and refused"
    assert known - declared - set(refused) == set(), "vLLM fields neither honoured nor refused"
    assert declared - known == set(), "fields vLLM does not have"
    assert set(refused) - known == set(), "refused fields vLLM does not have"


def _takes_none(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _takes_none(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return any(_takes_none(a) for a in typing.get_args(annotation))
    return annotation is type(None)


@pytest.mark.parametrize(("route", "ours", "refused", "theirs"), PAIRS, ids=[p[0] for p in PAIRS])
def test_null_is_accepted_where_vllm_accepts_it(
    route: str, ours: type[BaseModel], refused: dict[str, Any], theirs: type[BaseModel]
) -> None:
    differ = {
        name: (_takes_none(field.annotation), _takes_none(theirs.model_fields[name].annotation))
        for name, field in ours.model_fields.items()
        if name not in ("messages", "prompt")  # required: null is a 400 on both
    }
    # vLLM's top_logprobs turns null into 0 before validating; ours is refused, null passing.
    assert {k: v for k, v in differ.items() if v[0] != v[1]} == {}


def test_vllm_defaults_are_ours() -> None:
    """A field left out means the same thing on both servers."""
    for _, ours, _, theirs in PAIRS:
        for name, field in ours.model_fields.items():
            mine, vllms = field.get_default(call_default_factory=True), theirs.model_fields[name]
            if name in ("messages", "prompt", "request_id", "stop", "stop_token_ids"):
                continue  # required, random, or vLLM's [] where ours is the equivalent None
            assert mine == vllms.get_default(call_default_factory=True), (ours.__name__, name)


vllm_exceptions = pytest.importorskip("vllm.exceptions")
vllm_compat = pytest.importorskip("pdserve.engine.vllm_compat")
TAG_CASES = {**tags.ACCEPTED, **tags.REFUSED, **tags.BY_WORKERS}


def _vllm_outcome(theirs: type[BaseModel], body: dict[str, Any]) -> str | tuple[int, str | None]:
    """The structural_tag vLLM's request model builds, or (400, the param it names)."""
    try:
        req = theirs(**body)
    except vllm_exceptions.VLLMValidationError as exc:
        return 400, exc.parameter
    so = req.extract_structured_outputs()
    return so.structural_tag


@pytest.mark.parametrize(("route", "ours", "refused", "theirs"), PAIRS, ids=[p[0] for p in PAIRS])
@pytest.mark.parametrize("case", TAG_CASES)
def test_structural_tags_are_what_vllm_makes_of_them(
    route: str, ours: type[BaseModel], refused: dict[str, Any], theirs: type[BaseModel], case: str
) -> None:
    """The table the router's unit tests hold it to (tests/helpers/structural_tags.py) is
    vLLM's: the string its request model builds, or the field its 400 names. What only
    xgrammar refuses, the router passes on and the workers' check (vllm_compat) refuses."""
    fields, expected = TAG_CASES[case]
    prompt = {"messages": [{"role": "user", "content": "hi"}]} if route == "chat" else {"prompt": "hi"}
    got = _vllm_outcome(theirs, {"model": "m", **prompt, **fields})
    assert got == (expected if case in tags.ACCEPTED else (400, expected))
    if case in tags.REFUSED:
        return
    sent = structured.constraint(ours(**prompt, **fields))  # what the router hands its workers
    if case in tags.ACCEPTED:
        assert vllm_compat.structured_outputs(SamplingSpec(max_tokens=1, structured_outputs=sent)) is not None
    else:
        with pytest.raises(vllm_compat.CLIENT_ERRORS, match="Invalid structural tag specification"):
            vllm_compat.structured_outputs(SamplingSpec(max_tokens=1, structured_outputs=sent))


vllm_tokenize = pytest.importorskip("vllm.entrypoints.serve.tokenize.protocol")
vllm_serve = pytest.importorskip("vllm.entrypoints.serve.engine.protocol")
TOKENIZE_PAIRS = [
    (tokenize.TokenizeCompletionRequest, vllm_tokenize.TokenizeCompletionRequest),
    (tokenize.TokenizeChatRequest, vllm_tokenize.TokenizeChatRequest),
    (tokenize.DetokenizeRequest, vllm_tokenize.DetokenizeRequest),
]


@pytest.mark.parametrize(("ours", "theirs"), TOKENIZE_PAIRS, ids=[p[0].__name__ for p in TOKENIZE_PAIRS])
def test_tokenize_bodies_are_vllms(ours: type[BaseModel], theirs: type[BaseModel]) -> None:
    """/tokenize and /detokenize take vLLM's fields, with its defaults and nullability."""
    assert set(ours.model_fields) == set(theirs.model_fields)
    for name, field in ours.model_fields.items():
        other = theirs.model_fields[name]
        assert _takes_none(field.annotation) == _takes_none(other.annotation), name
        if not field.is_required():
            assert field.get_default(call_default_factory=True) == other.get_default(call_default_factory=True), name


def test_a_tokenize_chat_body_is_a_chat_completion_body() -> None:
    """The chat form is rendered as the chat completion of the same fields (router/api/tokenize.py):
    every field of it but ``return_token_strs`` is a chat completion field, with the same default."""
    fields = set(vllm_tokenize.TokenizeChatRequest.model_fields) - {"return_token_strs"}
    chat = vllm_chat.ChatCompletionRequest.model_fields
    assert fields <= set(chat)
    for name in fields - {"messages"}:
        mine = vllm_tokenize.TokenizeChatRequest.model_fields[name].get_default(call_default_factory=True)
        assert mine == chat[name].get_default(call_default_factory=True), name


def test_answers_have_vllms_keys(tmp_path: Path) -> None:
    """/tokenize, /detokenize and /v1/models answer with the keys of vLLM's response models."""
    router = scripted_router(tiny_tokenizer(tmp_path), [ScriptedPrefill()], [ScriptedDecode([5])], model_path="/m")
    tokenized = router.client.post("/tokenize", json={"prompt": "hi"}).json()
    assert list(tokenized) == list(vllm_tokenize.TokenizeResponse.model_fields)
    assert list(router.client.post("/detokenize", json={"tokens": [5]}).json()) == ["prompt"]
    listing = router.client.get("/v1/models").json()
    assert list(listing) == list(vllm_serve.ModelList.model_fields)
    (card,) = listing["data"]
    assert list(card) == list(vllm_serve.ModelCard.model_fields)
    assert list(card["permission"][0]) == list(vllm_serve.ModelPermission.model_fields)
    defaults = vllm_serve.ModelPermission().model_dump(exclude={"id", "created"})
    assert {k: v for k, v in card["permission"][0].items() if k in defaults} == defaults
