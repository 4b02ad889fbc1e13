"""Redis over TLS (``rediss://``), as compose and Kubernetes run it: a real redis-server
serving TLS only, with a password. Sim workers register and a router discovers them and
serves through it; a plaintext client gets nothing; a router and a worker that trust
another CA are refused at the handshake and say so — a counted, logged store outage
(``kind="tls"``), never a traceback — and the worker never joins the registry."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import redis

from pdserve.tools.fleet import start_router
from pdserve.tools.procs import Procs, python
from tests.factories import metric_samples
from tests.helpers.net import free_port
from tests.helpers.pki import make_pki
from tests.helpers.simfleet import ZERO, served_model, start_sim
from tests.helpers.waiting import wait_until
from tests.redis_server import RedisServer

PASSWORD = "redis-tls-pw"


def _tls_errors(router: str) -> float:
    samples = metric_samples(httpx.get(f"{router}/metrics", timeout=5).text)
    return samples.get(("pdserve_router_state_store_errors_total", (("kind", "tls"),)), 0.0)


def test_workers_and_router_share_state_over_tls_and_a_wrong_ca_is_refused(tmp_path: Path, default_model: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    other = make_pki(tmp_path / "other", "another CA")
    (tmp_path / "password").write_text(PASSWORD + "\n")
    server = RedisServer(free_port(), tmp_path / "redis", PASSWORD, tls=pki.server).start()
    assert server.url.startswith("rediss://")
    try:
        with Procs(tmp_path / "logs") as procs:
            store = ["--state-url", server.url, "--state-password-file", str(tmp_path / "password")]
            trusted = [*store, "--state-tls-ca", str(pki.ca)]
            for role in ("prefill", "decode"):
                start_sim(procs, role, role, ZERO, trusted)
            router = start_router(procs, default_model, args=[*trusted, "--log-level", "INFO"]).address
            body = {"model": served_model(router), "prompt": "over tls", "max_tokens": 4}
            assert httpx.post(f"{router}/v1/completions", json=body, timeout=30).status_code == 200
            assert httpx.get(f"{router}/health", timeout=5).json()["status"] == "ok"
            assert len(server.client().smembers("pdserve:workers")) == 2

            with pytest.raises(redis.ConnectionError):  # the plaintext port is off
                redis.Redis(port=server.port, password=PASSWORD, socket_timeout=2).ping()

            distrusting = [*store, "--state-tls-ca", str(other.ca)]
            start_sim(procs, "decode", "decode-other-ca", ZERO, distrusting)
            port = free_port()
            argv = python("router", "--port", str(port), "--model", str(default_model), *distrusting)
            procs.start("router-other-ca", argv)
            stranger = f"http://127.0.0.1:{port}"
            procs.wait_http(f"{stranger}/version", 120)
            wait_until(lambda: _tls_errors(stranger) > 0, "the router counts the TLS refusal", 60)
            health = httpx.get(f"{stranger}/health", timeout=5)
            assert health.status_code == 503, health.text  # no model: it found no worker
            assert health.json()["state_store"].startswith("unreachable (tls)"), health.text
            assert httpx.get(f"{stranger}/v1/models", timeout=5).json()["data"] == []
            assert len(server.client().smembers("pdserve:workers")) == 2  # the other-CA worker never joined
            assert httpx.post(f"{router}/v1/completions", json=body, timeout=30).status_code == 200
        logs = {p.stem: p.read_text(errors="replace") for p in (tmp_path / "logs").glob("*.log")}
    finally:
        server.stop()
    for name in ("router-other-ca", "decode-other-ca"):
        assert "CERTIFICATE_VERIFY_FAILED" in logs[name], logs[name][-2000:]
    for name, text in logs.items():
        assert "Traceback" not in text, (name, text[-3000:])
        assert PASSWORD not in text, name
