"""The router and the workers freeze their start-up heap, as vLLM's server does
(pdserve/heap.py): full collections, which walked ~0.5 M start-up objects in 0.2-0.7 s every
15-30 s of a loaded router (docs/BENCHMARKS.md §10f), then skip it. Each process says so in its
log: the router after start-up and after loading a model's tokenizer, a worker after its
engine starts."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from pdserve.tools import fleet
from pdserve.tools.procs import Procs
from tests.helpers.simfleet import ZERO, start_sim


def test_the_router_and_a_worker_freeze_their_start_up_heap(tmp_path: Path, default_model: Path) -> None:
    with Procs(tmp_path) as procs:
        worker, _ = start_sim(procs, "decode", "decode", ZERO, ["--log-level", "INFO"])
        router = fleet.start_router(procs, default_model, [], [worker])
        resp = httpx.post(f"{router.address}/v1/completions", json={"prompt": "hi", "max_tokens": 2}, timeout=30)
        assert resp.status_code == 200, resp.text
    router_log, worker_log = ((tmp_path / f"{name}.log").read_text() for name in ("router", "decode"))
    frozen = r"heap frozen after {}: (\d+) objects"
    start_up = re.search(frozen.format("start-up"), router_log)
    tokenizer = re.search(frozen.format(r"loading the tokenizer of \S+"), router_log)
    engine = re.search(frozen.format("the engine's start"), worker_log)
    assert start_up and tokenizer and engine, (router_log[-2000:], worker_log[-2000:])
    # each count is everything frozen so far (a static worker's tokenizer may load first)
    assert min(int(m.group(1)) for m in (start_up, tokenizer, engine)) > 10_000
