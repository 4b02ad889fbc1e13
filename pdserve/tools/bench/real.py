"""``pdserve bench compare real``: pdserve versus vllm-router, both P/D on real vLLM CPU engines.

1. ``pdserve up`` (router + 1 prefill + 1 decode worker, NixlConnector) on the
   embedded model;
2. vllm-router ``--vllm-pd-disaggregation --kv-connector nixl`` in front of two
   ``vllm serve`` processes of the same vLLM build and model (kv_producer /
   kv_consumer), started with the same engine settings pdserve uses.

The same prompts go to each, one at a time, greedy with ``ignore_eos``; the run
reports whether the texts are identical and TTFT / e2e / tok/s side by side.
One pair of engines at a time: four vLLM CPU engines do not fit 2 cores.

NIXL pins a CPU engine's main thread to the last core (DESIGN §2); pdserve's
workers undo that, ``vllm serve`` does not, which would put both of its engines
on one core. The run undoes it for the ``vllm serve`` processes too (every
thread's affinity back to all cores), so the comparison is of the routers and
the P/D path, not of that pinning.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from pdserve.tools.bench import workloads
from pdserve.tools.bench.client import Timing
from pdserve.tools.bench.peers import peer_bin
from pdserve.tools.bench.report import Slo, summarize
from pdserve.tools.bench.results import finish, output_and_slo
from pdserve.tools.bench.run import drive, int_range
from pdserve.tools.model import model_from_env
from pdserve.tools.ports import UpPorts, free_ports
from pdserve.tools.procs import Procs, python
from pdserve.tools.up import READY_LINE, child_env

NAME = "smollm2-135m-instruct"
# What `pdserve up` gives its engines on a CPU host; vllm serve gets the same.
ENGINE = {"dtype": "float32", "block-size": "128", "max-model-len": "2048"}


def _pdserve(procs: Procs, model: Path) -> str:
    ports = UpPorts.free()
    argv = python("pdserve", "up", "--model", str(model), "--served-model-name", NAME, *ports.up_args())
    procs.start("pdserve-up", argv)
    procs.wait_http(f"{ports.url}/v1/models", timeout_s=900, ready=lambda r: bool(r.json()["data"]))
    _wait_line(procs.log_dir / "pdserve-up.log", READY_LINE, 300)
    return ports.url


def _wait_line(log: Path, line: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while line not in log.read_text(errors="replace"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{line!r} not in {log} within {timeout_s:.0f}s")
        time.sleep(1)


def _vllm_serve(procs: Procs, model: Path, role: str, side_port: int) -> tuple[str, int]:
    port = free_ports(1)[0]
    config = json.dumps({"kv_connector": "NixlConnector", "kv_role": role})
    argv = python("vllm.entrypoints.openai.api_server", "--model", str(model), "--served-model-name", NAME)
    argv += ["--host", "127.0.0.1", "--port", str(port), "--enforce-eager", "--kv-transfer-config", config]
    for key, value in ENGINE.items():
        argv += [f"--{key}", value]
    env = {"VLLM_NIXL_SIDE_CHANNEL_PORT": str(side_port), "VLLM_CPU_KVCACHE_SPACE": "1"}
    proc = procs.start(f"vllm-{role}", argv, env=env)
    return f"http://127.0.0.1:{port}", proc.pid


def unpin(pid: int) -> int:
    """Every thread of ``pid`` and its descendants back on all cores; returns threads changed."""
    cores = set(range(os.cpu_count() or 1))
    changed = 0
    root = psutil.Process(pid)
    for proc in [root, *root.children(recursive=True)]:
        for thread in proc.threads():
            try:
                if os.sched_getaffinity(thread.id) != cores:
                    os.sched_setaffinity(thread.id, cores)
                    changed += 1
            except OSError:  # the thread ended meanwhile
                pass
    return changed


def _vllm_router(procs: Procs, model: Path, peer_bin: Path) -> str:
    prefill_side, decode_side = free_ports(2)
    servers = [
        _vllm_serve(procs, model, "kv_producer", prefill_side),
        _vllm_serve(procs, model, "kv_consumer", decode_side),
    ]
    for url, _ in servers:
        procs.wait_http(f"{url}/health", timeout_s=900)
    unpinned = sum(unpin(pid) for _, pid in servers)
    print(f"vllm serve: {unpinned} thread(s) taken off NIXL's single-core pinning", file=sys.stderr)
    port = free_ports(1)[0]
    argv = [str(peer_bin / "vllm-router"), "--host", "127.0.0.1", "--port", str(port), "--vllm-pd-disaggregation"]
    argv += ["--prefill", servers[0][0], "--decode", servers[1][0], "--kv-connector", "nixl"]
    argv += ["--policy", "round_robin", "--worker-startup-check-interval", "1"]
    procs.start("vllm-router", argv)
    url = f"http://127.0.0.1:{port}"
    procs.wait_http(f"{url}/v1/models", timeout_s=120)
    return url


def real(args: argparse.Namespace) -> int:
    model = model_from_env()
    rng = random.Random(args.seed)
    items = workloads.random_lengths(rng, args.requests, args.prompt_tokens, (args.output_tokens,) * 2)
    warm = workloads.random_lengths(random.Random(-1), 2, (8, 8), (4, 4))  # NIXL handshakes, first compiles
    runs: dict[str, list[Timing]] = {}
    summaries: dict[str, dict[str, Any]] = {}
    starts = {"pdserve": lambda p: _pdserve(p, model), "vllm-router": lambda p: _vllm_router(p, model, peer_bin())}
    for name, start in starts.items():
        with Procs(args.out / "logs" / f"real-{name}", env=child_env()) as procs:
            url = start(procs)
            asyncio.run(drive(url, NAME, warm, 0.0, 1, progress=False))
            timings, wall = asyncio.run(drive(url, NAME, items, 0.0, 1, progress=sys.stderr.isatty()))
        runs[name], summaries[name] = timings, summarize(timings, wall, Slo(args.slo_ttft, args.slo_tpot))
    same = [a.text == b.text for a, b in zip(runs["pdserve"], runs["vllm-router"], strict=True)]
    for s in summaries.values():
        s["identical_outputs"] = f"{sum(same)}/{len(same)}"
    finish(args.out, "real", args, runs, summaries)
    print(f"identical greedy outputs: {sum(same)}/{len(same)}")
    return 0 if all(same) else 1


def add_parser(kinds: Any, common: argparse.ArgumentParser) -> None:
    p = kinds.add_parser("real", parents=[common], help="pdserve vs vllm-router, P/D on real vLLM CPU engines")
    p.add_argument("--requests", type=int, default=8)
    p.add_argument("--prompt-tokens", type=int_range, default=(16, 1200))
    output_and_slo(p, output_tokens=32, slo_ttft=5.0, slo_tpot=0.5)
    p.set_defaults(run=real)
