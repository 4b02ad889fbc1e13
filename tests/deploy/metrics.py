"""The metric names the code exports: the contract the dashboard, monitors and HPAs rely on.

Router (HTTP port, /metrics) and each worker (--metrics-port, /metrics). Keep in step with
router/metrics.py and pdserve/worker/metrics.py; test_observability checks both directions.
"""

from __future__ import annotations

import re

import promql_parser

ROUTER_HISTOGRAMS = frozenset(
    {
        "pdserve_router_time_to_first_token_seconds",
        "pdserve_router_inter_token_latency_seconds",
        "pdserve_router_e2e_request_latency_seconds",
        "pdserve_router_queue_time_seconds",
        "pdserve_router_kv_handover_seconds",
        "pdserve_router_state_store_seconds",
        "pdserve_router_kv_handover_worker_seconds",
    }
)
ROUTER = ROUTER_HISTOGRAMS | {
    "pdserve_router_requests_total",
    "pdserve_router_prompt_tokens_total",
    "pdserve_router_cached_tokens_total",
    "pdserve_router_generation_tokens_total",
    "pdserve_router_placement_decisions_total",
    "pdserve_router_disagg_decisions_total",
    "pdserve_router_inflight_requests",
    "pdserve_router_rejections_total",
    "pdserve_router_prefix_matched_tokens_total",
    "pdserve_router_placed_prompt_tokens_total",
    "pdserve_router_state_store_up",
    "pdserve_router_workers",
    "pdserve_router_retries_total",
    "pdserve_router_migrations_total",
    "pdserve_router_kv_released_total",
    "pdserve_router_queued_requests",
    "pdserve_router_asyncio_tasks",
    "pdserve_router_state_store_errors_total",
    "pdserve_router_registry_rejected_total",
    "pdserve_router_loop_restarts_total",
    "pdserve_router_ejected_workers",
}
WORKER = frozenset(
    {
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:prefix_cache_queries_total",
        "vllm:prefix_cache_hits_total",
        "pdserve_worker_kv_transfers_total",
        "pdserve_worker_kv_transfer_failures_total",
        "pdserve_worker_kv_transfer_bytes_total",
        "pdserve_worker_kv_transfer_seconds_total",
        "pdserve_worker_inflight_requests",
        "pdserve_worker_errors_total",
        "pdserve_worker_loop_restarts_total",
        "pdserve_worker_state_store_errors_total",
        "pdserve_worker_kv_transfer_bandwidth_bytes_per_second",
        "pdserve_worker_kv_transfer_duration_seconds",
        "pdserve_worker_kv_bandwidth_bytes_per_second",
        "pdserve_worker_kv_bandwidth_floor_bytes_per_second",
        "pdserve_worker_kv_path_slow",
        "pdserve_worker_kv_slow_transfers_total",
    }
)
WORKER_HISTOGRAMS = frozenset(
    {"pdserve_worker_kv_transfer_bandwidth_bytes_per_second", "pdserve_worker_kv_transfer_duration_seconds"}
)
CONTRACT = ROUTER | WORKER
# Series a query may name: every metric, and a histogram's _bucket/_sum/_count.
SERIES = CONTRACT | {f"{h}{s}" for h in ROUTER_HISTOGRAMS | WORKER_HISTOGRAMS for s in ("_bucket", "_sum", "_count")}

# Grafana's variables are not PromQL; give the parser something of the same shape.
_GRAFANA_RANGES = re.compile(r"\$__(rate_interval|interval|range)\b")
_GRAFANA_VARS = re.compile(r"\$\{?(\w+)\}?")


def series_names(expr: str) -> set[str]:
    """Every metric name a PromQL expression selects (by name or by ``__name__``)."""
    ast = promql_parser.parse(_GRAFANA_VARS.sub("grafana_var", _GRAFANA_RANGES.sub("5m", expr)))
    names: set[str] = set()

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            by_label = [m.value for m in node.matchers.matchers if m.name == "__name__"]
            names.update([node.name] if node.name else by_label)

    promql_parser.walk(ast, visit)
    return names
