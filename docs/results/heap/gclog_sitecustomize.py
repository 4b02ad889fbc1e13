"""Logs every garbage collection of a router process (docs/BENCHMARKS.md §10f): put this
directory's copy, named ``sitecustomize.py``, on ``PYTHONPATH`` and set ``PDSERVE_GCLOG=PREFIX``;
each ``python -m router`` process appends ``<unix time> <generation> <ms>`` lines to
``PREFIX.<pid>``."""

import gc
import os
import time

_path = os.environ.get("PDSERVE_GCLOG")
if _path:
    _argv = open("/proc/self/cmdline").read().split("\0")
    if "-m" in _argv and _argv[_argv.index("-m") + 1] == "router":
        _log = open(f"{_path}.{os.getpid()}", "w", buffering=1)
        _started: dict[str, float] = {}

        def _logged(phase: str, info: dict) -> None:
            if phase == "start":
                _started["at"] = time.perf_counter()
            else:
                took_ms = (time.perf_counter() - _started["at"]) * 1000
                _log.write(f"{time.time():.3f} {info['generation']} {took_ms:.3f}\n")

        gc.callbacks.append(_logged)
