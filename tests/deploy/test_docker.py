"""deploy/docker: each image target runs a module that exists and answers --help, as a
non-root user with a health check; the health-check script tells serving from not."""

from __future__ import annotations

import http.server
import json
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tests.deploy.artifacts import DEPLOY, OVERLAYS, REPO, WORKER_ROLES, load_compose, render
from tests.deploy.images import DOCKERFILE, command, python_argv, stages

HEALTHCHECK = DEPLOY / "docker" / "healthcheck.py"
TARGETS = ("router", "worker-gpu", "worker-cpu")


def test_the_targets_exist_and_run_as_a_non_root_user_with_a_healthcheck() -> None:
    all_stages = stages()
    for target in TARGETS:
        stage = all_stages[target]
        assert stage.last("USER").value[0] not in ("root", "0"), target
        check = stage.last("HEALTHCHECK")
        assert check.value[:2] == ("CMD", "pdserve-healthcheck"), target
        assert any(flag.startswith("--start-period=") for flag in check.flags), target


def test_what_the_images_copy_exists_and_is_in_the_build_context() -> None:
    ignore = (DEPLOY / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
    included = {line[1:] for line in ignore if line.startswith("!")}
    for stage in stages().values():
        copies = [c for c in stage.instructions if c.cmd == "COPY"]
        for copy in (c for c in copies if not any(f.startswith("--from=") for f in c.flags)):
            for source in copy.value[:-1]:
                assert (REPO / source).exists(), source
                assert source in included, f"{source} is excluded by Dockerfile.dockerignore"


RUNS = [("router", None), *((t, r) for t in ("worker-gpu", "worker-cpu") for r in WORKER_ROLES)]


@pytest.fixture(scope="module")
def help_of() -> dict[tuple[str, str | None], subprocess.CompletedProcess[str]]:
    """`<ENTRYPOINT> [CMD or role] --help` of every image and role, run once (imports are slow)."""
    by_argv: dict[tuple[str, ...], subprocess.CompletedProcess[str]] = {}
    for run in RUNS:
        argv = python_argv([*command(*run), "--help"])
        if tuple(argv) not in by_argv:
            by_argv[tuple(argv)] = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
    return {run: by_argv[tuple(python_argv([*command(*run), "--help"]))] for run in RUNS}


@pytest.mark.parametrize(("target", "role"), RUNS)
def test_the_entrypoint_answers_help(
    help_of: dict[tuple[str, str | None], subprocess.CompletedProcess[str]], target: str, role: str | None
) -> None:
    proc = help_of[target, role]
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: pdserve {role or 'router'}"), proc.stdout[:200]


def test_compose_and_k8s_run_the_worker_roles_the_entrypoint_knows() -> None:
    assert command("worker-gpu")[-1] in WORKER_ROLES
    for name, service in load_compose()["services"].items():
        if "worker-" in service["image"] and name != "model-init":
            assert service["command"][0] in WORKER_ROLES, name
    for overlay in OVERLAYS:
        for res in render(overlay):
            if res["kind"] == "Deployment" and res["metadata"]["name"] != "pdserve-router":
                assert res["spec"]["template"]["spec"]["containers"][0]["args"][0] in WORKER_ROLES


def test_every_pdserve_variable_set_is_one_a_service_reads(
    help_of: dict[tuple[str, str | None], subprocess.CompletedProcess[str]],
) -> None:
    """Catches a misspelt or retired PDSERVE_* setting in the images, compose or k8s: every
    flag's variable is named in the services' --help."""
    names = re.compile(r"PDSERVE_[A-Z_]+[A-Z]")
    known = {name for proc in help_of.values() for name in names.findall(proc.stdout)}
    compose = (DEPLOY / "compose" / "compose.yaml").read_text()
    texts = [DOCKERFILE.read_text(), compose, *(json.dumps(render(o)) for o in OVERLAYS)]
    used = {name for text in texts for name in names.findall(text)}
    # Compose's own knobs: ${PDSERVE_...} that no service gets under that name.
    settings = set(re.findall(r"^\s*(PDSERVE_\w+):", compose, re.MULTILINE))
    compose_knobs = set(re.findall(r"\$\{(PDSERVE_\w+)", compose)) - settings
    # PDSERVE_CACHE: where pdserve.tools.model converts the embedded model (the worker-cpu build).
    others = {"PDSERVE_CACHE"}
    assert sorted(used - known - compose_knobs - others) == []


@pytest.fixture
def health_server() -> Iterator[tuple[int, health.HealthServicer]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port, servicer
    server.stop(None)


def healthcheck(*args: str, env: dict[str, str] | None = None) -> int:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PDSERVE_")}
    argv = [sys.executable, str(HEALTHCHECK), *args]
    proc = subprocess.run(argv, env={**clean, **(env or {})}, capture_output=True, timeout=60)
    return proc.returncode


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_grpc_healthcheck_follows_the_worker_status(health_server: tuple[int, health.HealthServicer]) -> None:
    port, servicer = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert healthcheck("grpc", str(port)) == 0
    assert healthcheck("grpc", env={"PDSERVE_PORT": str(port)}) == 0
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)  # draining
    assert healthcheck("grpc", str(port)) == 1


def test_grpc_healthcheck_fails_when_nothing_listens() -> None:
    assert healthcheck("grpc", str(closed_port())) == 1


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_http_healthcheck_follows_the_router() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        assert healthcheck("http", str(port)) == 0
        assert healthcheck("http", env={"PDSERVE_ROUTER_PORT": str(port)}) == 0
    finally:
        server.shutdown()
        server.server_close()
    assert healthcheck("http", str(port)) == 1
    assert healthcheck("bogus") == 2
