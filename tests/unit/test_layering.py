"""The layering rules of docs/development.md, as import-linter contracts in pyproject.toml."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.helpers.net import REPO

PACKAGES = ("pdserve", "router", "prefill_worker", "decode_worker")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` on the tree under ``root``, its packages first on the import path."""
    exe = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(exe), str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_every_contract_is_kept() -> None:
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " BROKEN" not in result.stdout
    assert result.stdout.count(" KEPT") >= 6  # one line per contract


def test_a_router_that_imports_torch_breaks_the_contract(tmp_path: Path) -> None:
    """The contracts are not vacuous: the same tree plus one forbidden import fails."""
    for package in PACKAGES:
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    init = tmp_path / "router" / "__init__.py"
    init.write_text(init.read_text() + "\nimport torch  # noqa: F401 - what the contract forbids\n")
    result = lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "The router never imports vllm or torch BROKEN" in result.stdout
    assert "router -> torch" in result.stdout
