"""Engine configuration shared by both worker roles: typed, frozen, built once in main()."""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pdserve.config import model_path
from pdserve.flags import add_flags, build, flag

KV_CONNECTORS = {"nixl", "none"}
UCX_ERROR_HANDLING = ("peer", "none")
GIB = 1 << 30


def _gib(raw: str) -> int:
    return int(float(raw) * GIB)


def _show_gib(value: int) -> str:
    return f"{value / GIB:g}"


@dataclass(frozen=True)
class EngineConfig:
    """Both worker roles' engine; each field is also its flag (``pdserve.flags``)."""

    model: str = flag(env="PDSERVE_MODEL", parse=model_path, help="HF model directory")
    served_model_name: str = flag(
        "", env="PDSERVE_SERVED_MODEL_NAME", help="model name clients use (none: the model directory's name)"
    )
    engine: str = flag("vllm", env="PDSERVE_ENGINE", help="engine implementation")
    # Must match what the router hashes with; CPU needs a multiple of 32.
    block_size: int = flag(128, env="PDSERVE_BLOCK_SIZE", help="KV block size in tokens")
    max_model_len: int = flag(2048, env="PDSERVE_MAX_MODEL_LEN", help="context length")
    dtype: str = flag("auto", env="PDSERVE_DTYPE", help="weights/activation dtype")
    kv_cache_bytes: int = flag(
        1 << 30,
        name="--kv-cache-gib",
        env="PDSERVE_KV_CACHE_GIB",
        parse=_gib,
        fmt=_show_gib,
        help="KV cache size in GiB",
    )
    enforce_eager: bool = flag(
        True,
        name="--no-enforce-eager",
        env="PDSERVE_ENFORCE_EAGER",
        negate=True,
        help="allow torch.compile / CUDA graphs",
    )
    kv_connector: str = flag(
        "nixl",
        env="PDSERVE_KV_CONNECTOR",
        choices=tuple(sorted(KV_CONNECTORS)),
        help="KV transfer connector; none = a plain engine that prefills locally",
    )
    kv_host: str = flag(
        "127.0.0.1", env="PDSERVE_KV_HOST", help="address peers reach this engine's NIXL side channel on"
    )
    kv_port: int = flag(5600, env="PDSERVE_KV_PORT", help="NIXL side-channel port, one per engine")
    kv_ucx_error_handling: str = flag(
        "peer",
        env="PDSERVE_KV_UCX_ERROR_HANDLING",
        choices=UCX_ERROR_HANDLING,
        help="NIXL's UCX endpoints: peer = detect a dead peer (vLLM's default; without InfiniBand only TCP "
        "offers it, so even two engines on one host move KV over tcp/lo at ~0.5 GB/s); none = let UCX use "
        "shared memory or cuda_ipc where it can (one GPU, measured: shared memory, still emulated, ~10 % "
        "faster; a peer that dies mid-transfer is then seen only by the KV lease). Give both roles the same "
        "value (docs/operations.md, KV path)",
    )
    kv_events_port: int = flag(
        0,
        env="PDSERVE_KV_EVENTS_PORT",
        help="publish KV cache events (vLLM's ZMQ format) on this port, replay on the next; 0 = off",
    )
    # Set the same value on both roles: the decode side's heartbeat interval (lease / 6)
    # must stay below the prefill side's extension per heartbeat (lease * 2/3).
    kv_lease_s: int | None = flag(
        None,
        env="PDSERVE_KV_LEASE_S",
        help="seconds a prefill engine holds the KV blocks of a finished prompt that no decode side has "
        "pulled, then frees them (NixlConnector's lease; a waiting decode side's heartbeats extend it). "
        "none: the vLLM release's own (30 s in vLLM 0.32; 480 s in releases that read "
        "VLLM_NIXL_ABORT_REQUEST_TIMEOUT). Give both roles the same value",
    )
    kv_bandwidth_floor: float = flag(
        0.0,
        env="PDSERVE_KV_BANDWIDTH_FLOOR",
        help="GB/s: a decode engine pulling KV slower than this warns, sets pdserve_worker_kv_path_slow and "
        "the router's /health detail; 0 = by where the KV is staged: 0.1 GB/s cpu, 5 GB/s cuda (the sim: cuda)",
    )
    reasoning_parser: str = flag(
        "",
        env="PDSERVE_REASONING_PARSER",
        help="as vllm serve's --reasoning-parser for the engine: structured outputs (and forced tool calls) "
        "constrain the output only after the reasoning ends; give the router the same (one variable sets both)",
    )
    engine_args: dict[str, Any] = flag(
        default_factory=dict,
        name="--engine-arg",
        repeat=True,
        parse=lambda items: dict(parse_engine_arg(i) for i in items),
        metavar="KEY=VALUE",
        help="extra vLLM engine argument, VALUE parsed as JSON when it can be "
        "(e.g. load_format=dummy, gpu_memory_utilization=0.8); repeatable; unknown flags in vLLM's "
        "own spelling (--load-format dummy) land here too",
    )

    def __post_init__(self) -> None:
        if not self.served_model_name:  # frozen: the one place this field is completed
            object.__setattr__(self, "served_model_name", Path(self.model).name)
        if self.block_size < 1:
            raise ValueError("block_size must be >= 1")
        if self.max_model_len < 2:
            raise ValueError("max_model_len must be >= 2")
        if self.kv_cache_bytes < 1 << 20:
            raise ValueError("kv_cache_bytes must be >= 1 MiB")
        if self.kv_connector not in KV_CONNECTORS:
            raise ValueError(f"kv_connector must be one of {sorted(KV_CONNECTORS)}")
        if not 0 < self.kv_port < 65536:
            raise ValueError("kv_port must be a TCP port")
        if not 0 <= self.kv_events_port < 65535:
            raise ValueError("kv_events_port must be a TCP port (0 = off)")
        if self.kv_bandwidth_floor < 0:
            raise ValueError("kv_bandwidth_floor must be >= 0 (GB/s)")
        if self.kv_lease_s is not None and self.kv_lease_s < 1:
            raise ValueError("kv_lease_s must be >= 1 second")

    @property
    def kv_events_endpoints(self) -> tuple[str, str]:
        """(events, replay) endpoints as peers reach them; ("", "") when off."""
        if not self.kv_events_port:
            return "", ""
        return f"tcp://{self.kv_host}:{self.kv_events_port}", f"tcp://{self.kv_host}:{self.kv_events_port + 1}"


def parse_engine_arg(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ValueError(f"--engine-arg expects KEY=VALUE, got {item!r}")
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.replace("-", "_"), value


def passthrough_engine_args(rest: list[str]) -> dict[str, Any]:
    """Flags the worker does not know, in vLLM's own spelling, become engine arguments:
    ``--load-format dummy``, ``--gpu-memory-utilization=0.8``, ``--enable-chunked-prefill``.
    The engine checks the names against its release (unknown → ValueError at start)."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(rest):
        token = rest[i]
        if not token.startswith("--") or token == "--":
            raise ValueError(f"engine_args: unexpected argument {token!r}")
        name, sep, raw = token[2:].partition("=")
        if not sep:
            has_value = i + 1 < len(rest) and not rest[i + 1].startswith("--")
            raw = rest[i + 1] if has_value else "true"
            i += 1 if has_value else 0
        out.update([parse_engine_arg(f"{name}={raw}")])
        i += 1
    return out


def add_engine_flags(parser: argparse.ArgumentParser, default_kv_port: int, default_events_port: int) -> None:
    """The engine's flags on another tool's parser (sim-http); read back by ``engine_config_from_args``."""
    defaults = {"kv_port": default_kv_port, "kv_events_port": default_events_port}
    add_flags(parser, EngineConfig, defaults)
    parser.set_defaults(engine_flag_defaults=defaults)


def engine_config_from_args(args: argparse.Namespace, model_dir: Path, rest: list[str] | None = None) -> EngineConfig:
    args.model = str(model_dir)
    cfg = build(EngineConfig, args, getattr(args, "engine_flag_defaults", {}))
    return with_passthrough(cfg, rest or [])


def with_passthrough(cfg: EngineConfig, rest: list[str]) -> EngineConfig:
    """``cfg`` with the flags the worker does not know added to its engine args (``--engine-arg`` wins)."""
    return dataclasses.replace(cfg, engine_args={**passthrough_engine_args(rest), **cfg.engine_args})
