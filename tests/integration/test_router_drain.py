"""SIGTERM on the router: streams in flight finish, new connections are refused, it exits.
Sim workers (real processes, real gRPC), so a stream lasts long enough to be caught."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import httpx
import pytest

from pdserve.tools.procs import Procs
from tests.helpers.simfleet import served_model, sim_worker, start_router


def test_sigterm_lets_streams_in_flight_finish_then_exits(tmp_path: Path, default_model: Path) -> None:
    with Procs(tmp_path) as procs:
        router, url = start_router(procs, default_model, sim_worker(procs, "prefill"), sim_worker(procs, "decode"))
        model = served_model(url)
        body = {"model": model, "prompt": "drain me", "max_tokens": 400, "ignore_eos": True, "stream": True}
        body |= {"stream_options": {"include_usage": True}}
        events: list[dict] = []
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as resp:
            lines = resp.iter_lines()
            while len(events) < 3:
                line = next(lines)
                if line.startswith("data: {"):
                    events.append(json.loads(line[6:]))
            router.send_signal(signal.SIGTERM)
            time.sleep(0.5)  # uvicorn has closed its listening socket by now
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"{url}/health", timeout=5)
            done = False
            for line in lines:
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: {"):
                    events.append(json.loads(line[6:]))
        assert done, events[-1]
        assert all("error" not in e for e in events), [e for e in events if "error" in e]
        assert events[-2]["choices"][0]["finish_reason"] == "length"
        assert events[-1]["usage"]["completion_tokens"] == 400
        # uvicorn re-raises the signal once it has shut down cleanly: the conventional status
        assert router.wait(timeout=30) in (0, -signal.SIGTERM)
        log = (tmp_path / "router.log").read_text()
        assert "Application shutdown complete" in log and "Traceback" not in log, log[-2000:]
