"""`pdserve bench` must load on GPU hosts, which have no redis-py (twice a merged bench imported
it at the top and cost a GPU session its runs)."""

from __future__ import annotations

import subprocess
import sys

POISON = "import sys; sys.modules['redis'] = None; from pdserve.cli import main; main(['bench', 'load', '--help'])"


def test_bench_cli_loads_without_redis() -> None:
    done = subprocess.run([sys.executable, "-c", POISON], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--rates" in done.stdout
