"""Secrets never reach a log: a router and sim workers at DEBUG, with a password-protected
Redis (in --state-url), a worker token and an API key with a cache salt, serve requests
(one with a wrong key), then lose Redis; no log line of any of them holds a secret."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx
import pytest
import redis

from pdserve.tools.fleet import start_router, start_sim_worker
from pdserve.tools.ports import free_port
from pdserve.tools.procs import Procs

PASSWORD = "redis-pw-d0n0tl0g"
TOKEN = "worker-tok-d0n0tl0g"
KEY = "sk-key-d0n0tl0g"


def test_no_log_of_router_or_workers_holds_a_password_token_or_key(tmp_path: Path, default_model: Path) -> None:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed")
    (tmp_path / "token").write_text(TOKEN + "\n")
    (tmp_path / "keys").write_text(f"{KEY} cache_salt=tenant-a\n")
    with Procs(tmp_path / "logs") as procs:
        port = free_port()
        store = procs.start("redis", [binary, "--port", str(port), "--requirepass", PASSWORD, "--save", ""])
        client = redis.Redis(port=port, password=PASSWORD, socket_timeout=2)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.1)
        url = f"redis://:{PASSWORD}@127.0.0.1:{port}/0"
        secure = ["--state-url", url, "--token-file", str(tmp_path / "token"), "--log-level", "DEBUG"]
        prefill = start_sim_worker(procs, "prefill", "prefill", secure).address
        decode = start_sim_worker(procs, "decode", "decode", secure).address
        args = ["--state-url", url, "--worker-token-file", str(tmp_path / "token")]
        args += ["--api-keys-file", str(tmp_path / "keys"), "--log-level", "DEBUG"]
        router = start_router(procs, default_model, [prefill], [decode], args, wait=False).address
        procs.wait_http(f"{router}/health", 300)
        body = {"prompt": "hello", "max_tokens": 4}  # no model: the first served
        ok = httpx.post(f"{router}/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
        assert ok.status_code == 200, ok.text
        wrong = httpx.post(f"{router}/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}x"})
        assert wrong.status_code == 401
        store.kill()  # every process now logs that Redis is unreachable, with why
        time.sleep(4)
        logs = {p.name: p.read_text(errors="replace") for p in (tmp_path / "logs").glob("*.log") if p.stem != "redis"}
    assert {"router.log", "prefill.log", "decode.log"} <= set(logs), sorted(logs)
    assert "***@127.0.0.1" in logs["router.log"]  # the state URL is logged, redacted
    assert "shared state store failing" in logs["router.log"]  # the outage is logged, with why
    for name, text in logs.items():
        for secret in (PASSWORD, TOKEN, KEY):
            assert secret not in text, f"{name} logs a secret"
