"""``pdserve router --workers 2`` on real processes: both processes take requests on the one
port, sharing a real Redis; ``/metrics`` counts every process's requests whichever answers;
SIGKILLing the parent leaves no process and no listener behind; SIGTERM stops them all cleanly."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import psutil

from pdserve.tools import fleet
from pdserve.tools.fleet import start_router, wait_router_processes
from pdserve.tools.procs import Procs
from tests.factories import metric_samples
from tests.helpers.net import free_port
from tests.helpers.simfleet import ZERO, served_model, start_sim
from tests.integration.test_lifetime import held, wait_gone
from tests.redis_server import RedisServer

CLIENTS = 16  # one connection each: the kernel spreads them over both processes' sockets


def serving_children(parent: int) -> list[psutil.Process]:
    """The router processes under ``parent`` (not multiprocessing's resource tracker)."""
    kids = psutil.Process(parent).children()
    return [k for k in kids if not any("resource_tracker" in part for part in k.cmdline())]


def maps_torch(proc: psutil.Process) -> bool:
    """Whether the process has torch's library mapped (router/torchless.py keeps it out)."""
    return any("libtorch" in m.path for m in proc.memory_maps())


def connected(proc: psutil.Process, port: int) -> int:
    return sum(1 for c in proc.net_connections(kind="tcp") if c.laddr.port == port and c.status == "ESTABLISHED")


def test_two_router_processes_share_the_port_and_die_with_the_parent(tmp_path: Path, default_model: Path) -> None:
    server = RedisServer(free_port(), tmp_path / "redis").start()
    try:
        with Procs(tmp_path) as procs:
            shared = ("--state-url", server.url, "--kv-connector", "none")
            start_sim(procs, "decode", "decode", ZERO, shared)
            args = ["--state-url", server.url, "--workers", "2", "--log-level", "WARNING"]
            router = start_router(procs, default_model, args=args)
            url, port = router.address, int(router.address.rsplit(":", 1)[1])
            children = serving_children(router.proc.pid)
            assert len(children) == 2, [c.cmdline() for c in children]
            assert sorted(wait_router_processes(router, 2)) == sorted(c.pid for c in children)
            # serving, so each has loaded the model's tokenizer through transformers, torch-free
            assert not any(maps_torch(p) for p in [psutil.Process(router.proc.pid), *children])

            clients = [httpx.Client(base_url=url, timeout=30) for _ in range(CLIENTS)]
            try:
                model = clients[0].get("/v1/models").json()["data"][0]["id"]
                for i, client in enumerate(clients):
                    body = {"model": model, "prompt": list(range(300, 340 + i)), "max_tokens": 3}
                    resp = client.post("/v1/completions", json=body)
                    assert resp.status_code == 200, resp.text
                    assert resp.json()["usage"]["completion_tokens"] == 3
                per_process = [connected(c, port) for c in children]  # the clients' connections, still open
                assert sum(per_process) == CLIENTS and min(per_process) > 0, per_process
            finally:
                for client in clients:
                    client.close()

            samples = metric_samples(httpx.get(f"{url}/metrics").text)
            done = samples[("pdserve_router_requests_total", (("route", "/v1/completions"), ("status", "200")))]
            assert done == CLIENTS  # summed over both processes, whichever answered the scrape
            assert samples[("pdserve_router_inflight_requests", ())] == 0

            pids = [router.proc.pid, *(c.pid for c in psutil.Process(router.proc.pid).children(recursive=True))]
            os.kill(router.proc.pid, signal.SIGKILL)
            router.proc.wait()
            assert wait_gone(pids) == []
            assert held([("HTTP", "127.0.0.1", port)]) == []
    finally:
        server.stop()


def test_sigterm_stops_every_process_and_the_parent_exits_0(tmp_path: Path, default_model: Path) -> None:
    with Procs(tmp_path) as procs:  # memory:// state: each process follows the worker itself
        decode = start_sim(procs, "decode", "decode", ZERO, ("--kv-connector", "none"))[0]
        args = ["--workers", "2", "--log-level", "WARNING"]
        router = fleet.start_router(procs, default_model, [], [decode], args)
        children = wait_router_processes(router, 2)
        body = {"model": served_model(router.address), "prompt": "hello", "max_tokens": 2}
        assert httpx.post(f"{router.address}/v1/completions", json=body, timeout=30).status_code == 200

        os.kill(router.proc.pid, signal.SIGTERM)
        assert router.proc.wait(60) == 0
        assert wait_gone(children) == []
        assert held([("HTTP", "127.0.0.1", int(router.address.rsplit(":", 1)[1]))]) == []


def test_a_process_that_dies_stops_the_others_and_the_parent_fails(tmp_path: Path, default_model: Path) -> None:
    with Procs(tmp_path) as procs:
        decode = start_sim(procs, "decode", "decode", ZERO, ("--kv-connector", "none"))[0]
        router = fleet.start_router(procs, default_model, [], [decode], ["--workers", "2", "--log-level", "WARNING"])
        children = wait_router_processes(router, 2)
        os.kill(children[0], signal.SIGKILL)
        assert router.proc.wait(60) == 1  # the pod's supervisor restarts the whole router
        assert wait_gone(children) == []
