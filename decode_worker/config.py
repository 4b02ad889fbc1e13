"""The decode role's defaults; the flags themselves are ``pdserve.worker.config``'s."""

from __future__ import annotations

import argparse

from pdserve.worker.config import WorkerConfig, WorkerRole, worker_config, worker_parser

ROLE = WorkerRole(
    name="decode",
    description="Run a decode worker (gRPC DecodeWorker).",
    service_name="pdserve.v1.DecodeWorker",
    port=50052,
    kv_port=5601,
    metrics_port=9101,
    kv_events_port=5567,  # replay on 5568
)


def parser() -> argparse.ArgumentParser:
    return worker_parser(ROLE)


def from_args(argv: list[str] | None = None) -> WorkerConfig:
    return worker_config(ROLE, argv)
