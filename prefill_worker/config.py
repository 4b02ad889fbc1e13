"""Prefill worker configuration, built once from flags (with PDSERVE_* env fallbacks)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from pdserve.config import add_server_flags, resolve_model
from pdserve.engine.config import EngineConfig, add_engine_flags, engine_config_from_args
from pdserve.rpc.server import ServerOptions

DEFAULT_PORT = 50051
DEFAULT_KV_PORT = 5600
DEFAULT_METRICS_PORT = 9100


@dataclass(frozen=True)
class PrefillWorkerConfig:
    engine: EngineConfig
    server: ServerOptions
    log_level: str


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pdserve prefill", allow_abbrev=False, description="Run a prefill worker (gRPC PrefillWorker)."
    )
    add_server_flags(p, DEFAULT_PORT, DEFAULT_METRICS_PORT)
    add_engine_flags(p, DEFAULT_KV_PORT)
    return p


def from_args(argv: list[str] | None = None) -> PrefillWorkerConfig:
    args, rest = parser().parse_known_args(argv)  # the rest are vLLM engine flags
    model_dir, served = resolve_model(args.model, args.served_model_name)
    args.served_model_name = served
    return PrefillWorkerConfig(
        engine=engine_config_from_args(args, model_dir, rest),
        server=ServerOptions(
            host=args.host,
            port=args.port,
            grace_s=args.grace,
            startup_timeout_s=args.startup_timeout,
            metrics_port=args.metrics_port,
            service_name="pdserve.v1.PrefillWorker",
        ),
        log_level=args.log_level,
    )
