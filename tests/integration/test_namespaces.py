"""Two clusters on one Redis database, told apart by --state-namespace: each router sees
its own workers only, and places requests only on them (sim workers, real processes)."""

from __future__ import annotations

from pathlib import Path

import httpx

from pdserve.tools.fleet import start_router
from pdserve.tools.procs import Procs
from tests.factories import metric_samples
from tests.helpers.net import free_port
from tests.helpers.simfleet import ZERO, start_sim
from tests.redis_server import RedisServer


def test_two_namespaces_on_one_redis_are_disjoint_fleets(tmp_path: Path, default_model: Path) -> None:
    server = RedisServer(free_port(), tmp_path / "redis").start()
    try:
        with Procs(tmp_path) as procs:
            own: dict[str, set[str]] = {}
            routers: dict[str, str] = {}
            for ns in ("blue", "green"):
                shared = ("--state-url", server.url, "--state-namespace", ns)
                own[ns] = {start_sim(procs, r, f"{r}-{ns}", ZERO, shared)[0] for r in ("prefill", "decode")}
            for ns in ("blue", "green"):
                args = ["--state-url", server.url, "--state-namespace", ns, "--log-level", "WARNING"]
                routers[ns] = start_router(procs, default_model, args=args).address
            for ns, url in routers.items():
                model = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
                for i in range(6):
                    body = {"model": model, "prompt": list(range(300, 300 + 140 + i)), "max_tokens": 2}
                    assert httpx.post(f"{url}/v1/completions", json=body, timeout=30).status_code == 200
                samples = metric_samples(httpx.get(f"{url}/metrics").text)
                placed = {
                    dict(labels)["worker"]
                    for (name, labels), v in samples.items()
                    if name == "pdserve_router_placement_decisions_total" and v > 0
                }
                sizes = {dict(lb)["role"]: v for (n, lb), v in samples.items() if n == "pdserve_router_workers"}
                assert sizes == {"prefill": 1, "decode": 1}, (ns, sizes)
                assert placed and placed <= own[ns], (ns, placed, own)
    finally:
        server.stop()
