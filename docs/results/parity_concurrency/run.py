"""The parity battery's wall time at several concurrencies: `pdserve up` (2 prefill workers, as
the session cluster) against `vllm serve` (as tests/e2e/test_parity.py starts it), both started
once, the battery run once per concurrency given, in that order.

    deploy/local/pdserve --help >/dev/null   # installs the venv
    ~/.cache/pdserve/venv/bin/python docs/results/parity_concurrency/run.py 16 48 96
"""

# ruff: noqa: E402 - the repository goes on sys.path first
from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))

from pdserve.tools.model import default_model_dir
from pdserve.tools.parity import known as known_file
from pdserve.tools.parity.__main__ import ParityConfig, run
from tests.helpers.cluster import start_up, stop_up
from tests.helpers.vllm_serve import vllm_serves


def main(concurrencies: list[int]) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="parity-concurrency-"))
    cluster = start_up(tmp, prefill_workers=2)
    try:
        with vllm_serves(default_model_dir(), cluster.model, tmp, [()]) as (server,):
            for n in concurrencies:
                cfg = ParityConfig(
                    a=cluster.url, b=server.url, model_a=cluster.model, model_b=server.model, concurrency=n, sdk=False
                )
                started = time.monotonic()
                report = asyncio.run(run(cfg, known_file.load(REPO / "docs/parity_known.json")))
                wall = time.monotonic() - started
                a = sum(r.a.seconds for r in report.results)
                b = sum(r.b.seconds for r in report.results)
                print(
                    f"concurrency {n}: {wall:.1f} s for {len(report.results)} cases, "
                    f"{len(report.triage.unknown)} unknown mismatches; latency sums: pdserve {a:.0f} s, "
                    f"vllm serve {b:.0f} s",
                    flush=True,
                )
    finally:
        stop_up(cluster.proc)


if __name__ == "__main__":
    main([int(x) for x in sys.argv[1:]])
