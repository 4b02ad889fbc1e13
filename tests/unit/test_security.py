"""API keys at the router, secrets files, TLS configuration errors (no network)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from pdserve.security import TlsFiles, WorkerLink, bearer_ok, read_secrets, redact_url
from pdserve.state import WorkerRecord
from pdserve.state.memory import MemoryStore
from pdserve.state.trust import RegistryTrust, UntrustedRecord
from pdserve.types import WorkerId
from pdserve.worker.server import ServerOptions
from router.api.app import create_app
from router.config import MAX_BODY_BYTES
from router.metrics import RouterMetrics
from router.orchestrator import Orchestrator
from router.placement import make_policy
from router.placement.decider import ThresholdDecider
from router.placer import Placer
from router.request import Timeouts
from router.service import RouterService
from router.tenants import Tenants
from tests.factories import metric_samples


def test_secrets_come_from_the_file_then_the_env_without_comments_or_repeats(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = tmp_path / "keys"
    f.write_text("# rotated monthly\nsk-new\n\n  sk-old  \n")
    monkeypatch.setenv("PDSERVE_TEST_KEYS", "sk-env, sk-new")
    assert read_secrets(str(f), "PDSERVE_TEST_KEYS") == ("sk-new", "sk-old", "sk-env")
    assert read_secrets("", "PDSERVE_UNSET_VARIABLE") == ()
    with pytest.raises(ValueError, match="secrets file"):
        read_secrets(str(tmp_path / "missing"))


def test_bearer_matches_any_configured_secret_and_nothing_else() -> None:
    keys = ("sk-a", "sk-b")
    assert bearer_ok("Bearer sk-b", keys) and bearer_ok("Bearer sk-a", keys)
    for header in (None, "", "Bearer", "Bearer ", "Bearer sk-c", "sk-a", "Basic sk-a", "Bearer sk-a sk-b"):
        assert not bearer_ok(header, keys), header
    assert bearer_ok("bearer  sk-a ", keys)  # the scheme is case-insensitive (RFC 6750), spaces trimmed
    assert not bearer_ok("Bearer ", ("",))  # an empty secret never authenticates anyone


def app_with_keys(keys: tuple[str, ...]) -> tuple[TestClient, RouterMetrics]:
    metrics = RouterMetrics("round-robin")
    placer = Placer(make_policy("round-robin"), ThresholdDecider(), MemoryStore())
    service = RouterService({}, Orchestrator(placer, Timeouts(), metrics), metrics)
    return TestClient(create_app(lambda: service, api_keys=keys, max_body_bytes=MAX_BODY_BYTES)), metrics


def test_the_api_needs_a_key_when_keys_are_configured() -> None:
    client, _ = app_with_keys(("sk-1", "sk-2"))
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "sk-1"}):
        resp = client.get("/v1/models", headers=headers)
        assert resp.status_code == 401, headers
        assert resp.json()["error"]["code"] == "invalid_api_key"
        assert "sk-1" not in resp.text
    resp = client.post("/v1/completions", json={"model": "m", "prompt": "x"})
    assert resp.status_code == 401  # rejected before the body is looked at
    assert client.get("/v1/models", headers={"Authorization": "Bearer sk-2"}).status_code == 200
    # probes and Prometheus need no key (/health is 503, not 401: no worker has joined)
    assert client.get("/health").status_code == 503
    assert client.get("/version").status_code == 200
    assert client.get("/metrics").status_code == 200
    samples = metric_samples(client.get("/metrics").text)
    assert samples[("pdserve_router_rejections_total", (("reason", "unauthenticated"),))] == 4


def test_without_keys_the_api_is_open() -> None:
    client, _ = app_with_keys(())
    assert client.get("/v1/models").status_code == 200


def test_tls_configuration_errors_name_the_field(tmp_path: Path) -> None:
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    with pytest.raises(ValueError, match="both a certificate and its key"):
        TlsFiles(cert=str(cert))
    with pytest.raises(ValueError, match="tls_ca"):
        TlsFiles(ca=str(tmp_path / "missing.pem"))
    assert not TlsFiles().enabled and TlsFiles(ca=str(cert)).enabled


# --- the registry's records (pdserve.state.trust) --------------------------------------------


def _record(worker: str = "10.0.0.1:50051") -> WorkerRecord:
    return WorkerRecord(WorkerId(worker), "decode", "m", 16, "s", 4096, "i1", ttl_ms=9000)


def test_a_signed_record_verifies_and_rotation_accepts_either_secret() -> None:
    old, new = RegistryTrust(("old",)), RegistryTrust(("new",))
    routers = RegistryTrust(("new", "old"))  # mid-rotation
    for worker in (old, new):
        entry = worker.sign(_record()).to_json()
        assert routers.check(entry) == worker.sign(_record())
    with pytest.raises(UntrustedRecord) as caught:
        new.check(old.sign(_record()).to_json())
    assert caught.value.reason == "bad_signature"


def test_a_tampered_unsigned_or_malformed_record_is_refused() -> None:
    trust = RegistryTrust(("s",))
    signed = trust.sign(_record())
    moved = dataclasses.replace(signed, worker_id=WorkerId("6.6.6.6:50051"))  # same signature, other address
    cases = {
        moved.to_json(): "bad_signature",
        _record().to_json(): "unsigned",
        "{": "malformed",
        json.dumps({**json.loads(signed.to_json()), "role": "admin"}): "malformed",
        json.dumps({**json.loads(signed.to_json()), "block_size": True}): "malformed",
        json.dumps({**json.loads(signed.to_json()), "worker_id": "no-port"}): "malformed",
    }
    for entry, reason in cases.items():
        with pytest.raises(UntrustedRecord) as caught:
            trust.check(entry)
        assert caught.value.reason == reason, entry


def test_without_a_secret_records_go_unsigned_and_valid_ones_are_trusted() -> None:
    trust = RegistryTrust()
    assert not trust.enabled and trust.sign(_record()).signature == ""
    assert trust.check(_record().to_json()) == _record()
    with pytest.raises(UntrustedRecord):
        trust.check('{"worker_id": 1}')


def test_a_registered_workers_info_must_agree_with_its_record_and_be_sane() -> None:
    from pdserve.engine.base import EngineInfo
    from router.fleet import check_info

    rec = _record()
    info = EngineInfo("decode", "m", 16, "0.32.0", 4096, 2048, "vllm")
    check_info(rec, info)
    for bad, field in (
        (dataclasses.replace(info, model="other"), "model"),
        (dataclasses.replace(info, role="prefill"), "role"),
        (dataclasses.replace(info, block_size=32), "block_size"),
        (dataclasses.replace(info, max_model_len=0), "max_model_len"),
        (dataclasses.replace(info, max_model_len=1 << 40), "max_model_len"),
    ):
        with pytest.raises(ValueError, match=field):
            check_info(rec, bad)


@pytest.mark.parametrize(
    "url,shown",
    [
        ("redis://:s3cret@redis:6379/0", "redis://***@redis:6379/0"),
        ("rediss://user:s3cret@redis:6380", "rediss://***@redis:6380"),
        ("redis://redis:6379/0?password=s3cret", "redis://redis:6379/0?***"),
        ("redis://redis:6379/0", "redis://redis:6379/0"),
        ("memory://", "memory://"),
    ],
)
def test_urls_in_logs_and_errors_lose_their_passwords(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_secret_bearing_config_shows_no_secret_in_its_repr() -> None:
    assert "tok3n" not in repr(WorkerLink(token="tok3n"))
    assert "tok3n" not in repr(ServerOptions(tokens=("tok3n",)))
    assert "sk-k3y" not in repr(Tenants.parse(["sk-k3y cache_salt=s"]))
