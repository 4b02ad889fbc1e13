"""The entry point both worker roles share: logging, lifetime, port check, then serve."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from pdserve.config import run_async, setup_logging
from pdserve.lifetime import check_ports_free, die_with_parent
from pdserve.worker_config import WorkerConfig

log = logging.getLogger("pdserve.worker")


def worker_main(cfg: WorkerConfig, serve: Callable[[WorkerConfig], Coroutine[Any, Any, int]]) -> int:
    """Run ``serve(cfg)``; exit code 2 for bad configuration (a taken port included) found at start-up."""
    setup_logging(cfg.log_level)
    die_with_parent()
    try:
        check_ports_free(cfg.ports())  # before the engine: a taken port fails in milliseconds, naming itself
        return run_async(serve(cfg))
    except ValueError as exc:
        log.error("cannot start: %s", exc)
        return 2
