"""The Dockerfile's stages and the commands its images run, as the deploy tests read them."""

from __future__ import annotations

import importlib.metadata
import sys
from dataclasses import dataclass, field

import dockerfile

from tests.deploy.artifacts import DEPLOY

DOCKERFILE = DEPLOY / "docker" / "Dockerfile"


@dataclass
class Stage:
    name: str
    instructions: list[dockerfile.Command] = field(default_factory=list)

    def last(self, keyword: str) -> dockerfile.Command:
        return [c for c in self.instructions if c.cmd == keyword][-1]

    def has(self, keyword: str) -> bool:
        return any(c.cmd == keyword for c in self.instructions)


def stages() -> dict[str, Stage]:
    """The Dockerfile's stages by name, parsed by BuildKit's own parser."""
    out: dict[str, Stage] = {}
    current = None
    for command in dockerfile.parse_file(str(DOCKERFILE)):
        if command.cmd == "FROM":
            current = out.setdefault(command.value[-1], Stage(command.value[-1]))
        elif current is not None:
            current.instructions.append(command)
    return out


def command(target: str, role: str | None = None) -> list[str]:
    """ENTRYPOINT + CMD (or the role compose and k8s pass instead of CMD) as run in the image."""
    stage = stages()[target]
    entrypoint = stage.last("ENTRYPOINT")
    assert entrypoint.json, "ENTRYPOINT in exec form, so signals reach the service"
    if role is None and stage.has("CMD"):
        return [*entrypoint.value, *stage.last("CMD").value]
    return [*entrypoint.value, *([role] if role else [])]


def python_argv(argv: list[str]) -> list[str]:
    """The same command, on this interpreter: `python[3] -m mod` directly, a console script
    through the function its entry point names."""
    if argv[0] in ("python", "python3"):
        return [sys.executable, *argv[1:]]
    (script,) = importlib.metadata.entry_points(group="console_scripts", name=argv[0])
    module, _, function = script.value.partition(":")
    code = f"import sys; from {module} import {function} as main; sys.argv[0] = {argv[0]!r}; sys.exit(main())"
    return [sys.executable, "-c", code, *argv[1:]]
