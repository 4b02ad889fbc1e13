"""The committed stubs in pdserve/v1 must be what protoc makes of proto/ today."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_generated_stubs_are_fresh(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{REPO / 'proto'}",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            str(REPO / "proto/pdserve/v1/worker.proto"),
        ],
        check=True,
    )
    for name in ("worker_pb2.py", "worker_pb2.pyi", "worker_pb2_grpc.py"):
        fresh = (tmp_path / "pdserve/v1" / name).read_text()
        committed = (REPO / "pdserve/v1" / name).read_text()
        assert fresh == committed, f"pdserve/v1/{name} is stale: regenerate it (see docs/development.md)"
