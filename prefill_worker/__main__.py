"""``python -m prefill_worker`` / ``pdserve prefill``."""

from __future__ import annotations

import sys

from pdserve.engine import make_prefill_engine
from pdserve.rpc.metrics import WorkerMetrics
from pdserve.rpc.server import Admission, run_worker
from pdserve.rpc.worker_main import worker_main
from pdserve.worker_config import WorkerConfig
from prefill_worker import config
from prefill_worker.servicer import PrefillServicer, register


async def serve(cfg: WorkerConfig) -> int:
    engine = make_prefill_engine(cfg.engine)
    admission = Admission()
    metrics = WorkerMetrics("prefill", cfg.engine.served_model_name)
    servicer = PrefillServicer(engine, admission, metrics.error)
    return await run_worker(engine, admission, register(servicer), cfg.server, metrics, cfg.registration)


def main(argv: list[str] | None = None) -> int:
    return worker_main(config.from_args(argv), serve)


if __name__ == "__main__":  # vLLM's engine core uses multiprocessing: the guard is required
    sys.exit(main())
