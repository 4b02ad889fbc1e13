"""Sim engine profiles: the latency model's numbers, read from data files.

A profile is a TOML file in ``profiles/`` (or any path) whose fields are
``SimProfile``'s, with a ``source`` saying where the numbers come from. Worker
flags ``--engine-arg KEY=VALUE`` override single fields and set the failure
injection (``error_rate``, ``crash_after``, ``slow_factor``) and ``seed``.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PROFILE_DIR = Path(__file__).parent / "profiles"
DEFAULT_PROFILE = "llama-3.1-8b-h200"


@dataclass(frozen=True)
class SimProfile:
    source: str
    # prefill: a step that computes prompt tokens costs overhead + per token (uncached only)
    prefill_overhead_s: float
    prefill_s_per_token: float
    # decode: a step that advances n running requests costs base + n x per_seq
    itl_base_s: float
    itl_per_seq_s: float
    # P/D: the decode side waits overhead + per token (prompt tokens it lacks) before decoding
    kv_transfer_overhead_s: float
    kv_transfer_s_per_token: float
    kv_capacity_tokens: int
    max_num_seqs: int
    max_num_batched_tokens: int  # prompt tokens computed per step at most (chunked prefill)
    vocab_size: int
    # failure injection
    error_rate: float = 0.0  # each request fails with this probability
    error_code: str = "internal"  # how it fails: "internal" (INTERNAL) or "overloaded" (RESOURCE_EXHAUSTED)
    crash_after: int = 0  # the process exits when request number N arrives (0 = never)
    slow_factor: float = 1.0  # every step takes this many times longer
    kv_lease_s: float = 30.0  # prefill KV no decode pulled is freed after this
    seed: int = 0
    # as vLLM's engine arguments of the same names
    scheduling_policy: str = "fcfs"  # "priority": the waiting queue is ordered by (priority, arrival)
    max_logprobs: int = 20
    stream_interval: int = 1  # a stream's first token at once, then every N tokens, and its last
    # the vLLM version the worker reports: old and new workers of a simulated rolling upgrade
    vllm_version: str = "sim"
    # KV path per worker pair. A prefill engine names itself ``engine_id`` in the params it
    # returns (default: sim-<its KV events port>); a decode engine pulls from the peers in
    # ``kv_slow_peers`` (comma-separated engine ids, "*" = all) at ``kv_slow_s_per_token``
    # instead of ``kv_transfer_s_per_token`` -- for its pulls number ``kv_slow_from`` up to
    # ``kv_slow_until`` (1-based, 0 = no end): a path that degrades, then recovers.
    engine_id: str = ""
    kv_slow_peers: str = ""
    kv_slow_s_per_token: float = 0.0
    kv_slow_from: int = 1
    kv_slow_until: int = 0
    kv_bytes_per_token: int = 131072  # reported bytes per pulled token (Llama-3.1-8B bf16: 128 KiB)
    # A decode engine's pulls move one at a time (a later one waits for the earlier ones):
    # UCX's TCP emulation between two engines on one H100 took 1 s per 400 MB idle and a
    # mean 3.9 s at 4 req/s (docs/BENCHMARKS.md §4f). False: pulls overlap freely.
    kv_serial: bool = False

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, int | float) and value < 0:
                raise ValueError(f"sim profile: {f.name} must be >= 0")
        if not 0 <= self.error_rate <= 1:
            raise ValueError("sim profile: error_rate must be in [0, 1]")
        if self.error_code not in ("internal", "overloaded"):
            raise ValueError("sim profile: error_code must be internal or overloaded")
        if self.max_num_seqs < 1 or self.max_num_batched_tokens < 1 or self.vocab_size < 300:
            raise ValueError("sim profile: max_num_seqs, max_num_batched_tokens >= 1 and vocab_size >= 300")
        if self.scheduling_policy not in ("fcfs", "priority"):
            raise ValueError("sim profile: scheduling_policy must be fcfs or priority")
        if self.stream_interval < 1:
            raise ValueError("sim profile: stream_interval must be >= 1")
        if self.slow_factor <= 0:
            raise ValueError("sim profile: slow_factor must be > 0")
        if not isinstance(self.kv_serial, bool):
            raise ValueError("sim profile: kv_serial must be true or false")

    def prefill_step_s(self, tokens: int) -> float:
        return self.prefill_overhead_s + self.prefill_s_per_token * tokens if tokens else 0.0

    def decode_step_s(self, running: int) -> float:
        return self.itl_base_s + self.itl_per_seq_s * running if running else 0.0

    def transfer_s(self, tokens: int) -> float:
        return self.kv_transfer_overhead_s + self.kv_transfer_s_per_token * tokens

    def pull_s(self, tokens: int, peer: str, pull: int) -> float:
        """The decode side's pull number ``pull`` (1-based) of ``tokens`` from ``peer``."""
        peers = {p.strip() for p in self.kv_slow_peers.split(",") if p.strip()}
        slow = (peer in peers or "*" in peers) and pull >= self.kv_slow_from
        if slow and (not self.kv_slow_until or pull <= self.kv_slow_until):
            return self.kv_transfer_overhead_s + self.kv_slow_s_per_token * tokens
        return self.transfer_s(tokens)


def load_profile(overrides: dict[str, Any]) -> SimProfile:
    """The profile named (or at the path) in ``overrides["profile"]``, with the other keys applied."""
    overrides = dict(overrides)
    name = str(overrides.pop("profile", DEFAULT_PROFILE))
    path = Path(name) if name.endswith(".toml") else PROFILE_DIR / f"{name}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))
        raise ValueError(f"sim profile: no profile {name!r}; choose one of {known} or a .toml path")
    data = tomllib.loads(path.read_text())
    fields = {f.name: f for f in dataclasses.fields(SimProfile)}
    unknown = sorted(k for k in [*data, *overrides] if k not in fields)
    if unknown:
        raise ValueError(f"sim profile: unknown field(s) {unknown}")
    data.update(overrides)  # --engine-arg values arrive as JSON scalars or strings
    typed = {k: _coerce(fields[k].type, v) for k, v in data.items()}
    return SimProfile(**typed)


def _coerce(annotation: Any, value: Any) -> Any:
    kind = {"float": float, "int": int, "str": str}.get(str(annotation))
    return kind(value) if kind else value
