"""Router configuration: typed, frozen, built once from flags with PDSERVE_* env fallbacks."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field

from pdserve.config import resolve_model
from pdserve.security import TlsFiles, WorkerLink, read_secrets
from router.admission import AdmissionLimits
from router.placement import POLICIES
from router.placement.scorers import parse_weights
from router.recovery import Recovery
from router.request import Timeouts


@dataclass(frozen=True)
class RouterConfig:
    host: str
    port: int
    prefill: tuple[str, ...]
    decode: tuple[str, ...]
    model_dir: str  # fallback tokenizer dir (a model whose workers report no readable directory)
    policy: str = "prefix-aware"
    weights: dict[str, float] = field(default_factory=dict)  # prefill scorer weights; {} = the policy's
    state_url: str = "memory://"  # memory:// (embedded) or redis://host:port (shared by router replicas)
    tokenizers: dict[str, str] = field(default_factory=dict)  # served model name → tokenizer dir
    disagg_min_tokens: int = 0  # uncached prompt tokens below which the decode worker prefills locally
    prefill_saturated_waiting: int = 8  # a prefill worker with this many queued requests is saturated
    predict_ttl_s: float = 10.0  # lifetime of the index entries written at placement time
    startup_timeout_s: float = 300.0
    timeouts: Timeouts = field(default_factory=Timeouts)
    recovery: Recovery = field(default_factory=Recovery)
    api_keys: tuple[str, ...] = ()  # clients must send one (Bearer); () = open
    admission: AdmissionLimits = field(default_factory=AdmissionLimits)
    max_body_bytes: int = 8 << 20  # larger request bodies are refused before they are read
    link: WorkerLink = field(default_factory=WorkerLink)  # TLS and token for dialling workers
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        if not self.decode and self.state_url.startswith("memory"):
            raise ValueError("decode: give decode worker addresses, or a shared --state-url workers register in")
        if self.max_body_bytes < 1:
            raise ValueError("max_body_bytes must be ≥ 1")
        if self.policy not in POLICIES:
            raise ValueError(f"policy: unknown {self.policy!r}; choose one of {sorted(POLICIES)}")
        for addr in (*self.prefill, *self.decode):
            host, sep, port = addr.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"worker address {addr!r} is not host:port")


def _addresses(values: list[str]) -> tuple[str, ...]:
    return tuple(a.strip() for v in values for a in v.split(",") if a.strip())


def _env_list(name: str) -> list[str]:
    return [os.environ[name]] if os.environ.get(name) else []


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pdserve router", description="Run the OpenAI-compatible router.")
    env = os.environ.get
    p.add_argument("--host", default=env("PDSERVE_ROUTER_HOST", "127.0.0.1"), help="[PDSERVE_ROUTER_HOST]")
    p.add_argument("--port", type=int, default=int(env("PDSERVE_ROUTER_PORT", "8000")), help="[PDSERVE_ROUTER_PORT]")
    p.add_argument(
        "--prefill",
        action="append",
        default=None,
        metavar="HOST:PORT",
        help="prefill worker address(es), comma-separated or repeated [PDSERVE_PREFILL]",
    )
    p.add_argument(
        "--decode",
        action="append",
        default=None,
        metavar="HOST:PORT",
        help="decode worker address(es), comma-separated or repeated [PDSERVE_DECODE]",
    )
    p.add_argument(
        "--model",
        default=env("PDSERVE_MODEL", ""),
        help="HF model directory for the tokenizer (default: the embedded model) [PDSERVE_MODEL]",
    )
    p.add_argument(
        "--policy",
        default=env("PDSERVE_POLICY", "prefix-aware"),
        choices=sorted(POLICIES),
        help="placement policy [PDSERVE_POLICY]",
    )
    p.add_argument(
        "--startup-timeout",
        type=float,
        default=float(env("PDSERVE_STARTUP_TIMEOUT_S", "300")),
        help="seconds to wait for workers at start-up [PDSERVE_STARTUP_TIMEOUT_S]",
    )
    p.add_argument(
        "--request-timeout",
        type=float,
        default=float(env("PDSERVE_REQUEST_TIMEOUT_S", "600")),
        help="deadline of one request, seconds [PDSERVE_REQUEST_TIMEOUT_S]",
    )
    p.add_argument(
        "--weights",
        default=env("PDSERVE_WEIGHTS", ""),
        help="prefill scorer weights of prefix-aware, e.g. prefix=2,queue=1,kv=0.25,prefill_tokens=1 [PDSERVE_WEIGHTS]",
    )
    p.add_argument(
        "--state-url",
        default=env("PDSERVE_STATE_URL", "memory://"),
        help="worker registry and block index: memory:// (this router only) or redis://host:port (shared by "
        "router replicas; workers register there) [PDSERVE_STATE_URL]",
    )
    p.add_argument(
        "--tokenizer",
        action="append",
        default=[],
        metavar="MODEL=DIR",
        help="tokenizer directory of a served model (default: the directory its workers report); repeatable",
    )
    p.add_argument(
        "--disagg-min-tokens",
        type=int,
        default=int(env("PDSERVE_DISAGG_MIN_TOKENS", "0")),
        help="prefill on the decode worker when fewer prompt tokens than this are uncached there "
        "[PDSERVE_DISAGG_MIN_TOKENS]",
    )
    p.add_argument(
        "--prefill-saturated-waiting",
        type=int,
        default=int(env("PDSERVE_PREFILL_SATURATED_WAITING", "8")),
        help="queued requests at which a prefill worker counts as saturated; all saturated → local prefill "
        "[PDSERVE_PREFILL_SATURATED_WAITING]",
    )
    p.add_argument(
        "--prefill-retries",
        type=int,
        default=int(env("PDSERVE_PREFILL_RETRIES", "1")),
        help="other prefill workers tried after a prefill fails, before the decode worker prefills itself "
        "[PDSERVE_PREFILL_RETRIES]",
    )
    p.add_argument(
        "--decode-retries",
        type=int,
        default=int(env("PDSERVE_DECODE_RETRIES", "1")),
        help="times a request is placed again when its decode worker fails before the first token "
        "[PDSERVE_DECODE_RETRIES]",
    )
    p.add_argument(
        "--migrations",
        type=int,
        default=int(env("PDSERVE_MIGRATIONS", "2")),
        help="times a stream moves to another decode worker when its worker fails mid-generation; 0 = off "
        "[PDSERVE_MIGRATIONS]",
    )
    p.add_argument(
        "--max-inflight",
        type=int,
        default=int(env("PDSERVE_MAX_INFLIGHT", "512")),
        help="requests generating at once; more wait in the queue; 0 = no limit [PDSERVE_MAX_INFLIGHT]",
    )
    p.add_argument(
        "--max-queued",
        type=int,
        default=int(env("PDSERVE_MAX_QUEUED", "1024")),
        help="requests waiting for a slot; past this → 503 with Retry-After [PDSERVE_MAX_QUEUED]",
    )
    p.add_argument(
        "--queue-timeout",
        type=float,
        default=float(env("PDSERVE_QUEUE_TIMEOUT_S", "30")),
        help="seconds a request waits for a slot before 503 [PDSERVE_QUEUE_TIMEOUT_S]",
    )
    p.add_argument(
        "--rate-limit-rpm",
        type=int,
        default=int(env("PDSERVE_RATE_LIMIT_RPM", "0")),
        help="requests per minute per API key (shared across routers through --state-url); 0 = none "
        "[PDSERVE_RATE_LIMIT_RPM]",
    )
    p.add_argument(
        "--rate-limit-tpm",
        type=int,
        default=int(env("PDSERVE_RATE_LIMIT_TPM", "0")),
        help="tokens (prompt + max_tokens, unused ones refunded) per minute per API key; 0 = none "
        "[PDSERVE_RATE_LIMIT_TPM]",
    )
    p.add_argument(
        "--max-body-bytes",
        type=int,
        default=int(env("PDSERVE_MAX_BODY_BYTES", str(8 << 20))),
        help="larger request bodies get 413 before they are read [PDSERVE_MAX_BODY_BYTES]",
    )
    p.add_argument(
        "--api-keys-file",
        default=env("PDSERVE_API_KEYS_FILE", ""),
        help="require Authorization: Bearer <key> on /v1/*, keys one per line (also the comma-separated "
        "PDSERVE_API_KEYS) [PDSERVE_API_KEYS_FILE]",
    )
    p.add_argument(
        "--worker-token-file",
        default=env("PDSERVE_WORKER_TOKEN_FILE", ""),
        help="token sent to workers: the file's first line (or PDSERVE_WORKER_TOKEN) [PDSERVE_WORKER_TOKEN_FILE]",
    )
    for name, what in (
        ("cert", "client certificate"),
        ("key", "its private key"),
        ("ca", "CA that signed the workers'"),
    ):
        p.add_argument(
            f"--worker-tls-{name}",
            default=env(f"PDSERVE_WORKER_TLS_{name.upper()}", ""),
            help=f"dial workers over TLS: PEM {what} [PDSERVE_WORKER_TLS_{name.upper()}]",
        )
    p.add_argument("--log-level", default=env("PDSERVE_LOG_LEVEL", "INFO"), help="[PDSERVE_LOG_LEVEL]")
    return p


def from_args(argv: list[str] | None = None) -> RouterConfig:
    args = parser().parse_args(argv)
    model_dir, _ = resolve_model(args.model, "")
    return RouterConfig(
        host=args.host,
        port=args.port,
        prefill=_addresses(args.prefill if args.prefill is not None else _env_list("PDSERVE_PREFILL")),
        decode=_addresses(args.decode if args.decode is not None else _env_list("PDSERVE_DECODE")),
        model_dir=str(model_dir),
        policy=args.policy,
        weights=parse_weights(args.weights),
        state_url=args.state_url,
        tokenizers=dict(_pair(t) for t in args.tokenizer),
        disagg_min_tokens=args.disagg_min_tokens,
        prefill_saturated_waiting=args.prefill_saturated_waiting,
        startup_timeout_s=args.startup_timeout,
        timeouts=Timeouts(prefill_s=min(300.0, args.request_timeout), request_s=args.request_timeout),
        recovery=Recovery(args.prefill_retries, args.decode_retries, args.migrations),
        api_keys=read_secrets(args.api_keys_file, "PDSERVE_API_KEYS"),
        admission=AdmissionLimits(
            max_inflight=args.max_inflight,
            max_queued=args.max_queued,
            queue_timeout_s=args.queue_timeout,
            requests_per_minute=args.rate_limit_rpm,
            tokens_per_minute=args.rate_limit_tpm,
        ),
        max_body_bytes=args.max_body_bytes,
        link=WorkerLink(
            TlsFiles(args.worker_tls_cert, args.worker_tls_key, args.worker_tls_ca),
            next(iter(read_secrets(args.worker_token_file, "PDSERVE_WORKER_TOKEN")), ""),
        ),
        log_level=args.log_level,
    )


def _pair(item: str) -> tuple[str, str]:
    name, sep, path = item.partition("=")
    if not sep or not name or not path:
        raise ValueError(f"tokenizer: expected MODEL=DIR, got {item!r}")
    return name, path
