"""The start-up heap, out of the cyclic garbage collector's way.

After start-up a router holds ~390,000 long-lived objects (its frameworks, then each model's
tokenizer and tables), a worker many more (vLLM, torch). CPython's full collection walks
every one: in a router serving 100 req/s on this project's 2-core VM one took 0.2-0.7 s, about
every 17 s, and every stream on the event loop waited it out (docs/BENCHMARKS.md §10f). ``freeze``
does what vLLM's own server does once it has started (``vllm.utils.gc_utils.freeze_gc_heap``):
collect, then move every tracked object into the permanent generation, which no later
collection walks. Frozen objects are still freed when their last reference goes; only a
reference cycle among them is never collected.
"""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger(__name__)


def freeze(what: str, collect: bool = True) -> None:
    """Freeze every object the collector tracks now (``what``: after what, for the log).
    ``collect`` first (start-up: a pause nobody waits on); without it (serving: a tokenizer
    just loaded) freezing is O(1), and what garbage the young generations hold is frozen
    with the rest."""
    start = time.perf_counter()
    if collect:
        gc.collect()
    gc.freeze()
    took_ms = (time.perf_counter() - start) * 1000
    log.info(
        "heap frozen after %s: %d objects out of the collector's walks (%.0f ms)", what, gc.get_freeze_count(), took_ms
    )
