"""``python -m router`` / ``pdserve router``: one router process, or ``--workers`` of them."""

from __future__ import annotations

import logging
import sys

from pdserve.config import setup_logging
from pdserve.lifetime import PortInUseError, check_ports_free, die_with_parent
from router import config, processes
from router.torchless import keep_torch_out

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
    keep_torch_out()  # before router.server reaches transformers
    from router.server import Server, make_app, uvicorn_config

    server = Server(uvicorn_config(make_app(cfg), cfg))
    server.run()
    return 0 if server.started else STARTUP_FAILURE


if __name__ == "__main__":
    sys.exit(main())
