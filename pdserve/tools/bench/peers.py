"""The peer routers the comparisons run against, installed from PyPI into a venv of their own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PEERS = ("sglang-router==0.3.2", "vllm-router==0.1.17")


def peer_bin(venv: Path | None = None) -> Path:
    """The peers' venv (created and filled from PyPI on first use); its bin/ directory."""
    cache = Path(os.environ.get("PDSERVE_CACHE", Path.home() / ".cache" / "pdserve"))
    venv = venv or cache / "peers"
    stamp = venv / ".pdserve-peers"
    if not stamp.is_file() or stamp.read_text() != " ".join(PEERS):
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *PEERS], check=True)
        stamp.write_text(" ".join(PEERS))
    return venv / "bin"
