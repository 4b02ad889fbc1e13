"""Structural tags (router/api/structured.py): what the router hands its workers for a
``response_format`` of type ``structural_tag`` or a ``structured_outputs.structural_tag``,
and the 400s it gives, each as ``vllm serve`` 0.32 (tests/helpers/structural_tags.py,
held to vLLM by tests/contract/test_openai_fields.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from router.tokenizer import Tokenizer
from tests.helpers import structural_tags as tags
from tests.helpers.router import ScriptedDecode, ScriptedPrefill, ScriptedRouter, scripted_router, tiny_tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    return tiny_tokenizer(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def r(tok: Tokenizer) -> tuple[ScriptedRouter, ScriptedDecode]:
    decode = ScriptedDecode(tok.encode("ab", add_special_tokens=False))
    return scripted_router(tok, [ScriptedPrefill(kv={"remote_block_ids": [[1]]})], [decode]), decode


def post(r: ScriptedRouter, chat: bool, fields: dict[str, Any]) -> Any:
    body = {"model": "tiny", **({"messages": [{"role": "user", "content": "hi"}]} if chat else {"prompt": "hi"})}
    return r.client.post("/v1/chat/completions" if chat else "/v1/completions", json={**body, **fields})


def sent_tag(decode: ScriptedDecode) -> str:
    """The structural tag of the last request the decode worker got: it is the constraint."""
    fields = json.loads(decode.calls[-1]["spec"].structured_outputs)
    assert list(fields) == ["structural_tag"]
    return str(fields["structural_tag"])


@pytest.mark.parametrize("chat", [True, False], ids=["chat", "completions"])
@pytest.mark.parametrize(("fields", "tag"), tags.ACCEPTED.values(), ids=tags.ACCEPTED.keys())
def test_a_structural_tag_reaches_the_workers_as_the_string_vllm_builds(
    r: tuple[ScriptedRouter, ScriptedDecode], chat: bool, fields: dict[str, Any], tag: str
) -> None:
    router, decode = r
    resp = post(router, chat, fields)
    assert resp.status_code == 200, resp.text
    assert sent_tag(decode) == tag


@pytest.mark.parametrize("chat", [True, False], ids=["chat", "completions"])
@pytest.mark.parametrize(("fields", "param"), tags.REFUSED.values(), ids=tags.REFUSED.keys())
def test_a_malformed_structural_tag_is_a_400_naming_the_field_it_came_in(
    r: tuple[ScriptedRouter, ScriptedDecode], chat: bool, fields: dict[str, Any], param: str
) -> None:
    router, decode = r
    resp = post(router, chat, fields)
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["param"] == param
    assert err["message"] == f"Invalid {param} structural_tag specification."  # vLLM's words
    assert decode.calls == []


@pytest.mark.parametrize(("fields", "param"), tags.BY_WORKERS.values(), ids=tags.BY_WORKERS.keys())
def test_what_only_xgrammar_refuses_is_passed_on_for_the_workers_to_judge(
    r: tuple[ScriptedRouter, ScriptedDecode], fields: dict[str, Any], param: str
) -> None:
    """The router loads no xgrammar; the workers run vLLM's check on these (vllm_compat)."""
    router, decode = r
    assert post(router, True, fields).status_code == 200
    sent_tag(decode)


@pytest.mark.parametrize(
    "fields",
    [
        {"structured_outputs": {"structural_tag": json.dumps(tags.CURRENT), "regex": "a"}},
        {**tags.rf(tags.CURRENT), "structured_outputs": {"regex": "a"}},
        {**tags.rf(tags.CURRENT), "structured_outputs": {"json": {"type": "object"}}},
    ],
    ids=["tag_and_regex", "response_format_tag_and_regex", "response_format_tag_and_json"],
)
def test_a_structural_tag_is_one_constraint_among_the_others(
    r: tuple[ScriptedRouter, ScriptedDecode], fields: dict[str, Any]
) -> None:
    router, decode = r
    resp = post(router, True, fields)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == "structured_outputs"
    assert decode.calls == []


def test_a_tag_too_deep_to_parse_gets_vllms_nesting_400(r: tuple[ScriptedRouter, ScriptedDecode]) -> None:
    """Past Python's recursion limit the router cannot read the tag; vLLM's nesting check
    (64 + 16 levels, run by the workers on shallower ones) refuses it with these words."""
    router, decode = r
    resp = post(router, True, tags.so("[" * 5000 + "]" * 5000))
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["message"].startswith("The JSON schema is nested too deeply")
    assert resp.json()["error"]["param"] is None
    assert decode.calls == []


def test_a_null_structural_tag_asks_for_nothing(r: tuple[ScriptedRouter, ScriptedDecode]) -> None:
    router, decode = r
    resp = post(router, True, {"structured_outputs": {"structural_tag": None, "regex": "a+"}})
    assert resp.status_code == 200, resp.text
    assert json.loads(decode.calls[-1]["spec"].structured_outputs) == {"regex": "a+"}
