"""What both worker roles are configured with; each role supplies its defaults."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from pdserve.config import add_server_flags, resolve_model
from pdserve.engine.config import EngineConfig, add_engine_flags, engine_config_from_args
from pdserve.rpc.server import ServerOptions


@dataclass(frozen=True)
class WorkerDefaults:
    """A role's CLI identity and ports (distinct per role so both fit on one host)."""

    prog: str
    description: str
    service_name: str  # gRPC service reported by the health service
    port: int
    kv_port: int
    metrics_port: int


@dataclass(frozen=True)
class WorkerConfig:
    engine: EngineConfig
    server: ServerOptions
    log_level: str


def worker_parser(defaults: WorkerDefaults) -> argparse.ArgumentParser:
    # No abbreviations: flags we do not know go to vLLM, and must never match a prefix of ours.
    p = argparse.ArgumentParser(prog=defaults.prog, allow_abbrev=False, description=defaults.description)
    add_server_flags(p, defaults.port, defaults.metrics_port)
    add_engine_flags(p, defaults.kv_port)
    return p


def worker_config(defaults: WorkerDefaults, argv: list[str] | None = None) -> WorkerConfig:
    args, rest = worker_parser(defaults).parse_known_args(argv)  # the rest are vLLM engine flags
    model_dir, served = resolve_model(args.model, args.served_model_name)
    args.served_model_name = served
    return WorkerConfig(
        engine=engine_config_from_args(args, model_dir, rest),
        server=ServerOptions(
            host=args.host,
            port=args.port,
            grace_s=args.grace,
            startup_timeout_s=args.startup_timeout,
            metrics_port=args.metrics_port,
            service_name=defaults.service_name,
        ),
        log_level=args.log_level,
    )
