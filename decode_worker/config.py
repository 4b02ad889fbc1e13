"""Decode worker configuration, built once from flags (with PDSERVE_* env fallbacks)."""

from __future__ import annotations

import argparse

from pdserve.worker_config import WorkerConfig, WorkerDefaults, worker_config, worker_parser

DEFAULTS = WorkerDefaults(
    prog="pdserve decode",
    description="Run a decode worker (gRPC DecodeWorker).",
    service_name="pdserve.v1.DecodeWorker",
    port=50052,
    kv_port=5601,
    metrics_port=9101,
    kv_events_port=5567,  # replay on 5568
)


def parser() -> argparse.ArgumentParser:
    return worker_parser(DEFAULTS)


def from_args(argv: list[str] | None = None) -> WorkerConfig:
    return worker_config(DEFAULTS, argv)
