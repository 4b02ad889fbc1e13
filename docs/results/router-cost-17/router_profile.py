"""Where the router's CPU goes per request (docs/BENCHMARKS.md §10): py-spy samples the router
process (only the thread holding the GIL: Python work, not waiting) while one client sends
`bench compare overhead`'s requests one at a time through it to 2 zero-profile sim workers; each
sample is charged to the innermost frame that belongs to a known component.

    PATH=~/.cache/pdserve/venv/bin:$PATH PYTHONPATH=. python docs/results/router-cost-17/router_profile.py OUT [SECONDS]

Needs py-spy (`pip install py-spy`) and ptrace rights over the router (root, or
kernel.yama.ptrace_scope=0). Writes OUT/router.raw (collapsed stacks) and prints the table."""

from __future__ import annotations

import asyncio
import collections
import random
import subprocess
import sys
import time
from pathlib import Path

from pdserve.tools.bench import workloads
from pdserve.tools.bench.run import drive
from pdserve.tools.fleet import start_router, start_sim_worker
from pdserve.tools.model import model_from_env
from pdserve.tools.procs import Procs

SIM = ["--served-model-name", "sim", "--block-size", "128", "--engine-arg", "profile=zero", "--kv-connector", "none"]
RATE_HZ = 1000
# The innermost frame matching one of these names the component a sample is charged to.
COMPONENTS = [
    ("tokenize (transformers)", ["transformers/", "tokenizers"]),
    ("logging", ["logging/"]),
    ("prometheus metrics", ["prometheus_client/", "router/metrics.py"]),
    ("kv block hashing", ["pdserve/kv/"]),
    ("placement", ["router/placer.py", "router/placement/", "router/pool.py", "pdserve/state/"]),
    ("gRPC client + protobuf", ["grpc/", "grpc", "pdserve/rpc/", "google/protobuf", "router/clients.py"]),
    ("pydantic / request parsing", ["pydantic", "fastapi/dependencies", "fastapi/routing.py", "json/"]),
    ("validate", ["router/api/validate.py", "router/api/size.py", "router/generation_config"]),
    ("render + SSE", ["router/api/render.py", "router/api/chat_output.py"]),
    ("detokenize / output state", ["router/request_state.py", "router/tokenizer.py"]),
    (
        "orchestrator / service / admission",
        [
            "router/orchestrator.py",
            "router/service.py",
            "router/admission.py",
            "router/request.py",
            "router/handover.py",
            "router/release.py",
        ],
    ),
    ("BaseHTTPMiddleware", ["starlette/middleware/base.py"]),
    ("router/api/app.py, limits, middleware", ["router/api/"]),
    ("starlette/anyio (routing, StreamingResponse)", ["starlette/", "anyio/", "fastapi/"]),
    ("uvicorn HTTP", ["uvicorn/"]),
    ("asyncio + uvloop (tasks, futures, the loop)", ["asyncio/", "concurrent/futures", "threading.py", "_weakrefset"]),
]


def record(out: Path, seconds: int) -> int:
    """Profile the router for ``seconds`` under sequential load; the requests sent meanwhile."""
    items = workloads.random_lengths(random.Random(0), 10000, (48, 64), (8, 8))
    with Procs(out / "logs") as procs:
        workers = [start_sim_worker(procs, "decode", f"decode{i}", SIM).address for i in range(2)]
        router = start_router(procs, model_from_env(), [], workers, ["--log-level", "WARNING"])
        asyncio.run(drive(router.address, "sim", items[:100], 0, 1, progress=False))  # warm
        argv = ["py-spy", "record", "--pid", str(router.proc.pid), "-d", str(seconds), "-r", str(RATE_HZ)]
        spy = subprocess.Popen([*argv, "--gil", "--nonblocking", "--format", "raw", "-o", str(out / "router.raw")])
        sent, start = 100, time.perf_counter()
        while time.perf_counter() - start < seconds:
            asyncio.run(drive(router.address, "sim", items[sent : sent + 50], 0, 1, progress=False))
            sent += 50
        spy.wait()
        return sent - 100


def table(raw: Path, requests: int) -> str:
    charged: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        name = next((n for f in reversed(frames) for n, pats in COMPONENTS if any(p in f for p in pats)), "other")
        charged[name] += int(count)
    total = sum(charged.values())
    rows = [f"| {name} | {n / total:.1%} | {n / requests * 1e6 / RATE_HZ:.0f} |" for name, n in charged.most_common()]
    per_request_ms = total / requests * 1e3 / RATE_HZ
    head = f"{requests} requests, {total} GIL-held samples at {RATE_HZ} Hz: {per_request_ms:.2f} ms per request\n\n"
    return head + "| component | share | µs per request |\n|---|---:|---:|\n" + "\n".join(rows) + "\n"


if __name__ == "__main__":
    out = Path(sys.argv[1])
    n = record(out, int(sys.argv[2]) if len(sys.argv) > 2 else 20)
    print(table(out / "router.raw", n))
