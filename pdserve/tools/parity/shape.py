"""The shape of a JSON answer: its key paths and the JSON types found at each.

Lists collapse to ``[]`` (``choices[].message.content``); maps keyed by data (a token id,
a token string) collapse to ``*``; ``IGNORED_PATHS`` are left out, with what is under them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from typing import Any

# Differ between any two servers or any two runs, and say nothing about behaviour:
# response ids, creation times, build fingerprints, per-request timing, and the cached
# share of the prompt (which depends on what the server served before).
IGNORED_PATHS = frozenset(
    {"id", "created", "system_fingerprint", "metrics", "usage.prompt_tokens_details", "choices[].metrics"}
)
# Paths whose object keys are data: prompt logprobs (token id → entry) and completions'
# top_logprobs (token string → logprob).
DATA_KEYED = ("prompt_logprobs[]", "logprobs.top_logprobs[]")


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def key_paths(value: Any, path: str = "") -> set[str]:
    """``"path:type"`` for every node under ``value`` (the root itself excluded)."""
    out: set[str] = set()
    if isinstance(value, dict):
        keyed = path.endswith(DATA_KEYED)
        for key, child in value.items():
            sub = f"{path}.*" if keyed else (f"{path}.{key}" if path else key)
            if sub in IGNORED_PATHS:
                continue
            out.add(f"{sub}:{json_type(child)}")
            out |= key_paths(child, sub)
    elif isinstance(value, list):
        for child in value:
            out.add(f"{path}[]:{json_type(child)}")
            out |= key_paths(child, f"{path}[]")
    return out


def stream_key_paths(events: list[Any]) -> set[str]:
    """The union of the chunks' key paths, without ``null`` at a path that also holds a
    value: which chunk carries a null (a finish reason before the last chunk, prompt ids
    after the first) depends on how the server grouped tokens into chunks, i.e. on timing."""
    paths = set().union(*(key_paths(e) for e in events))
    valued = {p.rpartition(":")[0] for p in paths if not p.endswith(":null")}
    return {p for p in paths if not (p.endswith(":null") and p.rpartition(":")[0] in valued)}


def shape_diff(a: set[str], b: set[str]) -> Iterator[tuple[str, str, str]]:
    """``(path, types in A, types in B)`` for each path whose types differ ("absent" when a
    side lacks the path); a path missing on one side under a parent already reported is skipped."""
    types_a, types_b = _by_path(a), _by_path(b)
    for path in sorted(set(types_a) | set(types_b)):
        ta, tb = types_a.get(path), types_b.get(path)
        if ta == tb:
            continue
        parent = _parent(path)
        if parent and (ta is None or tb is None) and types_a.get(parent) != types_b.get(parent):
            continue  # the parent is reported already
        yield path, "|".join(sorted(ta)) if ta else "absent", "|".join(sorted(tb)) if tb else "absent"


def _by_path(paths: set[str]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for entry in paths:
        path, _, kind = entry.rpartition(":")
        out[path].add(kind)
    return out


def _parent(path: str) -> str:
    if path.endswith("[]"):
        return path[:-2]
    return path.rpartition(".")[0]
