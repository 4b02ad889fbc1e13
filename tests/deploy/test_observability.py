"""The Grafana dashboard and its provisioning: every query parses and names only metrics the
code exports (tests/deploy/metrics.py), and the code exports every one of them."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from tests.deploy.artifacts import DEPLOY, load_compose
from tests.deploy.metrics import CONTRACT, ROUTER, SERIES, WORKER, series_names

DASHBOARD = DEPLOY / "grafana" / "dashboards" / "pdserve.json"
# What the dashboard must show, by the metric that shows it.
REQUIRED = {
    "TTFT": "pdserve_router_time_to_first_token_seconds_bucket",
    "ITL": "pdserve_router_inter_token_latency_seconds_bucket",
    "throughput": "pdserve_router_generation_tokens_total",
    "queue depth per role": "vllm:num_requests_waiting",
    "KV usage per role": "vllm:kv_cache_usage_perc",
    "prefix-hit ratio (cached)": "pdserve_router_cached_tokens_total",
    "prefix-hit ratio (prompt)": "pdserve_router_prompt_tokens_total",
    "disaggregation decisions": "pdserve_router_disagg_decisions_total",
    "retries": "pdserve_router_retries_total",
    "migrations": "pdserve_router_migrations_total",
    "Redis availability": "pdserve_router_state_store_up",
}


def panels() -> list[dict[str, Any]]:
    return [p for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] != "row"]


def test_every_query_names_only_exported_metrics() -> None:
    used: set[str] = set()
    for panel in panels():
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = series_names(target["expr"])
            assert names, target["expr"]
            assert names <= SERIES, f"{panel['title']}: {sorted(names - SERIES)}"
            used |= names
    missing = {what for what, metric in REQUIRED.items() if metric not in used}
    assert not missing


def test_panels_use_the_datasource_variable_and_do_not_overlap() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource"]
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        g = panel["gridPos"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, panel["title"]
        assert g["x"] + g["w"] <= 24
        cells |= mine


def test_grafana_provisioning_matches_compose() -> None:
    grafana = load_compose()["services"]["grafana"]
    mounts = {target: source for source, target, *_ in (v.split(":") for v in grafana["volumes"])}
    (provider,) = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/pdserve.yaml").read_text())["providers"]
    assert mounts[provider["options"]["path"]] == "../grafana/dashboards"
    assert mounts["/etc/grafana/provisioning"] == "../grafana/provisioning"
    (source,) = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yaml").read_text())["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"


def exported(registry: Any) -> set[str]:
    return {f.name + "_total" if f.type == "counter" else f.name for f in registry.collect()}


@pytest.mark.parametrize("side", ["router", "worker"])
def test_the_code_exports_the_contract(side: str) -> None:
    if side == "router":
        from router.metrics import RouterMetrics

        names, contract = exported(RouterMetrics("least-loaded").registry), ROUTER
    else:
        from pdserve.worker.metrics import WorkerMetrics

        names, contract = exported(WorkerMetrics("decode", "m").registry), WORKER
    ours = {n for n in names if n.startswith(("pdserve_", "vllm:"))}
    assert sorted(contract - ours) == [], "in the contract, not exported"
    assert sorted(ours - CONTRACT) == [], "exported, not in the contract (add it to tests/deploy/metrics.py)"
