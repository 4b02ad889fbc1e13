"""The router's request models against vLLM's own (DESIGN §7): every field vLLM's
ChatCompletionRequest and CompletionRequest have is declared (honoured) or refused by
name, nothing else is declared, and ``null`` is accepted exactly where vLLM accepts it."""

from __future__ import annotations

import types
import typing
from typing import Any

import pytest
from pydantic import BaseModel

from router.api import schemas

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
