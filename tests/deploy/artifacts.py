"""Loading the deployment artifacts: rendered overlays, interpolated compose; paths and names."""

from __future__ import annotations

import functools
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.deploy import kustomize

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
OVERLAYS = ("cpu", "gpu", "sim")
WORKER_ROLES = ("prefill", "decode")


@functools.cache
def render(overlay: str) -> tuple[kustomize.Resource, ...]:
    return tuple(kustomize.build(DEPLOY / "k8s" / "overlays" / overlay))


def find(resources: tuple[kustomize.Resource, ...], kind: str, name: str) -> kustomize.Resource:
    (found,) = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    return found


# Compose interpolation, the forms compose.yaml may use: ${VAR}, ${VAR:-default}, $$.
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    text = _VAR.sub(lambda m: env.get(m.group(1)) or m.group(2) or "", text)
    if "$" in text.replace("$$", ""):
        raise ValueError("compose.yaml uses an interpolation form the tests do not emulate")
    return text.replace("$$", "$")


def load_compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    raw = (DEPLOY / "compose" / "compose.yaml").read_text()
    return dict(yaml.safe_load(interpolate(raw, env or {})))


def run_secrets_init(directory: Path) -> Path:
    """Run compose's secrets-init script with ``directory`` as its `secrets` volume (as root,
    as compose runs it, the key is handed to Redis's uid; otherwise that step is left out)."""
    script = load_compose()["services"]["secrets-init"]["entrypoint"][-1].replace("cd /secrets;", f"cd {directory};")
    if os.geteuid() != 0:
        script = script.replace("chown 999 redis.key;", "")
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(["sh", "-c", script], check=True, capture_output=True, timeout=60)
    return directory
