"""The router ⇄ worker link with a worker token and mutual TLS, on a sim worker process
(real gRPC over loopback): who gets in, who is refused, and a router that has the
credentials serving through it (with API keys of its own)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pdserve.tools.procs import Procs
from pdserve.v1 import worker_pb2 as pb
from pdserve.v1 import worker_pb2_grpc as pb_grpc
from tests.helpers.net import free_port
from tests.helpers.pki import Pki, make_pki

TOKEN = "worker-secret-1"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, default_model: Path) -> Iterator[tuple[str, Pki, Procs]]:
    tmp = tmp_path_factory.mktemp("auth")
    pki = make_pki(tmp)
    (tmp / "token").write_text(TOKEN + "\n")
    port = free_port()
    argv = [sys.executable, "-m", "decode_worker", "--engine", "sim", "--engine-arg", "profile=zero"]
    argv += ["--port", str(port), "--metrics-port", "0", "--kv-events-port", "0", "--model", str(default_model)]
    argv += ["--served-model-name", "sim"]
    argv += ["--token-file", str(tmp / "token"), "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)]
    argv += ["--tls-ca", str(pki.ca)]
    with Procs(tmp) as procs:
        procs.start("worker", argv)
        address = f"localhost:{port}"
        _wait_serving(address, pki)
        yield address, pki, procs


def _tls(pki: Pki, client_cert: bool = True) -> grpc.ChannelCredentials:
    if not client_cert:
        return grpc.ssl_channel_credentials(pki.ca.read_bytes())
    return grpc.ssl_channel_credentials(pki.ca.read_bytes(), pki.client_key.read_bytes(), pki.client_cert.read_bytes())


def _wait_serving(address: str, pki: Pki) -> None:
    with grpc.secure_channel(address, _tls(pki)) as channel:
        grpc.channel_ready_future(channel).result(timeout=120)


def _info(channel: grpc.Channel, token: str | None) -> pb.WorkerInfo:
    metadata = (("authorization", f"Bearer {token}"),) if token is not None else None
    return pb_grpc.DecodeWorkerStub(channel).Info(pb.InfoRequest(), timeout=10, metadata=metadata)


def test_the_token_is_required_but_health_checks_stay_open(secured: tuple[str, Pki, Procs]) -> None:
    address, pki, _ = secured
    with grpc.secure_channel(address, _tls(pki)) as channel:
        for token in (None, "wrong", ""):
            with pytest.raises(grpc.RpcError) as err:
                _info(channel, token)
            assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED, token
        assert _info(channel, TOKEN).role == "decode"
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_plaintext_and_certificate_less_clients_are_refused(secured: tuple[str, Pki, Procs]) -> None:
    address, pki, _ = secured
    for channel in (grpc.insecure_channel(address), grpc.secure_channel(address, _tls(pki, client_cert=False))):
        with channel, pytest.raises(grpc.RpcError) as err:
            _info(channel, TOKEN)
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE


def test_a_router_with_the_credentials_serves_and_asks_clients_for_keys(
    secured: tuple[str, Pki, Procs], default_model: Path
) -> None:
    address, pki, procs = secured
    keys = procs.log_dir / "api-keys"
    keys.write_text("sk-test\n")
    port = free_port()
    argv = [sys.executable, "-m", "router", "--port", str(port), "--decode", address, "--model", str(default_model)]
    argv += ["--worker-token-file", str(procs.log_dir / "token"), "--api-keys-file", str(keys)]
    argv += ["--worker-tls-ca", str(pki.ca), "--worker-tls-cert", str(pki.client_cert)]
    argv += ["--worker-tls-key", str(pki.client_key)]
    procs.start("router", argv)
    url = f"http://127.0.0.1:{port}"
    procs.wait_http(f"{url}/health", timeout_s=300)
    body = {"model": "sim", "prompt": "hello", "max_tokens": 4}
    assert httpx.post(f"{url}/v1/completions", json=body, timeout=30).status_code == 401
    ok = httpx.post(f"{url}/v1/completions", json=body, headers={"Authorization": "Bearer sk-test"}, timeout=30)
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 4
    assert "sk-test" not in (procs.log_dir / "router.log").read_text()  # keys are never logged
