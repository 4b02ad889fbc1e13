"""What one full garbage collection costs a router process, with and without the start-up heap
frozen (pdserve/heap.py; docs/BENCHMARKS.md §10f).

    PYTHONPATH=. ~/.cache/pdserve/venv/bin/python docs/results/heap/gc_pause.py [MODEL_DIR]

Imports what a router imports and loads the model's tokenizer (the embedded default unless
MODEL_DIR), then times ``gc.collect()`` (a full collection, as CPython runs one when enough
long-lived objects have piled up) 5 times, freezes the heap as the router does after start-up,
and times it 5 times again. Prints one JSON line: tracked objects and the median pause before
and after."""

from __future__ import annotations

import gc
import json
import statistics
import sys
import time

import router.server  # noqa: F401 - the router's whole import graph
from pdserve import heap
from pdserve.tools.model import default_model_dir
from router.tokenizer import load_tokenizer


def pauses(n: int = 5) -> float:
    took = []
    for _ in range(n):
        start = time.perf_counter()
        gc.collect()
        took.append((time.perf_counter() - start) * 1000)
    return statistics.median(took)


def main() -> None:
    tok = load_tokenizer(sys.argv[1] if len(sys.argv) > 1 else default_model_dir())
    tok.encode("warm the tokenizer up")
    before_objects, before_ms = len(gc.get_objects()), pauses()
    heap.freeze("start-up")
    after_objects, after_ms = len(gc.get_objects()), pauses()
    print(
        json.dumps(
            {
                "python": sys.version.split()[0],
                "tracked_objects": before_objects,
                "full_collection_ms": round(before_ms, 2),
                "tracked_after_freeze": after_objects,
                "frozen": gc.get_freeze_count(),
                "full_collection_after_freeze_ms": round(after_ms, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
