"""The known-differences file: mismatches that are expected, each with its reason.

JSON: ``{"known": [{"case": GLOB, "kind": GLOB, "path": GLOB, "what": str, "why": str}]}``;
``kind`` and ``path`` default to ``*``. Globs are ``fnmatch``'s, matched case-sensitively.
An entry that matched nothing in a run is reported as stale: the difference is gone (or the
case was renamed), and the entry should go.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from pdserve.tools.parity.compare import Mismatch


@dataclass(frozen=True)
class KnownDifference:
    case: str
    what: str
    why: str
    kind: str = "*"
    path: str = "*"

    def matches(self, m: Mismatch) -> bool:
        return fnmatchcase(m.case, self.case) and fnmatchcase(m.kind, self.kind) and fnmatchcase(m.path, self.path)


@dataclass(frozen=True)
class Triage:
    unknown: list[Mismatch]
    known: list[tuple[Mismatch, KnownDifference]]
    stale: list[KnownDifference]


def load(path: Path) -> list[KnownDifference]:
    data = json.loads(path.read_text())
    entries = data.get("known") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected {{'known': [...]}}")
    out = []
    for i, entry in enumerate(entries):
        missing = {"case", "what", "why"} - set(entry)
        if missing:
            raise ValueError(f"{path}: known[{i}] lacks {sorted(missing)}")
        out.append(KnownDifference(**entry))
    return out


def triage(found: list[Mismatch], known: list[KnownDifference]) -> Triage:
    """Each mismatch against the first entry matching it."""
    unknown: list[Mismatch] = []
    matched: list[tuple[Mismatch, KnownDifference]] = []
    for m in found:
        entry = next((k for k in known if k.matches(m)), None)
        if entry is None:
            unknown.append(m)
        else:
            matched.append((m, entry))
    used = {id(k) for _, k in matched}
    return Triage(unknown, matched, [k for k in known if id(k) not in used])
