"""What both worker roles are configured with: one dataclass tree that is also the flag set.

A role supplies only its ``WorkerRole`` (name, health service, default ports); the
flags, their env fallbacks and their defaults are the fields of ``ServerOptions``,
``EngineConfig`` and ``RegistrationOptions`` (``pdserve.flags``).
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any

from pdserve.engine.config import EngineConfig, with_passthrough
from pdserve.flags import add_flags, build, group
from pdserve.worker.registration import RegistrationOptions
from pdserve.worker.server import ServerOptions


@dataclass(frozen=True)
class WorkerRole:
    """A role's CLI identity and default ports (distinct per role so both fit on one host)."""

    name: str  # "prefill" | "decode": the CLI subcommand and the metrics' role label
    description: str
    service_name: str  # gRPC service reported by the health service
    port: int
    kv_port: int
    metrics_port: int
    kv_events_port: int

    @property
    def prog(self) -> str:
        return f"pdserve {self.name}"

    def defaults(self) -> dict[str, Any]:
        """Flag defaults this role overrides, by field path."""
        return {
            "server.port": self.port,
            "server.metrics_port": self.metrics_port,
            "engine.kv_port": self.kv_port,
            "engine.kv_events_port": self.kv_events_port,
        }


@dataclass(frozen=True)
class WorkerConfig:
    server: ServerOptions = group("server")
    engine: EngineConfig = group("engine")
    registration: RegistrationOptions = group("registry")

    def __post_init__(self) -> None:
        r, host = self.registration, self.server.host
        if r.state_url and not r.advertise and host in ("0.0.0.0", "::", ""):
            raise ValueError("advertise: set --advertise host:port when listening on all interfaces")

    @property
    def log_level(self) -> str:
        return self.server.log_level

    def ports(self) -> list[tuple[str, str, int]]:
        """Every ``(what, host, port)`` this worker binds, for a start-up check before the engine."""
        host, e = self.server.host, self.engine
        ports = [("gRPC", host, self.server.port), ("metrics", host, self.server.metrics_port)]
        if e.kv_connector != "none" and e.engine == "vllm":  # vLLM's NIXL listener dies on a taken port, start-up hangs
            ports.append(("NIXL side channel (--kv-port)", e.kv_host, e.kv_port))
        if e.kv_events_port:  # the publisher binds on every interface ("*"), replay on the next port
            ports += [("KV events", "", e.kv_events_port), ("KV events replay", "", e.kv_events_port + 1)]
        return ports


def worker_parser(role: WorkerRole) -> argparse.ArgumentParser:
    # No abbreviations: flags we do not know go to vLLM, and must never match a prefix of ours.
    p = argparse.ArgumentParser(prog=role.prog, allow_abbrev=False, description=role.description)
    add_flags(p, WorkerConfig, role.defaults())
    return p


def worker_config(role: WorkerRole, argv: list[str] | None = None) -> WorkerConfig:
    """The config from flags and env; ``ValueError`` naming the field when a value is bad."""
    args, rest = worker_parser(role).parse_known_args(argv)  # the rest are vLLM engine flags
    cfg = build(WorkerConfig, args, role.defaults())
    return dataclasses.replace(
        cfg,
        server=dataclasses.replace(cfg.server.with_secrets(), service_name=role.service_name),
        registration=cfg.registration.with_secrets(),
        engine=with_passthrough(cfg.engine, rest),
    )
