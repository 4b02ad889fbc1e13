"""SIGTERM on the router: streams in flight finish, new connections are refused, it exits.
Sim workers (real processes, real gRPC), so a stream lasts long enough to be caught."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import httpx
import pytest

from pdserve.bench.procs import Procs
from tests.conftest import free_port


def sim(procs: Procs, role: str) -> str:
    port = free_port()
    module = "prefill_worker" if role == "prefill" else "decode_worker"
    argv = [sys.executable, "-m", module, "--engine", "sim", "--engine-arg", "profile=llama-3.1-8b-h200"]
    argv += ["--port", str(port), "--metrics-port", "0", "--kv-events-port", str(free_port()), "--log-level", "WARNING"]
    procs.start(role, argv)
    return f"127.0.0.1:{port}"


def test_sigterm_lets_streams_in_flight_finish_then_exits(tmp_path: Path, default_model: Path) -> None:
    with Procs(tmp_path) as procs:
        prefill, decode = sim(procs, "prefill"), sim(procs, "decode")
        port = free_port()
        argv = [sys.executable, "-m", "router", "--port", str(port), "--model", str(default_model)]
        router = procs.start("router", [*argv, "--prefill", prefill, "--decode", decode])
        url = f"http://127.0.0.1:{port}"
        procs.wait_http(f"{url}/v1/models", timeout_s=300, ready=lambda r: bool(r.json()["data"]))
        model = httpx.get(f"{url}/v1/models", timeout=10).json()["data"][0]["id"]
        # ~8 ms a token in the llama-3.1-8b-h200 profile: 400 tokens stream for ~3 s
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
