"""``python -m decode_worker`` / ``pdserve decode``."""

from __future__ import annotations

import sys

from decode_worker.config import ROLE
from decode_worker.servicer import DecodeServicer, register
from pdserve.engine import make_decode_engine
from pdserve.worker.main import worker_main


def main(argv: list[str] | None = None) -> int:
    return worker_main(
        ROLE, make_decode_engine, lambda e, gate, on_error: register(DecodeServicer(e, gate, on_error)), argv
    )


if __name__ == "__main__":  # vLLM's engine core uses multiprocessing: the guard is required
    sys.exit(main())
