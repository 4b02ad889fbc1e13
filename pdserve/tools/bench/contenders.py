"""The routers a comparison runs, each over a fresh simulated fleet: pdserve's router
over gRPC sim workers, the peer routers (sglang-router, vllm-router, from PyPI) over
``pdserve sim-http`` processes — the same sim engine and profile behind an OpenAI
HTTP server."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pdserve.tools.bench.peers import peer_bin
from pdserve.tools.fleet import start_router, start_sim_http, start_sim_worker
from pdserve.tools.model import model_from_env
from pdserve.tools.ports import free_ports
from pdserve.tools.procs import Procs

MODEL = "sim"
BLOCK = 128


@dataclass(frozen=True)
class SimFleetSpec:
    """The simulated workers every contender gets."""

    workers: int
    engine_args: dict[str, str]  # sim profile and overrides
    max_model_len: int = 8192
    model: str = ""  # the model directory workers load ("": $PDSERVE_MODEL or the embedded default)

    def args(self) -> list[str]:
        out = ["--served-model-name", MODEL, "--block-size", str(BLOCK), "--max-model-len", str(self.max_model_len)]
        out += ["--model", self.model] if self.model else []
        for key, value in self.engine_args.items():
            out += ["--engine-arg", f"{key}={value}"]
        return out


@dataclass(frozen=True)
class Endpoint:
    """What a contender started: the URL clients use, and the sim-http workers behind a
    peer router (pdserve's router counts its own placements; ``workers`` is then empty)."""

    url: str
    workers: tuple[str, ...] = ()


# A contender starts its router (and fleet) under ``procs``.
Contender = Callable[[Procs, SimFleetSpec], Endpoint]


def _sim_worker(procs: Procs, fleet: SimFleetSpec, role: str, name: str, colocated: bool) -> str:
    args = [*fleet.args(), *(["--kv-connector", "none"] if colocated else [])]
    return start_sim_worker(procs, role, name, args).address


def pdserve(policy: str, prefill: int = 0) -> Contender:
    """pdserve's router over gRPC sim workers: ``prefill`` P workers + the rest decode
    (0 = every worker colocated: it prefills its own prompts)."""

    def start(procs: Procs, fleet: SimFleetSpec) -> Endpoint:
        pre = [_sim_worker(procs, fleet, "prefill", f"prefill{i}", False) for i in range(prefill)]
        dec = [_sim_worker(procs, fleet, "decode", f"decode{i}", not pre) for i in range(fleet.workers - prefill)]
        args = ["--policy", policy, "--log-level", "WARNING"]
        return Endpoint(start_router(procs, model_from_env(), pre, dec, args).address)

    return start


def facades(procs: Procs, fleet: SimFleetSpec) -> list[tuple[str, int]]:
    """``fleet.workers`` sim-http servers: (URL, KV events port)."""
    out = []
    for i in range(fleet.workers):
        server, events = start_sim_http(procs, f"sim{i}", fleet.args())
        out.append((server.address, events))
    for url, _ in out:
        procs.wait_http(f"{url}/health")
    return out


def sglang(policy: str, python: str = "") -> Contender:
    """sglang-router over sim-http servers; ``python``: an interpreter that imports it
    (default: the peers' venv, installed from PyPI on first use)."""

    def start(procs: Procs, fleet: SimFleetSpec) -> Endpoint:
        urls = [u for u, _ in facades(procs, fleet)]
        port, prom = free_ports(2)
        argv = [python or str(peer_bin() / "python"), "-m", "sglang_router.launch_router", "--host", "127.0.0.1"]
        argv += ["--port", str(port), "--policy", policy, "--prometheus-port", str(prom), "--worker-urls", *urls]
        procs.start("sglang-router", argv)
        url = f"http://127.0.0.1:{port}"
        procs.wait_http(f"{url}/readiness")  # its /health is 200 before workers are registered
        return Endpoint(url, tuple(urls))

    return start


def vllm_router(policy: str, python: str = "") -> Contender:
    """vllm-router over sim-http servers; ``python`` as ``sglang``'s (its ``vllm-router``
    console script is this module's ``main``)."""

    def start(procs: Procs, fleet: SimFleetSpec) -> Endpoint:
        workers = facades(procs, fleet)
        port, prom = free_ports(2)
        argv = [python or str(peer_bin() / "python"), "-m", "vllm_router.launch_router", "--host", "127.0.0.1"]
        argv += ["--port", str(port), "--policy", policy]
        argv += ["--prometheus-port", str(prom), "--worker-startup-check-interval", "1"]
        argv += ["--worker-urls", *(u for u, _ in workers)]
        if policy == "kv_aware":  # vLLM's ZMQ KV events, one publisher per worker
            for u, events in workers:
                argv += ["--kv-event-source", f"{u}=tcp://127.0.0.1:{events}"]
            argv += ["--kv-event-block-size", str(BLOCK), "--kv-event-model", MODEL]
        procs.start("vllm-router", argv)
        url = f"http://127.0.0.1:{port}"
        procs.wait_http(f"{url}/v1/models", timeout_s=120)
        return Endpoint(url, tuple(u for u, _ in workers))

    return start


def placement_contenders(only: str = "") -> dict[str, Contender]:
    """Our three policies and the peers' prefix-aware ones; ``only``: comma-separated
    substrings of the names to keep."""
    contenders: dict[str, Contender] = {
        "pdserve round-robin": pdserve("round-robin"),
        "pdserve least-loaded": pdserve("least-loaded"),
        "pdserve prefix-aware": pdserve("prefix-aware"),
        "sglang-router cache_aware": sglang("cache_aware"),
        "vllm-router cache_aware": vllm_router("cache_aware"),
        "vllm-router kv_aware": vllm_router("kv_aware"),
    }
    return {n: c for n, c in contenders.items() if not only or any(o in n for o in only.split(","))}
