"""Under ``router --workers N`` a scrape reads every process's multiprocess files, which keep each
series ever written: a worker that left the fleet must not stay in /metrics."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = """
import sys, types
from pdserve.types import WorkerId
from router.metrics import RouterMetrics
pool = lambda prefill, decode: types.SimpleNamespace(name="m", prefill=prefill, decode=decode)
a, b, d = WorkerId("10.0.0.1:1"), WorkerId("10.0.0.2:1"), WorkerId("10.0.0.3:1")
metrics = RouterMetrics("prefix-aware", multiprocess_dir=sys.argv[1])
metrics.fleet_changed({"m": pool([a, b], [d])})
for worker in (a, b):
    metrics.placed("prefill", worker)
metrics.placed("decode", d)
sys.stdout.write("BEFORE\\n" + metrics.exposition().decode())
metrics.fleet_changed({"m": pool([a], [d])})
sys.stdout.write("AFTER\\n" + metrics.exposition().decode())
"""


def placement_lines(text: str) -> list[str]:
    return sorted(line for line in text.splitlines() if line.startswith("pdserve_router_placement_decisions_total"))


def test_a_departed_worker_leaves_the_multiprocess_exposition(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}  # read when prometheus_client is imported
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    before, after = done.stdout.split("AFTER\n")
    assert any("10.0.0.2:1" in line for line in placement_lines(before))  # written to the files
    assert len(placement_lines(before)) == 3
    kept = placement_lines(after)
    assert len(kept) == 2 and not any("10.0.0.2:1" in line for line in kept), kept
    assert any('role="decode"' in line and "10.0.0.3:1" in line for line in kept)
    assert "pdserve_router_requests" in after or "pdserve_router_inflight_requests" in after  # the rest is kept
