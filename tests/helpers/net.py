"""The repository root and free ports for processes the tests start."""

from __future__ import annotations

from pathlib import Path

from pdserve.bench import procs

REPO = Path(__file__).resolve().parents[2]


def free_port(span: int = 2) -> int:
    """A free port and the one after it (ZMQ replay, NIXL) by default."""
    return procs.free_port(span)
