"""Router configuration: typed, frozen, built once from flags with PDSERVE_* env fallbacks."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field

from pdserve.config import resolve_model
from router.orchestrator import Timeouts
from router.placement import POLICIES


@dataclass(frozen=True)
class RouterConfig:
    host: str
    port: int
    prefill: tuple[str, ...]
    decode: tuple[str, ...]
    model_dir: str  # for the tokenizer and chat template; must be the workers' model
    policy: str = "least-loaded"
    startup_timeout_s: float = 300.0
    timeouts: Timeouts = field(default_factory=Timeouts)
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        if not self.decode:
            raise ValueError("decode: at least one decode worker address is required")
        if self.policy not in POLICIES:
            raise ValueError(f"policy: unknown {self.policy!r}; choose one of {sorted(POLICIES)}")
        for addr in (*self.prefill, *self.decode):
            host, sep, port = addr.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"worker address {addr!r} is not host:port")


def _addresses(values: list[str]) -> tuple[str, ...]:
    return tuple(a.strip() for v in values for a in v.split(",") if a.strip())


def _env_list(name: str) -> list[str]:
    return [os.environ[name]] if os.environ.get(name) else []


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pdserve router", description="Run the OpenAI-compatible router.")
    env = os.environ.get
    p.add_argument("--host", default=env("PDSERVE_ROUTER_HOST", "127.0.0.1"), help="[PDSERVE_ROUTER_HOST]")
    p.add_argument("--port", type=int, default=int(env("PDSERVE_ROUTER_PORT", "8000")), help="[PDSERVE_ROUTER_PORT]")
    p.add_argument(
        "--prefill",
        action="append",
        default=None,
        metavar="HOST:PORT",
        help="prefill worker address(es), comma-separated or repeated [PDSERVE_PREFILL]",
    )
    p.add_argument(
        "--decode",
        action="append",
        default=None,
        metavar="HOST:PORT",
        help="decode worker address(es), comma-separated or repeated [PDSERVE_DECODE]",
    )
    p.add_argument(
        "--model",
        default=env("PDSERVE_MODEL", ""),
        help="HF model directory for the tokenizer (default: the embedded model) [PDSERVE_MODEL]",
    )
    p.add_argument(
        "--policy",
        default=env("PDSERVE_POLICY", "least-loaded"),
        choices=sorted(POLICIES),
        help="placement policy [PDSERVE_POLICY]",
    )
    p.add_argument(
        "--startup-timeout",
        type=float,
        default=float(env("PDSERVE_STARTUP_TIMEOUT_S", "300")),
        help="seconds to wait for workers at start-up [PDSERVE_STARTUP_TIMEOUT_S]",
    )
    p.add_argument(
        "--request-timeout",
        type=float,
        default=float(env("PDSERVE_REQUEST_TIMEOUT_S", "600")),
        help="deadline of one request, seconds [PDSERVE_REQUEST_TIMEOUT_S]",
    )
    p.add_argument("--log-level", default=env("PDSERVE_LOG_LEVEL", "INFO"), help="[PDSERVE_LOG_LEVEL]")
    return p


def from_args(argv: list[str] | None = None) -> RouterConfig:
    args = parser().parse_args(argv)
    model_dir, _ = resolve_model(args.model, "")
    return RouterConfig(
        host=args.host,
        port=args.port,
        prefill=_addresses(args.prefill if args.prefill is not None else _env_list("PDSERVE_PREFILL")),
        decode=_addresses(args.decode if args.decode is not None else _env_list("PDSERVE_DECODE")),
        model_dir=str(model_dir),
        policy=args.policy,
        startup_timeout_s=args.startup_timeout,
        timeouts=Timeouts(prefill_s=min(300.0, args.request_timeout), request_s=args.request_timeout),
        log_level=args.log_level,
    )
