"""Shared fixtures. Real engines are expensive on 2 cores: start them once per session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.cluster import KV_LEASE_S, PREFILL_WORKERS, Cluster, start_up, stop_up
from tests.helpers.net import free_port
from tests.helpers.processes import become_subreaper, reap_leftovers
from tests.helpers.reference import ReferenceRun, start_reference, stop_reference
from tests.helpers.reference import reference_outputs as collect_reference
from tests.redis_server import RedisServer


def pytest_configure(config: pytest.Config) -> None:
    # Processes whose parent dies (a worker's engine core, when the worker is killed) are
    # handed to this process instead of init, so the session's end still finds them.
    become_subreaper()


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """Nothing the suite started may outlive it (an orphaned vLLM CPU engine spins):
    kill what fixtures left behind, and say so, since that is a fixture's bug."""
    left = reap_leftovers()
    if left:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_sep("-", "killed processes the tests left running", red=True)
            for line in left:
                reporter.write_line(line)


@pytest.fixture(scope="session")
def default_model() -> Path:
    from pdserve.tools.model import default_model_dir

    return default_model_dir()


@pytest.fixture(scope="session")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, reference_outputs: dict, redis_server: RedisServer
) -> Iterator[Cluster]:
    """The README's run command (`pdserve up`) on the embedded default model.

    Depends on ``reference_outputs`` so the colocated reference engine has finished
    before these engines start (idle vLLM CPU engines spin and slow each other).
    """
    c = start_up(
        tmp_path_factory.mktemp("cluster"),
        f"--worker-arg=--state-url={redis_server.url}",  # workers also feed Redis (tests/e2e/test_placement.py)
        "--worker-arg=--heartbeat-ttl=10",  # the default; shorter ones expire while 3 engines starve the CPU
        f"--worker-arg=--kv-lease-s={KV_LEASE_S}",  # tests/e2e/test_soak.py waits for orphans this long
        prefill_workers=PREFILL_WORKERS,
    )
    yield c
    stop_up(c.proc)


@pytest.fixture(scope="session")
def tokenizer(default_model: Path):  # type: ignore[no-untyped-def]
    from router.tokenizer import Tokenizer

    return Tokenizer(default_model)


os.environ.setdefault("PDSERVE_LOG_LEVEL", "INFO")


@pytest.fixture(scope="session", autouse=True)
def _reference_run(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ReferenceRun | None]:
    """The reference engine's run, started with the session when a selected test needs its
    outputs: it then runs beside the unit tests, which leave one of 2 cores idle, instead of
    holding up the session cluster's start (tests/helpers/reference.py)."""
    if not any("reference_outputs" in item.fixturenames for item in request.session.items):
        yield None
        return
    from pdserve.tools.model import default_model_dir
    from router.tokenizer import Tokenizer

    # Not the session fixtures of the same names: modules override those for their own tests.
    model = default_model_dir()
    run = start_reference(tmp_path_factory.mktemp("reference"), model, Tokenizer(model))
    yield run
    stop_reference(run)


@pytest.fixture(scope="session")
def reference_outputs(_reference_run: ReferenceRun | None) -> dict:
    """Greedy outputs of tests/e2e/prompts.py CASES from one colocated vLLM engine, by case name."""
    assert _reference_run is not None, "started by _reference_run for every session whose tests need it"
    return collect_reference(_reference_run)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server for the session; tests that stop it start their own."""
    server = RedisServer(free_port(), tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()
