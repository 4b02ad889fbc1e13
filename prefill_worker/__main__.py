"""``python -m prefill_worker`` / ``pdserve prefill``."""

from __future__ import annotations

import logging
import sys

from pdserve.config import run_async, setup_logging
from pdserve.engine import make_prefill_engine
from pdserve.rpc.metrics import WorkerMetrics
from pdserve.rpc.server import Admission, run_worker
from pdserve.worker_config import WorkerConfig
from prefill_worker import config
from prefill_worker.servicer import PrefillServicer, register

log = logging.getLogger("prefill_worker")


async def serve(cfg: WorkerConfig) -> int:
    engine = make_prefill_engine(cfg.engine)
    admission = Admission()
    metrics = WorkerMetrics("prefill", cfg.engine.served_model_name)
    servicer = PrefillServicer(engine, admission, metrics.error)
    return await run_worker(engine, admission, register(servicer), cfg.server, metrics, cfg.registration)


def main(argv: list[str] | None = None) -> int:
    cfg = config.from_args(argv)
    setup_logging(cfg.log_level)
    try:
        return run_async(serve(cfg))
    except ValueError as exc:  # bad configuration found at start-up
        log.error("cannot start: %s", exc)
        return 2


if __name__ == "__main__":  # vLLM's engine core uses multiprocessing: the guard is required
    sys.exit(main())
