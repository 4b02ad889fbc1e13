"""deploy/compose: valid against the Compose specification's schema, and each profile is a
whole topology whose names, ports and GPUs line up."""

from __future__ import annotations

import importlib.resources
import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import redis
import yaml
from cryptography import x509

from tests.deploy.artifacts import DEPLOY, WORKER_ROLES, load_compose, run_secrets_init
from tests.helpers.net import free_port
from tests.helpers.waiting import wait_until

PROFILES = {
    "gpu": {"prefill": "prefill", "decode": "decode"},
    "cpu": {"prefill": "prefill-cpu", "decode": "decode-cpu"},
    "sim": {"prefill": "prefill-sim", "decode": "decode-sim"},
}
PDSERVE_IMAGES = ("router", "worker-gpu", "worker-cpu")


def compose_schema() -> dict[str, Any]:
    # The Compose specification's own JSON Schema, as vendored by check-jsonschema.
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    return dict(json.loads(vendor.joinpath("compose-spec.json").read_text()))


@pytest.mark.parametrize("env", [{}, {"PDSERVE_MODEL_DIR": "/srv/models/llama", "PDSERVE_PREFILL_GPU": "2"}])
def test_validates_against_the_compose_schema(env: dict[str, str]) -> None:
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema, format_checker=jsonschema.FormatChecker())
    errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(load_compose(env))]
    assert not errors, "\n".join(errors)


def active(compose: dict[str, Any], profile: str) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in compose["services"].items() if profile in s.get("profiles", [profile])}


def hostnames(name: str, service: dict[str, Any]) -> set[str]:
    aliases = service.get("networks", {}).get("default", {}) or {}
    return {name, *aliases.get("aliases", [])}


@pytest.mark.parametrize("profile", PROFILES)
def test_each_profile_is_a_whole_topology(profile: str) -> None:
    services = active(load_compose(), profile)
    names = {h for n, s in services.items() for h in hostnames(n, s)}
    router_env = services["router"]["environment"]
    for role, name in PROFILES[profile].items():
        worker = services[name]
        env = worker["environment"]
        assert worker["command"][0] == role  # the worker images' entrypoint is `pdserve`
        assert role in hostnames(name, worker)
        # routers find workers through the registry, at the address each one advertises
        assert env["PDSERVE_ADVERTISE"] == f"{role}:{env['PDSERVE_PORT']}"
        assert env["PDSERVE_STATE_URL"] == router_env["PDSERVE_STATE_URL"]
        assert (profile == "sim") == (env.get("PDSERVE_ENGINE") == "sim")
        assert env["PDSERVE_KV_HOST"] in hostnames(name, worker), "peers reach the NIXL side channel there"
        assert worker["volumes"] == services["router"]["volumes"], "router and workers read one model directory"
        assert float(worker["stop_grace_period"].rstrip("s")) > float(env["PDSERVE_GRACE_S"])
        for dep in worker.get("depends_on", {}):
            assert dep in services or worker["depends_on"][dep].get("required") is False, dep
    assert {"redis", "prometheus", "grafana"} <= names
    assert router_env["PDSERVE_STATE_URL"].startswith("rediss://redis:")  # TLS
    assert "PDSERVE_PREFILL" not in router_env and "PDSERVE_DECODE" not in router_env  # no static list


def test_gpu_workers_are_pinned_to_different_gpus() -> None:
    services = load_compose()["services"]
    pinned = []
    for name in PROFILES["gpu"].values():
        (device,) = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        pinned += device["device_ids"]
    assert pinned == ["0", "1"]
    assert not any("deploy" in services[n] for n in PROFILES["cpu"].values())


def test_every_pdserve_service_is_health_checked_and_built_from_the_dockerfile() -> None:
    """Health checks come from the images' HEALTHCHECK; images are built from one Dockerfile."""
    compose = load_compose()
    for name, service in compose["services"].items():
        image = service["image"]
        if not image.startswith("pdserve/"):
            continue
        target = image.split("/")[1].split(":")[0]
        assert target in PDSERVE_IMAGES
        assert service["build"] == {"context": "../..", "dockerfile": "deploy/docker/Dockerfile", "target": target}
        assert "healthcheck" not in service or not service["healthcheck"].get("disable"), name
    assert "healthcheck" in compose["services"]["redis"]


def test_prometheus_scrapes_every_role_where_compose_runs_it() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {j["job_name"]: j["static_configs"][0]["targets"] for j in config["scrape_configs"]}
    compose = load_compose()
    assert targets.pop("router") == ["router:8000"]
    for profile, workers in PROFILES.items():
        for role in WORKER_ROLES:
            env = active(compose, profile)[workers[role]]["environment"]
            assert targets[role] == [f"{role}:{env['PDSERVE_METRICS_PORT']}"], profile
    assert set(targets) == set(WORKER_ROLES)


def test_redis_is_password_protected_bounded_and_every_pdserve_service_has_the_secrets() -> None:
    """secrets-init makes the Redis password and the registry secret once, into a volume that
    Redis and every pdserve service mount read-only; none is in the environment or the URL."""
    compose = load_compose()
    services = compose["services"]
    init = services["secrets-init"]
    assert init["volumes"] == ["secrets:/secrets"] and "redis_password" in init["entrypoint"][-1]
    redis = services["redis"]
    script = redis["entrypoint"][-1]
    assert "requirepass" in script and "redis-server -" in script, "the password via stdin, not argv"
    assert "--maxmemory " in script and "--maxmemory-policy noeviction" in script
    assert "--port 0 --tls-port 6379" in script, "TLS only: the plaintext port is closed"
    probe = redis["healthcheck"]["test"][-1]
    assert "REDISCLI_AUTH" in probe and "--tls --cacert /run/pdserve-secrets/redis-ca.crt" in probe
    assert redis["depends_on"]["secrets-init"]["condition"] == "service_completed_successfully"
    for profile in PROFILES:
        for name, service in active(compose, profile).items():
            if not service["image"].startswith("pdserve/") or name in ("model-init", "secrets-init"):
                continue
            env = service["environment"]
            assert "secrets:/run/pdserve-secrets:ro" in service["volumes"], name
            assert env["PDSERVE_STATE_PASSWORD_FILE"].startswith("/run/pdserve-secrets/"), name
            assert env["PDSERVE_REGISTRY_SECRET_FILE"].startswith("/run/pdserve-secrets/"), name
            assert env["PDSERVE_STATE_TLS_CA"] == "/run/pdserve-secrets/redis-ca.crt", name
            assert env["PDSERVE_STATE_URL"].startswith("rediss://redis:6379/"), name
            assert "@" not in env["PDSERVE_STATE_URL"], name
            assert service["depends_on"]["secrets-init"]["condition"] == "service_completed_successfully", name


def test_secrets_init_makes_redis_a_certificate_once_and_redis_then_serves_tls_only(tmp_path: Path) -> None:
    """compose's own scripts, run here: secrets-init's openssl makes a CA and a certificate for
    the host `redis` (the CA's key deleted), a second run changes nothing, and the redis
    service's command serves TLS with it, a password required, the plaintext port closed."""
    secrets = run_secrets_init(tmp_path / "secrets")
    made = {p.name: p.read_bytes() for p in secrets.iterdir()}
    assert set(made) == {"redis_password", "registry_secret", "redis-ca.crt", "redis.crt", "redis.key"}
    assert run_secrets_init(secrets) and {p.name: p.read_bytes() for p in secrets.iterdir()} == made
    cert = x509.load_pem_x509_certificate(made["redis.crt"])
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "redis" in names.get_values_for_type(x509.DNSName)

    port = free_port()
    service = load_compose()["services"]["redis"]
    script = service["entrypoint"][-1].replace("/run/pdserve-secrets", str(secrets))
    script = script.replace("--tls-port 6379", f"--tls-port {port}")
    server = subprocess.Popen(
        ["sh", "-c", f"{script} --bind 127.0.0.1"],
        cwd=tmp_path,
        stdout=(tmp_path / "redis.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        password = made["redis_password"].decode()
        verified = redis.Redis(
            port=port, password=password, ssl=True, ssl_ca_certs=str(secrets / "redis-ca.crt"), socket_timeout=2
        )
        wait_until(lambda: _pings(verified), "redis serves TLS", 30, 0.1)
        probe = service["healthcheck"]["test"][-1].replace("/run/pdserve-secrets", str(secrets))
        assert subprocess.run(["sh", "-c", probe.replace("redis-cli", f"redis-cli -p {port}")]).returncode == 0
        with pytest.raises(redis.ConnectionError):  # no plaintext
            redis.Redis(port=port, password=password, socket_timeout=2).ping()
        with pytest.raises(redis.AuthenticationError):  # TLS, no password
            redis.Redis(port=port, ssl=True, ssl_ca_certs=str(secrets / "redis-ca.crt"), socket_timeout=2).ping()
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False
