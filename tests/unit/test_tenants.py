"""Per-tenant prefix-cache isolation (router/tenants.py): the operator's salt per API key
reaches both engines of the request, before any salt the request brings."""

from __future__ import annotations

import pytest

from router.admission import client_id
from router.tenants import Tenants
from router.tokenizer import Tokenizer
from tests.helpers.router import ScriptedDecode, ScriptedPrefill, scripted_router, tiny_tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    return tiny_tokenizer(tmp_path_factory.mktemp("tiny"))


def test_key_entries_carry_an_optional_salt_and_salt_per_key_fills_the_rest() -> None:
    tenants = Tenants.parse(["k1 cache_salt=acme", "k2 cache_salt=acme", "k3"], salt_per_key=True)
    assert tenants.keys == ("k1", "k2", "k3")
    assert tenants.salt(client_id("k1")) == tenants.salt(client_id("k2")) == "acme"  # one tenant, two keys
    assert tenants.salt(client_id("k3")) not in ("", "acme")
    assert Tenants.parse(["k3"]).salt(client_id("k3")) == ""
    assert "k1" not in repr(tenants)
    with pytest.raises(ValueError, match="entry 2") as bad:
        Tenants.parse(["k1", "secret-key salt"])
    assert "secret-key" not in str(bad.value)


def test_each_tenants_requests_are_salted_on_both_engines(tok: Tokenizer) -> None:
    tenants = Tenants.parse(["k1 cache_salt=acme", "k2 cache_salt=globex", "k3"])
    prefill, decode = ScriptedPrefill(), ScriptedDecode([300, 301])
    r = scripted_router(tok, [prefill], [decode], api_keys=tenants.keys, cache_salts=dict(tenants.salts))
    body = {"model": "tiny", "prompt": "x " * 60, "max_tokens": 2}
    for key, extra in (("k1", {}), ("k2", {}), ("k3", {}), ("k1", {"cache_salt": "mine"})):
        resp = r.client.post("/v1/completions", json={**body, **extra}, headers={"Authorization": f"Bearer {key}"})
        assert resp.status_code == 200, resp.text
    salts = [spec.cache_salt for spec in prefill.specs]
    assert salts[:3] == ["acme", "globex", ""]
    assert salts[3] not in ("acme", "mine") and "acme" in salts[3]  # the tenant's, then the request's own
    assert [c["spec"].cache_salt for c in decode.calls] == salts  # both engines: the KV must match
