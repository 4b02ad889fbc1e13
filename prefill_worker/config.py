"""The prefill role's defaults; the flags themselves are ``pdserve.worker.config``'s."""

from __future__ import annotations

import argparse

from pdserve.worker.config import WorkerConfig, WorkerRole, worker_config, worker_parser

ROLE = WorkerRole(
    name="prefill",
    description="Run a prefill worker (gRPC PrefillWorker).",
    service_name="pdserve.v1.PrefillWorker",
    port=50051,
    kv_port=5600,
    metrics_port=9100,
    kv_events_port=5557,  # vLLM's default; replay on 5558
)


def parser() -> argparse.ArgumentParser:
    return worker_parser(ROLE)


def from_args(argv: list[str] | None = None) -> WorkerConfig:
    return worker_config(ROLE, argv)
