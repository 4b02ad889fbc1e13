"""The request-level deadline (--request-timeout): a request that runs past it ends with a
clean 504 / in-stream error, and the engine work behind it is aborted."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pdserve.tools.procs import Procs
from tests.helpers.simfleet import decode_inflight, served_model, sim_worker, start_router


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, default_model: Path) -> Iterator[tuple[str, str]]:
    with Procs(tmp_path_factory.mktemp("deadline")) as procs:
        decode = sim_worker(procs, "decode")
        _, url = start_router(procs, default_model, sim_worker(procs, "prefill"), decode, "--request-timeout", "1.5")
        yield url, decode


def _idle_soon(decode: str) -> None:
    deadline = time.monotonic() + 5
    while asyncio.run(decode_inflight(decode)):
        assert time.monotonic() < deadline, "the decode worker still runs the timed-out request"
        time.sleep(0.1)


def test_a_request_past_its_deadline_gets_504_and_the_engine_stops(fleet: tuple[str, str]) -> None:
    url, decode = fleet
    body = {"model": served_model(url), "prompt": "slow", "max_tokens": 1000, "ignore_eos": True}  # ~8 s
    started = time.monotonic()
    resp = httpx.post(f"{url}/v1/completions", json=body, timeout=30)
    assert resp.status_code == 504, resp.text
    assert resp.json()["error"]["code"] == "request_timeout"
    assert time.monotonic() - started < 4
    _idle_soon(decode)
    short = httpx.post(f"{url}/v1/completions", json={**body, "max_tokens": 8}, timeout=30)
    assert short.status_code == 200, short.text  # the deadline is per request


def test_a_stream_past_its_deadline_ends_with_an_error_event(fleet: tuple[str, str]) -> None:
    url, decode = fleet
    body = {"model": served_model(url), "prompt": "slow", "max_tokens": 1000, "ignore_eos": True, "stream": True}
    events = []
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=30) as resp:
        assert resp.status_code == 200
        lines = [line for line in resp.iter_lines() if line.startswith("data: ")]
    events = [json.loads(line[6:]) for line in lines if line != "data: [DONE]"]
    assert lines[-1] == "data: [DONE]"
    assert "choices" in events[0]  # tokens streamed before the deadline
    assert events[-1]["error"]["code"] == "request_timeout", events[-1]
    _idle_soon(decode)
