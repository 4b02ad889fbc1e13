"""``python -m prefill_worker`` / ``pdserve prefill``."""

from __future__ import annotations

import sys

from pdserve.engine import make_prefill_engine
from pdserve.worker.main import worker_main
from prefill_worker.config import ROLE
from prefill_worker.servicer import PrefillServicer, register


def main(argv: list[str] | None = None) -> int:
    return worker_main(
        ROLE, make_prefill_engine, lambda e, gate, on_error: register(PrefillServicer(e, gate, on_error)), argv
    )


if __name__ == "__main__":  # vLLM's engine core uses multiprocessing: the guard is required
    sys.exit(main())
