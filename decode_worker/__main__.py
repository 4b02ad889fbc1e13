"""``python -m decode_worker`` / ``pdserve decode``."""

from __future__ import annotations

import sys

from decode_worker import config
from decode_worker.servicer import DecodeServicer, register
from pdserve.engine import make_decode_engine
from pdserve.rpc.metrics import WorkerMetrics
from pdserve.rpc.server import Admission, run_worker
from pdserve.rpc.worker_main import worker_main
from pdserve.worker_config import WorkerConfig


async def serve(cfg: WorkerConfig) -> int:
    engine = make_decode_engine(cfg.engine)
    admission = Admission()
    metrics = WorkerMetrics("decode", cfg.engine.served_model_name)
    servicer = DecodeServicer(engine, admission, metrics.error)
    return await run_worker(engine, admission, register(servicer), cfg.server, metrics, cfg.registration)


def main(argv: list[str] | None = None) -> int:
    return worker_main(config.from_args(argv), serve)


if __name__ == "__main__":  # vLLM's engine core uses multiprocessing: the guard is required
    sys.exit(main())
