"""Engine configuration shared by both worker roles: typed, frozen, built once in main()."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KV_CONNECTORS = {"nixl", "none"}


@dataclass(frozen=True)
class EngineConfig:
    model: str  # HF model directory
    served_model_name: str
    engine: str = "vllm"
    block_size: int = 128  # must match what the router hashes with; CPU needs a multiple of 32
    max_model_len: int = 2048
    dtype: str = "auto"
    kv_cache_bytes: int = 1 << 30
    enforce_eager: bool = True
    kv_connector: str = "nixl"  # "none": a plain engine (colocated baseline, decode-only)
    kv_host: str = "127.0.0.1"  # NIXL side channel host the peer connects to
    kv_port: int = 5600  # NIXL side channel port, one per engine
    kv_events_port: int = 0  # KV event publisher (ZMQ PUB); replay on the next port; 0 = off
    # Seconds a prefill engine keeps finished prompts' KV blocks for a decode side that
    # never pulls them; None = the vLLM release's default. Set the same value on both
    # roles: the decode side's heartbeat interval (lease / 6) must stay below the
    # prefill side's extension per heartbeat (lease * 2/3).
    kv_lease_s: int | None = None
    engine_args: dict[str, Any] = field(default_factory=dict)  # passed to vLLM unchanged

    def __post_init__(self) -> None:
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
        if self.kv_lease_s is not None and self.kv_lease_s < 1:
            raise ValueError("kv_lease_s must be >= 1 second")

    @property
    def kv_events_endpoints(self) -> tuple[str, str]:
        """(events, replay) endpoints as peers reach them; ("", "") when off."""
        if not self.kv_events_port:
            return "", ""
        return f"tcp://{self.kv_host}:{self.kv_events_port}", f"tcp://{self.kv_host}:{self.kv_events_port + 1}"


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def add_engine_flags(parser: argparse.ArgumentParser, default_kv_port: int, default_events_port: int) -> None:
    """Engine flags of both worker CLIs; each falls back to a PDSERVE_* variable."""
    g = parser.add_argument_group("engine")
    g.add_argument(
        "--model",
        default=_env("PDSERVE_MODEL", ""),
        help="HF model directory (default: the embedded SmolLM2-135M-Instruct) [PDSERVE_MODEL]",
    )
    g.add_argument(
        "--served-model-name",
        default=_env("PDSERVE_SERVED_MODEL_NAME", ""),
        help="model name clients use (default: the directory name) [PDSERVE_SERVED_MODEL_NAME]",
    )
    g.add_argument("--engine", default=_env("PDSERVE_ENGINE", "vllm"), help="engine implementation [PDSERVE_ENGINE]")
    g.add_argument(
        "--block-size",
        type=int,
        default=int(_env("PDSERVE_BLOCK_SIZE", "128")),
        help="KV block size in tokens [PDSERVE_BLOCK_SIZE]",
    )
    g.add_argument(
        "--max-model-len",
        type=int,
        default=int(_env("PDSERVE_MAX_MODEL_LEN", "2048")),
        help="context length [PDSERVE_MAX_MODEL_LEN]",
    )
    g.add_argument("--dtype", default=_env("PDSERVE_DTYPE", "auto"), help="weights/activation dtype [PDSERVE_DTYPE]")
    g.add_argument(
        "--kv-cache-gib",
        type=float,
        default=float(_env("PDSERVE_KV_CACHE_GIB", "1")),
        help="KV cache size in GiB [PDSERVE_KV_CACHE_GIB]",
    )
    g.add_argument(
        "--no-enforce-eager",
        action="store_true",
        default=_env("PDSERVE_ENFORCE_EAGER", "1") == "0",
        help="allow torch.compile / CUDA graphs [PDSERVE_ENFORCE_EAGER=0]",
    )
    g.add_argument(
        "--kv-connector",
        default=_env("PDSERVE_KV_CONNECTOR", "nixl"),
        choices=sorted(KV_CONNECTORS),
        help="KV transfer connector; none = a plain engine that prefills locally [PDSERVE_KV_CONNECTOR]",
    )
    g.add_argument(
        "--kv-host",
        default=_env("PDSERVE_KV_HOST", "127.0.0.1"),
        help="address peers reach this engine's NIXL side channel on [PDSERVE_KV_HOST]",
    )
    g.add_argument(
        "--kv-port",
        type=int,
        default=int(_env("PDSERVE_KV_PORT", str(default_kv_port))),
        help="NIXL side-channel port [PDSERVE_KV_PORT]",
    )
    g.add_argument(
        "--kv-events-port",
        type=int,
        default=int(_env("PDSERVE_KV_EVENTS_PORT", str(default_events_port))),
        help="publish KV cache events (vLLM's ZMQ format) on this port, replay on the next; 0 = off "
        "[PDSERVE_KV_EVENTS_PORT]",
    )
    g.add_argument(
        "--kv-lease-s",
        type=int,
        default=_optional_int(_env("PDSERVE_KV_LEASE_S", "")),
        help="seconds a prefill engine holds the KV blocks of a finished prompt that no decode side has "
        "pulled, then frees them (NixlConnector's lease; a waiting decode side's heartbeats extend it). "
        "Default: the vLLM release's own (30 s in vLLM 0.32; 480 s in releases that read "
        "VLLM_NIXL_ABORT_REQUEST_TIMEOUT). Give both roles the same value [PDSERVE_KV_LEASE_S]",
    )
    g.add_argument(
        "--engine-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra vLLM engine argument, VALUE parsed as JSON when it can be "
        "(e.g. load_format=dummy, gpu_memory_utilization=0.8); repeatable",
    )


def _optional_int(raw: str) -> int | None:
    return int(raw) if raw else None


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


def engine_config_from_args(args: argparse.Namespace, model_dir: Path, rest: list[str] | None = None) -> EngineConfig:
    return EngineConfig(
        model=str(model_dir),
        served_model_name=args.served_model_name or model_dir.name,
        engine=args.engine,
        block_size=args.block_size,
        max_model_len=args.max_model_len,
        dtype=args.dtype,
        kv_cache_bytes=int(args.kv_cache_gib * (1 << 30)),
        enforce_eager=not args.no_enforce_eager,
        kv_connector=args.kv_connector,
        kv_host=args.kv_host,
        kv_port=args.kv_port,
        kv_events_port=args.kv_events_port,
        kv_lease_s=args.kv_lease_s,
        engine_args={**passthrough_engine_args(rest or []), **dict(parse_engine_arg(a) for a in args.engine_arg)},
    )
