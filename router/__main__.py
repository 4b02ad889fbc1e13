"""``python -m router`` / ``pdserve router``: one router process, or ``--workers`` of them."""
# ruff: noqa: E402 - torch is blocked before the imports (below)

from __future__ import annotations

import sys

# The router needs no torch (the router image has none), but where torch is installed, as in
# the all-in-one venv, transformers' AutoTokenizer imports it through its config machinery:
# seconds of start-up CPU and hundreds of MB in every router process. None in sys.modules
# makes importlib report torch absent and `import torch` fail, as in that image. Before any
# import that reaches transformers (--workers children run this module first as well).
sys.modules.setdefault("torch", None)  # type: ignore[arg-type]

import logging

from pdserve.config import setup_logging
from pdserve.lifetime import PortInUseError, check_ports_free, die_with_parent
from router import config, processes
from router.server import Server, make_app, uvicorn_config

log = logging.getLogger("router")
STARTUP_FAILURE = 3  # uvicorn.run's exit code when the app never started (its lifespan failed)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        cfg = config.from_args(argv)
    except ValueError as exc:
        config.parser().error(str(exc))  # "pdserve router: error: field (--flag): why", exit code 2
    setup_logging(cfg.log_level)
    die_with_parent()
    try:
        check_ports_free([("HTTP", cfg.host, cfg.port)])
    except PortInUseError as exc:
        log.error("cannot start: %s", exc)
        return 2
    if cfg.workers > 1:
        return processes.serve(cfg, argv)
    server = Server(uvicorn_config(make_app(cfg), cfg))
    server.run()
    return 0 if server.started else STARTUP_FAILURE


if __name__ == "__main__":
    sys.exit(main())
