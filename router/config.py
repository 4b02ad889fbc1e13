"""Router configuration: typed, frozen, built once; each field is also its flag (``pdserve.flags``)."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field

from pdserve.config import model_path
from pdserve.flags import Flag, add_flags, build, flag, group
from pdserve.security import TlsFiles, WorkerLink, read_secrets
from pdserve.state import StateAccess, check_namespace
from router.admission import AdmissionLimits
from router.api.size import PROMPT_CHARS_PER_TOKEN
from router.chat import CONTENT_FORMATS, TOOL_STRICT_LEVELS, ChatOptions, load_template
from router.outliers import OutlierPolicy
from router.parsers.registry import REASONING_PARSERS, TOOL_PARSERS
from router.placement import POLICIES
from router.placement.deciders import DECIDERS, DeciderOptions
from router.placement.scorers import parse_weights
from router.recovery import Recovery
from router.request import Timeouts
from router.tenants import Tenants

PROG = "pdserve router"


def _pairs(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"expected MODEL=DIR, got {item!r}")
        out[name] = path
    return out


def _workers(role: str) -> tuple[str, ...]:
    return flag(
        (),
        env=f"PDSERVE_{role.upper()}",
        repeat=True,
        metavar="HOST:PORT",
        help=f"{role} worker address(es), comma-separated or repeated",
    )


MAX_BODY_BYTES = 8 << 20  # the default request body limit (HTTP 413 above it)


@dataclass(frozen=True)
class RouterConfig:
    host: str = flag("127.0.0.1", env="PDSERVE_ROUTER_HOST", help="address to listen on")
    port: int = flag(8000, env="PDSERVE_ROUTER_PORT", help="HTTP port")
    prefill: tuple[str, ...] = _workers("prefill")
    decode: tuple[str, ...] = _workers("decode")
    # The tokenizer of a model whose workers report no readable directory.
    model_dir: str = flag(
        "",
        name="--model",
        env="PDSERVE_MODEL",
        parse=model_path,
        help="HF model directory for the tokenizer of models without a --tokenizer (and whose workers "
        "report no directory this router can read)",
    )
    generation_config: str = flag(
        "auto",
        env="PDSERVE_GENERATION_CONFIG",
        help="sampling defaults for fields a request leaves unset, as vllm serve's flag: auto (the model's "
        "generation_config.json), vllm (vLLM's neutral values) or a directory holding a generation_config.json",
    )
    chat_template: str = flag(
        "",
        env="PDSERVE_CHAT_TEMPLATE",
        help="chat template for every model instead of its own: a file or the template itself (vllm serve's flag)",
    )
    trust_request_chat_template: bool = flag(
        False,
        env="PDSERVE_TRUST_REQUEST_CHAT_TEMPLATE",
        help="let requests bring their own chat_template (refused with a 400 otherwise, as vllm serve)",
    )
    chat_template_content_format: str = flag(
        "auto",
        env="PDSERVE_CHAT_TEMPLATE_CONTENT_FORMAT",
        choices=CONTENT_FORMATS,
        help="message content as the template gets it: string (text parts joined), openai (a list of parts), "
        "or auto (openai if the template loops over content), as vllm serve's flag",
    )
    reasoning_parser: str = flag(
        "",
        env="PDSERVE_REASONING_PARSER",
        help="split chat output into reasoning and content with this parser (vllm serve's names: "
        "deepseek_r1, qwen3); none by default",
    )
    tool_call_parser: str = flag(
        "",
        env="PDSERVE_TOOL_CALL_PARSER",
        help="find tool calls in chat output with this parser (vllm serve's names: hermes, qwen3_json, "
        "llama3_json, mistral, pythonic); needed for tool_choice auto, required or a named tool",
    )
    enable_auto_tool_choice: bool = flag(
        False,
        env="PDSERVE_ENABLE_AUTO_TOOL_CHOICE",
        help="let tool_choice auto (the default with tools) run the parser",
    )
    tool_strict_level: str = flag(
        "auto",
        env="PDSERVE_TOOL_STRICT_LEVEL",
        choices=TOOL_STRICT_LEVELS,
        help="as vllm serve's: function constrains the call syntax of every request with tools, parameter "
        "also each tool's arguments; auto: forced choices and strict tools only (hermes, llama3_json)",
    )
    policy: str = flag("prefix-aware", env="PDSERVE_POLICY", choices=tuple(sorted(POLICIES)), help="placement policy")
    weights: dict[str, float] = flag(
        default_factory=dict,
        env="PDSERVE_WEIGHTS",
        parse=parse_weights,
        fmt=lambda w: ",".join(f"{k}={v:g}" for k, v in w.items()) or "the policy's",
        help="prefill scorer weights of prefix-aware, e.g. prefix=2,queue=1,kv=0.25,prefill_tokens=1",
    )
    # memory:// (embedded) or redis://host:port (shared by router replicas)
    state_url: str = flag(
        "memory://",
        env="PDSERVE_STATE_URL",
        help="worker registry and block index: memory:// (this router only) or redis://host:port (shared by "
        "router replicas; workers register there; rediss:// for TLS)",
    )
    state_namespace: str = flag(
        "pdserve",
        env="PDSERVE_STATE_NAMESPACE",
        help="prefix of every key this cluster keeps in --state-url: clusters sharing one Redis database "
        "see each other's workers only if they share it (the workers' flag must match)",
    )
    state_access: StateAccess = group("shared state access", default_factory=StateAccess)
    tokenizers: dict[str, str] = flag(
        default_factory=dict,
        name="--tokenizer",
        repeat=True,
        parse=_pairs,
        metavar="MODEL=DIR",
        help="tokenizer directory of a served model (default: the directory its workers report); repeatable",
    )
    disagg_decider: str = flag(
        "threshold",
        env="PDSERVE_DISAGG_DECIDER",
        choices=tuple(sorted(DECIDERS)),
        help="remote or local prefill per request: threshold (the two flags below), priced (predicted TTFT "
        "of both, KV transfer priced per worker pair, learned online; threshold until it has data), "
        "always-remote, always-local",
    )
    disagg_stall_weight: float = flag(
        1.0,
        env="PDSERVE_DISAGG_STALL_WEIGHT",
        help="priced: seconds charged to a local prefill per second it delays each stream its decode worker runs",
    )
    disagg_probe_s: float = flag(
        5.0,
        env="PDSERVE_DISAGG_PROBE_S",
        help="priced: a worker pair priced out gets one remote request after this many seconds unmeasured",
    )
    disagg_ttft_target_s: float = flag(
        0.0,
        name="--disagg-ttft-target",
        env="PDSERVE_DISAGG_TTFT_TARGET_S",
        help="priced: the TTFT SLO, seconds; a request predicted to miss it both ways goes remote, sparing the "
        "decode worker's streams; 0 = none",
    )
    disagg_tpot_target_s: float = flag(
        0.0,
        name="--disagg-tpot-target",
        env="PDSERVE_DISAGG_TPOT_TARGET_S",
        help="priced: the TPOT SLO, seconds per output token (with --disagg-ttft-target): the choice counts "
        "requests meeting the SLO, this one's and the decode worker's streams a local prefill would stall "
        "past it; 0 = none",
    )
    disagg_min_tokens: int = flag(
        0,
        env="PDSERVE_DISAGG_MIN_TOKENS",
        help="prefill on the decode worker when fewer prompt tokens than this are uncached there",
    )
    prefill_saturated_waiting: int = flag(
        8,
        env="PDSERVE_PREFILL_SATURATED_WAITING",
        help="queued requests at which a prefill worker counts as saturated; all saturated → local prefill",
    )
    predict_ttl_s: float = 10.0  # lifetime of the index entries written at placement time
    startup_timeout_s: float = flag(
        300.0,
        name="--startup-timeout",
        env="PDSERVE_STARTUP_TIMEOUT_S",
        help="seconds to wait for workers at start-up",
    )
    timeouts: Timeouts = group(
        "deadlines",
        Timeouts,
        default_factory=Timeouts,
        request_s=Flag(
            name="--request-timeout", env="PDSERVE_REQUEST_TIMEOUT_S", help="deadline of one request, seconds"
        ),
        prefill_s=Flag(
            name="--prefill-timeout",
            env="PDSERVE_PREFILL_TIMEOUT_S",
            help="seconds one prefill attempt may take before it is retried elsewhere (never past the request's)",
        ),
        first_token_s=Flag(
            name="--first-token-timeout",
            env="PDSERVE_FIRST_TOKEN_TIMEOUT_S",
            help="seconds a decode attempt may take to its first token before it is placed again",
        ),
        stall_s=Flag(
            name="--stall-timeout",
            env="PDSERVE_STALL_TIMEOUT_S",
            help="seconds a decode stream may go without a token before it migrates to another worker",
        ),
    )
    recovery: Recovery = group(
        "recovery",
        Recovery,
        default_factory=Recovery,
        prefill_retries=Flag(
            env="PDSERVE_PREFILL_RETRIES",
            help="other prefill workers tried after a prefill fails, before the decode worker prefills itself",
        ),
        decode_retries=Flag(
            env="PDSERVE_DECODE_RETRIES",
            help="times a request is placed again when its decode worker fails before the first token",
        ),
        migrations=Flag(
            env="PDSERVE_MIGRATIONS",
            help="times a stream moves to another decode worker when its worker fails mid-generation; 0 = off",
        ),
        retry_budget=Flag(
            env="PDSERVE_RETRY_BUDGET",
            help="retries (of every kind) allowed per request over the last 10 s, plus --min-retries; "
            "past it a failure goes to the client",
        ),
        min_retries=Flag(env="PDSERVE_MIN_RETRIES", help="retries allowed in any 10 s whatever the request count"),
    )
    outliers: OutlierPolicy = group(
        "outlier ejection",
        OutlierPolicy,
        default_factory=OutlierPolicy,
        max_errors=Flag(
            name="--eject-after-errors",
            env="PDSERVE_EJECT_AFTER_ERRORS",
            help="failed requests in a row that eject a worker",
        ),
        max_timeouts=Flag(
            name="--eject-after-timeouts",
            env="PDSERVE_EJECT_AFTER_TIMEOUTS",
            help="timeouts in a row (attempt timeouts, Load polls) that eject a worker",
        ),
        base_s=Flag(
            name="--ejection-time",
            env="PDSERVE_EJECTION_TIME_S",
            help="seconds of a first ejection; the n-th lasts n times this",
        ),
        max_s=Flag(name="--max-ejection-time", env="PDSERVE_MAX_EJECTION_TIME_S", help="longest ejection, seconds"),
        max_share=Flag(
            name="--max-ejected-share",
            env="PDSERVE_MAX_EJECTED_SHARE",
            help="share of a model's prefill or decode workers that may be ejected at once (at least one)",
        ),
        probe_timeout_s=Flag(
            name="--probe-timeout",
            env="PDSERVE_PROBE_TIMEOUT_S",
            help="seconds the one-token probe of an ejected worker may take",
        ),
    )
    admission: AdmissionLimits = group(
        "admission",
        AdmissionLimits,
        default_factory=AdmissionLimits,
        max_inflight=Flag(
            env="PDSERVE_MAX_INFLIGHT", help="requests generating at once; more wait in the queue; 0 = no limit"
        ),
        max_inflight_per_key=Flag(
            env="PDSERVE_MAX_INFLIGHT_PER_KEY",
            help="requests of one API key generating at once; more wait their turn; 0 = no limit",
        ),
        max_queued=Flag(env="PDSERVE_MAX_QUEUED", help="requests waiting for a slot; past this → 503 with Retry-After"),
        queue_timeout_s=Flag(
            name="--queue-timeout", env="PDSERVE_QUEUE_TIMEOUT_S", help="seconds a request waits for a slot before 503"
        ),
        requests_per_minute=Flag(
            name="--rate-limit-rpm",
            env="PDSERVE_RATE_LIMIT_RPM",
            help="requests per minute per API key (shared across routers through --state-url); 0 = none",
        ),
        tokens_per_minute=Flag(
            name="--rate-limit-tpm",
            env="PDSERVE_RATE_LIMIT_TPM",
            help="tokens (prompt + max_tokens, unused ones refunded) per minute per API key; 0 = none",
        ),
    )
    workers: int = flag(
        1,
        env="PDSERVE_ROUTER_WORKERS",
        help="router processes serving the port (SO_REUSEPORT), each the whole router on its own core; share "
        "placement state through a redis:// --state-url (with memory:// each follows the workers' KV events itself)",
    )
    keep_alive_s: int = flag(
        75,
        env="PDSERVE_KEEP_ALIVE_S",
        help="seconds an idle client connection is kept open; longer than clients keep idle connections "
        "(httpx and the openai SDK: 5 s), so the server never closes one as a client reuses it",
    )
    max_body_bytes: int = flag(
        MAX_BODY_BYTES, env="PDSERVE_MAX_BODY_BYTES", help="larger request bodies get 413 before they are read"
    )
    prompt_chars_per_token: int = flag(
        PROMPT_CHARS_PER_TOKEN,
        env="PDSERVE_PROMPT_CHARS_PER_TOKEN",
        help="a prompt with more characters than this x the model's context (max_model_len) gets a 400 "
        "before it is templated or tokenized",
    )
    api_keys_file: str = flag(
        "",
        env="PDSERVE_API_KEYS_FILE",
        help="require Authorization: Bearer <key> on /v1/*, keys one per line, each optionally followed by "
        "cache_salt=SALT (the key's prefix-cache salt); also the comma-separated PDSERVE_API_KEYS",
    )
    cache_salt_per_key: bool = flag(
        False,
        env="PDSERVE_CACHE_SALT_PER_KEY",
        help="salt every API key's requests with a salt of its own (keys with a cache_salt= keep theirs): "
        "no tenant shares prefix-cache blocks with another",
    )
    worker_token_file: str = flag(
        "",
        env="PDSERVE_WORKER_TOKEN_FILE",
        help="token sent to workers: the file's first line (or PDSERVE_WORKER_TOKEN)",
    )
    registry_secret_file: str = flag(
        "",
        env="PDSERVE_REGISTRY_SECRET_FILE",
        help="dial only registered workers whose record one of these secrets signed (one per line; also the "
        "comma-separated PDSERVE_REGISTRY_SECRET); none: every valid record is trusted (local development)",
    )
    worker_tls_cert: str = flag("", env="PDSERVE_WORKER_TLS_CERT", help="dial workers over TLS: PEM client certificate")
    worker_tls_key: str = flag("", env="PDSERVE_WORKER_TLS_KEY", help="dial workers over TLS: PEM its private key")
    worker_tls_ca: str = flag(
        "", env="PDSERVE_WORKER_TLS_CA", help="dial workers over TLS: PEM CA that signed the workers'"
    )
    log_level: str = flag("INFO", env="PDSERVE_LOG_LEVEL", help="logging level")
    # Read from the files above (and their variables) by ``with_secrets``.
    tenants: Tenants = field(default_factory=Tenants)  # API keys and their cache salts
    link: WorkerLink = field(default_factory=WorkerLink)  # TLS and token for dialling workers
    registry_secrets: tuple[str, ...] = ()  # verify registry records with these; () = trust valid ones
    state_password: str = ""  # read from ``state_access.password_file`` (or its variable)

    def __post_init__(self) -> None:
        if not self.decode and self.state_url.startswith("memory"):
            raise ValueError("decode: give decode worker addresses, or a shared --state-url workers register in")
        check_namespace(self.state_namespace)
        _ = self.state_tls  # ValueError naming the flag: a file missing, or TLS files without rediss://
        if self.workers < 1:
            raise ValueError("workers must be ≥ 1")
        limits = self.admission.requests_per_minute or self.admission.tokens_per_minute
        if self.workers > 1 and limits and self.state_url.startswith("memory"):
            raise ValueError(
                "workers: per-minute rate limits with memory:// state would count in each process (N times the "
                "limit); give a redis:// --state-url, which the processes share"
            )
        if self.max_body_bytes < 1:
            raise ValueError("max_body_bytes must be ≥ 1")
        if self.prompt_chars_per_token < 1:
            raise ValueError("prompt_chars_per_token must be ≥ 1")
        if not self.keep_alive_s > 0:
            raise ValueError("keep_alive_s must be > 0")
        if self.chat_template_content_format not in CONTENT_FORMATS:
            raise ValueError(f"chat_template_content_format: choose one of {list(CONTENT_FORMATS)}")
        load_template(self.chat_template)  # ValueError naming a template that is neither file nor text
        if self.reasoning_parser and self.reasoning_parser not in REASONING_PARSERS:
            raise ValueError(f"reasoning_parser: choose one of {sorted(REASONING_PARSERS)}")
        if self.tool_call_parser and self.tool_call_parser not in TOOL_PARSERS:
            raise ValueError(f"tool_call_parser: choose one of {sorted(TOOL_PARSERS)}")
        if self.enable_auto_tool_choice and not self.tool_call_parser:
            raise ValueError("enable_auto_tool_choice: needs --tool-call-parser")
        if self.policy not in POLICIES:
            raise ValueError(f"policy: unknown {self.policy!r}; choose one of {sorted(POLICIES)}")
        if self.disagg_decider not in DECIDERS:
            raise ValueError(f"disagg_decider: unknown {self.disagg_decider!r}; choose one of {sorted(DECIDERS)}")
        if self.disagg_stall_weight < 0 or not self.disagg_probe_s > 0 or self.disagg_ttft_target_s < 0:
            raise ValueError("disagg_stall_weight and disagg_ttft_target_s must be >= 0, disagg_probe_s > 0")
        if self.disagg_tpot_target_s < 0 or (self.disagg_tpot_target_s and not self.disagg_ttft_target_s):
            raise ValueError("disagg_tpot_target_s must be >= 0 and needs disagg_ttft_target_s (the SLO is both)")
        for addr in (*self.prefill, *self.decode):
            host, sep, port = addr.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"worker address {addr!r} is not host:port")

    @property
    def state_tls(self) -> TlsFiles:
        return self.state_access.tls(self.state_url)

    @property
    def chat(self) -> ChatOptions:
        return ChatOptions(
            load_template(self.chat_template),
            self.trust_request_chat_template,
            self.chat_template_content_format,
            self.reasoning_parser,
            self.tool_call_parser,
            self.enable_auto_tool_choice,
            self.tool_strict_level,
        )

    @property
    def decider_options(self) -> DeciderOptions:
        return DeciderOptions(
            self.disagg_min_tokens,
            self.prefill_saturated_waiting,
            self.disagg_stall_weight,
            self.disagg_probe_s,
            self.disagg_ttft_target_s,
            self.disagg_tpot_target_s,
        )

    def with_secrets(self) -> RouterConfig:
        """This config with API keys and the worker link read from their files and variables."""
        tls = TlsFiles(self.worker_tls_cert, self.worker_tls_key, self.worker_tls_ca)
        token = next(iter(read_secrets(self.worker_token_file, "PDSERVE_WORKER_TOKEN")), "")
        entries = read_secrets(self.api_keys_file, "PDSERVE_API_KEYS")
        return dataclasses.replace(
            self,
            tenants=Tenants.parse(entries, self.cache_salt_per_key),
            link=WorkerLink(tls, token),
            registry_secrets=read_secrets(self.registry_secret_file, "PDSERVE_REGISTRY_SECRET"),
            state_password=self.state_access.password(),
        )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Run the OpenAI-compatible router.")
    add_flags(p, RouterConfig)
    return p


def from_args(argv: list[str] | None = None) -> RouterConfig:
    """The config from flags and env; ``ValueError`` naming the field when a value is bad."""
    cfg = build(RouterConfig, parser().parse_args(argv)).with_secrets()
    # A prefill RPC gets its own deadline, never longer than the whole request's.
    prefill_s = min(cfg.timeouts.prefill_s, cfg.timeouts.request_s)
    return dataclasses.replace(cfg, timeouts=dataclasses.replace(cfg.timeouts, prefill_s=prefill_s))
