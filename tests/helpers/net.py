"""The repository root and free ports for processes the tests start."""

from __future__ import annotations

from pathlib import Path

from pdserve.tools import ports

REPO = Path(__file__).resolve().parents[2]


def free_port(span: int = 2) -> int:
    """A free port and the one after it (ZMQ replay, NIXL) by default."""
    return ports.free_port(span)
