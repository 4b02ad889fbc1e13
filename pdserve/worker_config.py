"""What both worker roles are configured with; each role supplies its defaults."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from pdserve.config import add_server_flags, resolve_model
from pdserve.engine.config import EngineConfig, add_engine_flags, engine_config_from_args
from pdserve.rpc.registration import RegistrationOptions
from pdserve.rpc.server import ServerOptions
from pdserve.security import TlsFiles, read_secrets


@dataclass(frozen=True)
class WorkerDefaults:
    """A role's CLI identity and ports (distinct per role so both fit on one host)."""

    prog: str
    description: str
    service_name: str  # gRPC service reported by the health service
    port: int
    kv_port: int
    metrics_port: int
    kv_events_port: int


@dataclass(frozen=True)
class WorkerConfig:
    engine: EngineConfig
    server: ServerOptions
    registration: RegistrationOptions
    log_level: str

    def ports(self) -> list[tuple[str, str, int]]:
        """Every ``(what, host, port)`` this worker binds, for a start-up check before the engine."""
        host, e = self.server.host, self.engine
        ports = [("gRPC", host, self.server.port), ("metrics", host, self.server.metrics_port)]
        if e.kv_connector != "none" and e.engine == "vllm":  # vLLM's NIXL listener dies on a taken port, start-up hangs
            ports.append(("NIXL side channel (--kv-port)", e.kv_host, e.kv_port))
        if e.kv_events_port:  # the publisher binds on every interface ("*"), replay on the next port
            ports += [("KV events", "", e.kv_events_port), ("KV events replay", "", e.kv_events_port + 1)]
        return ports


def worker_parser(defaults: WorkerDefaults) -> argparse.ArgumentParser:
    # No abbreviations: flags we do not know go to vLLM, and must never match a prefix of ours.
    p = argparse.ArgumentParser(prog=defaults.prog, allow_abbrev=False, description=defaults.description)
    add_server_flags(p, defaults.port, defaults.metrics_port)
    add_engine_flags(p, defaults.kv_port, defaults.kv_events_port)
    g = p.add_argument_group("registry")
    g.add_argument(
        "--state-url",
        default=os.environ.get("PDSERVE_STATE_URL", ""),
        help="register in this shared store (redis://host:port) and feed it the engine's KV events; "
        "empty: the router has a static worker list [PDSERVE_STATE_URL]",
    )
    g.add_argument(
        "--advertise",
        default=os.environ.get("PDSERVE_ADVERTISE", ""),
        help="host:port routers dial (default --host:--port; required when --host is 0.0.0.0) [PDSERVE_ADVERTISE]",
    )
    g.add_argument(
        "--heartbeat-ttl",
        type=float,
        default=float(os.environ.get("PDSERVE_HEARTBEAT_TTL_S", "10")),
        help="seconds a registration lives without a heartbeat [PDSERVE_HEARTBEAT_TTL_S]",
    )
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
            tokens=read_secrets(args.token_file, "PDSERVE_WORKER_TOKEN"),
            tls=TlsFiles(args.tls_cert, args.tls_key, args.tls_ca),
        ),
        registration=_registration(args),
        log_level=args.log_level,
    )


def _registration(args: argparse.Namespace) -> RegistrationOptions:
    if args.state_url and not args.advertise and args.host in ("0.0.0.0", "::", ""):
        raise ValueError("advertise: set --advertise host:port when listening on all interfaces")
    return RegistrationOptions(state_url=args.state_url, advertise=args.advertise, ttl_s=args.heartbeat_ttl)
