"""/version, /ping, /health and the /v1/models cards, as vLLM 0.32's server answers them;
/health is 503 while a model has no decode worker."""

from __future__ import annotations

from typing import Any

import pytest

from router.tokenizer import Tokenizer
from tests.helpers.router import ScriptedDecode, ScriptedPrefill, ScriptedRouter, scripted_router, tiny_tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    return tiny_tokenizer(tmp_path_factory.mktemp("tiny"))


def router(
    tok: Tokenizer, *, prefill: bool = True, decode: bool = True, **kw: Any
) -> tuple[ScriptedRouter, ScriptedDecode]:
    worker = ScriptedDecode([5, 6])
    r = scripted_router(tok, [ScriptedPrefill()] if prefill else [], [worker] if decode else [], **kw)
    return r, worker


def test_version_is_the_vllm_version_the_workers_run(tok: Tokenizer) -> None:
    r, _ = router(tok, vllm_version="0.32.0")
    assert r.client.get("/version").json() == {"version": "0.32.0"}


def test_model_cards_carry_vllms_fields(tok: Tokenizer) -> None:
    r, _ = router(tok, model_path="/models/tiny")
    listing = r.client.get("/v1/models").json()
    (card,) = listing["data"]
    assert listing["object"] == "list"
    assert list(card) == ["id", "object", "created", "owned_by", "root", "parent", "max_model_len", "permission"]
    assert (card["id"], card["root"], card["parent"], card["max_model_len"]) == ("tiny", "/models/tiny", None, 256)
    (perm,) = card["permission"]
    assert perm["object"] == "model_permission" and perm["id"].startswith("modelperm-")
    assert perm["allow_sampling"] and perm["allow_logprobs"] and not perm["allow_fine_tuning"]


def test_health_and_ping_are_200_while_every_model_has_a_decode_worker(tok: Tokenizer) -> None:
    r, _ = router(tok)
    for method, path in [("GET", "/health"), ("GET", "/ping"), ("POST", "/ping")]:
        resp = r.client.request(method, path)
        assert (resp.status_code, resp.json()) == (200, {"status": "ok"}), path


def test_health_is_503_naming_a_model_without_a_decode_worker(tok: Tokenizer) -> None:
    r, _ = router(tok, decode=False)
    for method, path in [("GET", "/health"), ("GET", "/ping"), ("POST", "/ping")]:
        resp = r.client.request(method, path)
        assert resp.status_code == 503, path
        assert resp.json()["models_without_decode"] == ["tiny"] and "tiny" in resp.json()["message"]
    assert r.client.get("/v1/models").json()["data"] == []  # not served, so not listed


def test_health_is_503_before_any_worker_joined_and_liveness_routes_still_answer(tok: Tokenizer) -> None:
    r, _ = router(tok, prefill=False, decode=False)
    resp = r.client.get("/health")
    assert resp.status_code == 503 and resp.json()["message"] == "no model is served yet"
    assert r.client.get("/version").json() == {"version": ""}  # what deploy/k8s probes for liveness
