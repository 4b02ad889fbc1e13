"""Prefill worker configuration, built once from flags (with PDSERVE_* env fallbacks)."""

from __future__ import annotations

import argparse

from pdserve.worker_config import WorkerConfig, WorkerDefaults, worker_config, worker_parser

DEFAULTS = WorkerDefaults(
    prog="pdserve prefill",
    description="Run a prefill worker (gRPC PrefillWorker).",
    service_name="pdserve.v1.PrefillWorker",
    port=50051,
    kv_port=5600,
    metrics_port=9100,
    kv_events_port=5557,  # vLLM's default; replay on 5558
)


def parser() -> argparse.ArgumentParser:
    return worker_parser(DEFAULTS)


def from_args(argv: list[str] | None = None) -> WorkerConfig:
    return worker_config(DEFAULTS, argv)
