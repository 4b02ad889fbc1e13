"""A router process's start-up CPU and memory, with torch kept out (as `python -m router` does)
and with torch imported first (what transformers' AutoTokenizer did in a venv that has torch).
Two sim workers; each router is started, timed to its first /v1/models answer, measured from
/proc (CPU seconds, RSS), and stopped; the two kinds alternate, ROUNDS times.

    deploy/local/pdserve --help >/dev/null   # installs the venv
    ~/.cache/pdserve/venv/bin/python docs/results/router-start/run.py [ROUNDS]
"""

# ruff: noqa: E402 - the repository goes on sys.path first
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))

from pdserve.tools import fleet
from pdserve.tools.model import default_model_dir
from pdserve.tools.ports import free_port
from pdserve.tools.procs import Procs

# torch imported before the router's module runs: keep_torch_out (router/torchless.py) then leaves it
WITH_TORCH = "import runpy, sys, torch; sys.argv[0] = 'router'; runpy.run_module('router', run_name='__main__')"


def measure(pid: int) -> tuple[float, int, bool]:
    """(CPU seconds, RSS MiB, libtorch mapped) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    rss = int(Path(f"/proc/{pid}/status").read_text().split("VmRSS:")[1].split()[0]) // 1024
    return cpu, rss, "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def main(rounds: int) -> None:
    model = default_model_dir()
    with Procs(Path(tempfile.mkdtemp(prefix="router-start-"))) as procs:
        prefill = fleet.start_sim_worker(procs, "prefill", "prefill")
        decode = fleet.start_sim_worker(procs, "decode", "decode")
        for i in range(rounds):
            for kind in ("torch kept out", "torch imported"):
                port = free_port()
                args = ["--port", str(port), "--model", str(model), f"--prefill={prefill.address}"]
                args += [f"--decode={decode.address}"]
                head = (
                    [sys.executable, "-m", "router"] if kind == "torch kept out" else [sys.executable, "-c", WITH_TORCH]
                )
                started = time.monotonic()
                proc = procs.start(f"router-{i}-{kind.split()[1]}", [*head, *args])
                url = f"http://127.0.0.1:{port}/v1/models"
                procs.wait_http(url, fleet.ROUTER_READY_S, ready=lambda r: bool(r.json()["data"]))
                ready = time.monotonic() - started
                cpu, rss, torch = measure(proc.pid)
                print(f"{kind}: ready in {ready:.1f} s, {cpu:.1f} s CPU, {rss} MiB RSS, libtorch mapped: {torch}")
                procs.stop_one(proc)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
