"""Config pieces shared by every service: server flags, model resolution, logging."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

DEFAULT_SERVED_NAME = "smollm2-135m-instruct"


def add_server_flags(parser: argparse.ArgumentParser, default_port: int, default_metrics_port: int) -> None:
    g = parser.add_argument_group("server")
    g.add_argument(
        "--host", default=os.environ.get("PDSERVE_HOST", "127.0.0.1"), help="address to listen on [PDSERVE_HOST]"
    )
    g.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("PDSERVE_PORT", str(default_port))),
        help="port to listen on; 0 picks a free one [PDSERVE_PORT]",
    )
    g.add_argument(
        "--metrics-port",
        type=int,
        default=int(os.environ.get("PDSERVE_METRICS_PORT", str(default_metrics_port))),
        help="Prometheus /metrics port; 0 disables [PDSERVE_METRICS_PORT]",
    )
    g.add_argument(
        "--token-file",
        default=os.environ.get("PDSERVE_WORKER_TOKEN_FILE", ""),
        help="refuse RPCs without one of the tokens in this file (one per line; also the comma-separated "
        "PDSERVE_WORKER_TOKEN); health checks stay open [PDSERVE_WORKER_TOKEN_FILE]",
    )
    for name, what in (("cert", "certificate"), ("key", "private key"), ("ca", "CA: require client certificates")):
        g.add_argument(
            f"--tls-{name}",
            default=os.environ.get(f"PDSERVE_TLS_{name.upper()}", ""),
            help=f"serve gRPC over TLS: PEM {what} [PDSERVE_TLS_{name.upper()}]",
        )
    g.add_argument(
        "--grace",
        type=float,
        default=float(os.environ.get("PDSERVE_GRACE_S", "30")),
        help="seconds to finish in-flight requests after SIGTERM [PDSERVE_GRACE_S]",
    )
    g.add_argument(
        "--startup-timeout",
        type=float,
        default=float(os.environ.get("PDSERVE_STARTUP_TIMEOUT_S", "900")),
        help="seconds the engine may take to start before the process exits [PDSERVE_STARTUP_TIMEOUT_S]",
    )
    g.add_argument(
        "--log-level", default=os.environ.get("PDSERVE_LOG_LEVEL", "INFO"), help="logging level [PDSERVE_LOG_LEVEL]"
    )


def resolve_model(model: str, served_model_name: str) -> tuple[Path, str]:
    """The model directory and the name clients use; empty → the embedded default."""
    if model:
        path = Path(model).expanduser().resolve()
        if not (path / "config.json").is_file():
            raise ValueError(f"model: {path} is not an HF model directory (no config.json)")
        return path, served_model_name or path.name
    from pdserve.tools.model import default_model_dir  # converts once, then cached

    return default_model_dir(), served_model_name or DEFAULT_SERVED_NAME


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run_async(main: Coroutine[Any, Any, int]) -> int:
    """Run a service's main coroutine on uvloop when it is installed."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # uvloop is optional (not on Windows)
        pass
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
