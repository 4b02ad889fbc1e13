"""The router's HTTP API against `vllm serve` on the same model (DESIGN §7, issue #13):
the parity battery (pdserve/tools/parity) sent to both; every mismatch must be listed in
docs/parity_known.json with its reason."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from pdserve.tools.fleet import start_router
from pdserve.tools.parity import known as known_file
from pdserve.tools.parity.__main__ import ParityConfig, render, report_json, run, table
from pdserve.tools.procs import Procs
from tests.helpers.cluster import Cluster
from tests.helpers.net import REPO
from tests.helpers.vllm_serve import VllmServer, vllm_serves

pytestmark = pytest.mark.engine

KNOWN = REPO / "docs/parity_known.json"

# The tools suite: both servers started alike for tool calling (issue #14). No reasoning parser:
# vLLM applies structured outputs only once its engine's reasoning parser sees reasoning end,
# and the qwen3 parser on this model (no <think> tokens in its vocabulary) never does, so
# forced tool choices would run unconstrained there (measured; see the #14 note).
TOOL_FLAGS = (
    "--chat-template",
    str(REPO / "tests/templates/hermes_tools.jinja"),
    "--tool-call-parser",
    "hermes",
    "--enable-auto-tool-choice",
)


@pytest.fixture(scope="module")
def vllm_servers(
    cluster: Cluster, default_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[VllmServer, ...]]:
    """Both suites' `vllm serve`s, with the workers' engine settings and the cluster's model
    name: the plain one and one with TOOL_FLAGS, started together (one start's wall time)."""
    with vllm_serves(default_model, cluster.model, tmp_path_factory.mktemp("vllm_serve"), [(), TOOL_FLAGS]) as servers:
        yield servers


@pytest.fixture(scope="module")
def reference_server(vllm_servers: tuple[VllmServer, ...]) -> VllmServer:
    """`vllm serve` as the workers run their engines, no flags added."""
    return vllm_servers[0]


def test_router_answers_as_vllm_serve_does(
    cluster: Cluster, reference_server: VllmServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # 48 cases in flight: batching changed no greedy output on this model, and vllm serve's one
    # engine, the slower side, takes 32 % less time than at 16 (docs/parity.md, "Cost").
    cfg = ParityConfig(
        a=cluster.url, b=reference_server.url, model_a=cluster.model, model_b=reference_server.model, concurrency=48
    )
    check(cfg, tmp_path_factory.mktemp("parity"), least=120)


def check(cfg: ParityConfig, tmp: Path, least: int) -> None:
    """Run the battery; every mismatch must be a known one (the report lands in ``tmp``)."""
    report = asyncio.run(run(cfg, known_file.load(KNOWN)))
    out = tmp / "parity.json"
    out.write_text(json.dumps(report_json(report), indent=1, default=str))
    print(f"{render(report)}\nevery case and mismatch: {out}")
    assert len(report.results) >= least
    if report.triage.unknown:
        table_ = table(report.triage.unknown)
        pytest.fail(f"mismatches not in docs/parity_known.json (all in {out}):\n{table_}", pytrace=False)


@pytest.fixture(scope="module")
def tool_servers(
    cluster: Cluster,
    vllm_servers: tuple[VllmServer, ...],
    default_model: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, VllmServer]]:
    """A router over the session cluster's workers and a `vllm serve`, both with TOOL_FLAGS."""
    with Procs(tmp_path_factory.mktemp("tool_suite")) as procs:
        router = start_router(procs, default_model, cluster.prefill_addrs, [cluster.decode_addr], TOOL_FLAGS)
        yield router.address, vllm_servers[1]


def test_router_parses_tools_and_reasoning_as_vllm_serve_does(
    cluster: Cluster, tool_servers: tuple[str, VllmServer], tmp_path_factory: pytest.TempPathFactory
) -> None:
    router, server = tool_servers
    cfg = ParityConfig(
        a=router, b=server.url, model_a=cluster.model, model_b=server.model, concurrency=8, suite="tools"
    )
    check(cfg, tmp_path_factory.mktemp("parity_tools"), least=20)
