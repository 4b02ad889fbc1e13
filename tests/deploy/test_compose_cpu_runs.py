"""The compose `cpu` profile run as plain processes (no container engine here): each service
is its image's ENTRYPOINT + the service's command, with the image's ENV and the service's
environment. Only what a container network provides is mapped: service names → 127.0.0.1,
published ports → free local ports, the model volume → the cached default model, the redis
service → a redis-server of the test's own, TLS only as compose runs it, the secrets
volume → a directory that compose's own secrets-init script fills (the password, Redis's
certificate and CA), and UCX on loopback. Real vLLM CPU engines, real
NIXL; the router finds the workers through their registration in Redis, as in compose."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pdserve.lifetime import launch_env
from pdserve.security import TlsFiles
from tests.deploy.artifacts import REPO, load_compose, run_secrets_init
from tests.deploy.images import command, python_argv, stages
from tests.factories import metric_samples
from tests.helpers.net import free_port
from tests.helpers.waiting import NotReadyError, wait_until
from tests.redis_server import RedisServer

pytestmark = pytest.mark.engine

SERVICES = {
    "prefill-cpu": ("worker-cpu", "prefill"),
    "decode-cpu": ("worker-cpu", "decode"),
    "router": ("router", None),
}
HOSTS = ("prefill", "decode", "redis", "router")
PORT_VARS = ("PDSERVE_PORT", "PDSERVE_KV_PORT", "PDSERVE_METRICS_PORT", "PDSERVE_KV_EVENTS_PORT")
ADDRESS_VARS = ("PDSERVE_ADVERTISE", "PDSERVE_KV_HOST")
# Backstops, sized for 2 cores busy with other work: the waits end on their signal.
START_TIMEOUT_S = 900.0
METRICS_TIMEOUT_S = 60.0  # a worker's /metrics asks its engine for load between steps


def image_env(target: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in (c for c in stages()[target].instructions if c.cmd == "ENV"):
        pairs = instruction.value
        env.update(zip(pairs[::2], pairs[1::2], strict=True))
    return env


def localize(value: str, ports: dict[str, str]) -> str:
    if value.startswith("rediss://redis:"):  # the state store URL (the certificate names 127.0.0.1 too)
        return value.replace("rediss://redis:6379", f"rediss://127.0.0.1:{ports['6379']}")
    host, sep, port = value.rpartition(":")
    if sep and host in HOSTS and port in ports:
        return f"127.0.0.1:{ports[port]}"
    return "127.0.0.1" if value in HOSTS else ports.get(value, value)


SECRETS = "/run/pdserve-secrets/"  # the compose secrets volume's mount point


def service_env(service: dict, target: str, ports: dict[str, str], model: Path, secrets: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PDSERVE_")}
    env.update(image_env(target))
    env.update(
        {
            k: localize(str(v), ports) if k in (*PORT_VARS, *ADDRESS_VARS, "PDSERVE_STATE_URL") else str(v)
            for k, v in service.get("environment", {}).items()
        }
    )
    env.update({k: str(secrets / v.removeprefix(SECRETS)) for k, v in env.items() if v.startswith(SECRETS)})
    env.update(
        PDSERVE_MODEL=str(model),
        PDSERVE_HOST="127.0.0.1",
        PDSERVE_ROUTER_HOST="127.0.0.1",
        UCX_NET_DEVICES="lo",
        OMP_NUM_THREADS="1",
    )  # two engines share 2 cores here
    return env


@pytest.fixture
def cpu_profile(tmp_path: Path, default_model: Path) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    compose = load_compose()["services"]
    ports = {str(p): str(free_port()) for p in (50051, 50052, 5600, 5601, 9100, 9101, 8000, 5557, 5567, 6379)}
    secrets = run_secrets_init(tmp_path / "secrets")
    password = (secrets / "redis_password").read_text()
    tls = TlsFiles(str(secrets / "redis.crt"), str(secrets / "redis.key"), str(secrets / "redis-ca.crt"))
    redis_server = RedisServer(int(ports["6379"]), tmp_path / "redis", password, tls).start()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, (target, role) in SERVICES.items():
            env = service_env(compose[name], target, ports, default_model, secrets)
            if name == "router":
                env["PDSERVE_ROUTER_PORT"] = ports["8000"]
            argv = python_argv(command(target, role))
            procs[name] = subprocess.Popen(
                argv,
                cwd=REPO,
                env=launch_env(env),
                start_new_session=True,
                stdout=(tmp_path / f"{name}.log").open("wb"),
                stderr=subprocess.STDOUT,
            )
        procs["_ports"] = ports  # type: ignore[assignment]
        yield procs
    finally:
        for proc in (p for n, p in procs.items() if n != "_ports"):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        redis_server.stop()


def _stream_chat(url: str) -> tuple[str, dict]:
    body = {
        "model": "smollm2-135m-instruct",
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 12,
        "temperature": 0,
        "messages": [{"role": "user", "content": "Name a colour."}],
    }
    text, usage = "", {}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=300) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line.startswith("data: {"):
                event = json.loads(line[6:])
                text += "".join(c["delta"].get("content") or "" for c in event["choices"])
                usage = event.get("usage") or usage
    return text, usage


def _joined(url: str) -> bool:
    """Both workers registered in Redis and joined the router's pool (False while the
    router does not answer yet)."""
    try:
        samples = metric_samples(httpx.get(f"{url}/metrics", timeout=METRICS_TIMEOUT_S).text)
    except httpx.HTTPError:
        return False
    roles = {dict(labels)["role"] for (name, labels), v in samples.items() if name == "pdserve_router_workers" and v}
    return roles == {"prefill", "decode"}


def _kv_transfers(metrics_url: str) -> float:
    samples = metric_samples(httpx.get(metrics_url, timeout=METRICS_TIMEOUT_S).text)
    return sum(v for (name, _), v in samples.items() if name == "pdserve_worker_kv_transfers_total")


def test_cpu_profile_services_serve_pd_from_the_image_entrypoints(cpu_profile: dict, tmp_path: Path) -> None:
    ports, logs = cpu_profile["_ports"], tmp_path
    url = f"http://127.0.0.1:{ports['8000']}"

    def running() -> None:
        for name in SERVICES:
            assert cpu_profile[name].poll() is None, f"{name} exited; see {logs / name}.log"

    wait_until(lambda: _joined(url), "the cpu profile did not come up", START_TIMEOUT_S, 2, running)
    decode_metrics = f"http://127.0.0.1:{ports['9101']}/metrics"
    for _ in range(3):  # the first P/D request may pay (or miss) NIXL's handshake
        text, usage = _stream_chat(url)
        assert text and usage["completion_tokens"] >= 1
        with contextlib.suppress(NotReadyError):  # worker metrics are polled once a second
            wait_until(lambda: _kv_transfers(decode_metrics) > 0, "KV pulled", 10, 0.5, running)
            break
    assert _kv_transfers(decode_metrics) > 0, "the decode worker never pulled KV from the prefill worker"
    for name in ("router", "decode-cpu", "prefill-cpu"):  # the order compose stops them in reverse
        cpu_profile[name].send_signal(signal.SIGTERM)
        code = cpu_profile[name].wait(90)
        if name == "router":  # uvicorn shuts down gracefully, then re-raises the signal it caught
            assert code in (0, -signal.SIGTERM)
            assert "Application shutdown complete" in (logs / "router.log").read_text()
        else:
            assert code == 0, name
