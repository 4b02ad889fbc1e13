"""The compose demo's `gpu` profile as plain processes (issue #18 item 5): no Docker needed.

Reads deploy/compose/compose.yaml (with compose's ${VAR:-default} interpolation) and the
Dockerfile's ENTRYPOINT/CMD/ENV of each service's build target, and turns the router and the
`gpu` profile's workers into (argv, env, GPUs). ``plan`` is that reading, unchanged (what
tests/deploy/test_compose_topology.py checks); ``localize`` is what a host without Docker must
substitute, each change listed in ``Plan.substitutions``.

Usage (by deploy/gpu/compose_topology.sh): python3 deploy/gpu/compose_topology.py OUT
    --model-dir DIR --secrets-dir DIR [--engine vllm|sim] [--redis-port PORT]
writes OUT/compose-plan.json (argv, env, GPUs, substitutions), OUT/compose-<service>.log and
OUT/compose-chat.json (the streamed chat completion through the router).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "deploy" / "compose" / "compose.yaml"
DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"
ROLES = ("router", "prefill", "decode")  # the gpu profile's topology, in start order (router last to start)
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass
class Service:
    name: str
    argv: list[str]
    env: dict[str, str]
    gpus: list[str] = field(default_factory=list)  # device_ids compose reserves for it


@dataclass
class Plan:
    services: list[Service]
    substitutions: list[str] = field(default_factory=list)

    def service(self, name: str) -> Service:
        (found,) = [s for s in self.services if s.name == name]
        return found


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ${VAR} / ${VAR:-default} (empty counts as unset) and $$ escapes."""
    text = _VAR.sub(lambda m: env.get(m.group(1)) or m.group(2) or "", text)
    return text.replace("$$", "$")


def load_compose(env: dict[str, str], path: Path = COMPOSE) -> dict[str, Any]:
    return dict(yaml.safe_load(interpolate(path.read_text(), env)))


def dockerfile_stages(path: Path = DOCKERFILE) -> dict[str, dict[str, Any]]:
    """Per build target: its ENTRYPOINT and CMD (exec form) and ENV (later ENV wins)."""
    stages: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] = {}
    text = re.sub(r"\\\n", " ", path.read_text())  # join continued lines
    for line in text.splitlines():
        word, _, rest = line.strip().partition(" ")
        if word == "FROM":
            target = rest.split(" AS ")[-1].strip() if " AS " in rest else rest
            current = stages.setdefault(target, {"entrypoint": [], "cmd": [], "env": {}})
        elif word in ("ENTRYPOINT", "CMD") and current:
            current[word.lower()] = json.loads(rest)
        elif word == "ENV" and current:
            current["env"].update(dict(kv.split("=", 1) for kv in shlex.split(rest)))
    return stages


def plan(env: dict[str, str]) -> Plan:
    """The router and the gpu profile's workers exactly as compose + the Dockerfile define them."""
    compose = load_compose(env)
    stages = dockerfile_stages()
    out = []
    for name in ROLES:
        svc = compose["services"][name]
        if name != "router" and "gpu" not in svc.get("profiles", []):
            raise ValueError(f"compose service {name} is not in the gpu profile")
        stage = stages[svc["build"]["target"]]
        command = svc.get("command", stage["cmd"])
        environment = {**stage["env"], **{k: str(v) for k, v in svc.get("environment", {}).items()}}
        devices = svc.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        gpus = [str(g) for d in devices for g in d.get("device_ids", [])]
        out.append(Service(name, [*svc.get("entrypoint", stage["entrypoint"]), *command], environment, gpus))
    return Plan(out)


def localize(p: Plan, engine: str, model_dir: Path, secrets_dir: Path, redis_port: int | None) -> Plan:
    """What a host without Docker substitutes; every change is recorded."""
    subs = p.substitutions
    hosts = {"router", "prefill", "decode", "redis"}
    for s in p.services:
        s.argv = _local_argv(s.argv)
        for key, value in list(s.env.items()):
            new = value.replace("/models/model", str(model_dir)).replace("/run/pdserve-secrets", str(secrets_dir))
            for host in hosts:  # compose's service names resolve to this host
                new = re.sub(rf"(^|//){host}(?=:\d|$)", r"\g<1>127.0.0.1", new)
            if redis_port is not None:  # compose's Redis serves TLS only (rediss://)
                new = re.sub(r"^(rediss?)://127\.0\.0\.1:6379/", rf"\g<1>://127.0.0.1:{redis_port}/", new)
            s.env[key] = "127.0.0.1" if new == "0.0.0.0" else new
        if s.gpus:
            s.env["CUDA_VISIBLE_DEVICES"] = ",".join(s.gpus)
        if redis_port is None:
            for key in (
                "PDSERVE_STATE_URL",
                "PDSERVE_STATE_PASSWORD_FILE",
                "PDSERVE_STATE_TLS_CA",
                "PDSERVE_REGISTRY_SECRET_FILE",
            ):
                s.env.pop(key, None)
    subs.append(
        "`pdserve ROLE` / `python -m router` (the images' ENTRYPOINT) → this Python's `-m pdserve ROLE` / `-m router`"
    )
    subs.append(f"/models/model (the model volume) → {model_dir}")
    subs.append(f"/run/pdserve-secrets (the secrets volume, secrets-init) → {secrets_dir}")
    subs.append("service names router/prefill/decode/redis (the compose network) → 127.0.0.1")
    subs.append("listen on 0.0.0.0 (Dockerfile ENV PDSERVE_HOST / PDSERVE_ROUTER_HOST) → 127.0.0.1")
    subs.append("GPU reservations (deploy.resources device_ids) → CUDA_VISIBLE_DEVICES per process")
    if redis_port is not None:
        subs.append(
            f"the redis service → a local redis-server with compose's flags (TLS only) on 127.0.0.1:{redis_port}"
        )
    else:
        subs.append(
            "no redis-server on this host: workers do not register; the router gets the static lists "
            "--prefill 127.0.0.1:50051 --decode 127.0.0.1:50052 (PDSERVE_STATE_* and secrets dropped)"
        )
        p.service("router").argv += ["--prefill", "127.0.0.1:50051", "--decode", "127.0.0.1:50052"]
    if engine == "sim":
        for s in (p.service("prefill"), p.service("decode")):
            s.env["PDSERVE_ENGINE"] = "sim"
            s.argv += ["--profile", "llama-3.1-8b-h200", "--engine-arg", "vocab_size=128256"]
            s.env.pop("CUDA_VISIBLE_DEVICES", None)
        subs.append(
            "ENGINE=sim: PDSERVE_ENGINE=sim and `--profile llama-3.1-8b-h200` (as compose's sim profile) "
            "on both workers, no GPU"
        )
    else:
        for s in (p.service("prefill"), p.service("decode")):
            s.argv += ["--engine-arg", "load_format=dummy"]
        subs.append("model without weights: `--engine-arg load_format=dummy` on both workers (random weights)")
    return p


def _local_argv(argv: list[str]) -> list[str]:
    """The image's interpreter and console script → this Python (pdserve is not installed there)."""
    if argv[0] == "pdserve":
        return [sys.executable, "-m", "pdserve", *argv[1:]]
    if argv[0] in ("python", "python3"):
        return [sys.executable, *argv[1:]]
    raise ValueError(f"unexpected entrypoint {argv[0]!r}: teach deploy/gpu/compose_topology.py about it")


def launch(p: Plan, out: Path, ready_s: float) -> dict[str, Any]:
    """Start the services (workers first), wait for the router, stream one chat completion
    through it; every process started here is terminated on the way out."""
    _check_ports(p)
    procs: list[subprocess.Popen[bytes]] = []
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so ``finally`` runs on the script's kill
    try:
        for s in reversed(p.services):  # decode, prefill, router
            log = (out / f"compose-{s.name}.log").open("wb")
            procs.append(subprocess.Popen(s.argv, env={**os.environ, **s.env}, stdout=log, stderr=subprocess.STDOUT))
        url = f"http://127.0.0.1:{p.service('router').env.get('PDSERVE_ROUTER_PORT', '8000')}"
        model = _wait_model(url, procs, ready_s)
        result: dict[str, Any] = {"url": url, "model": model, "chat": _stream_chat(url, model)}
        metrics = httpx.get(f"{url}/metrics", timeout=10).text.splitlines()
        result["disagg_decisions"] = [m for m in metrics if m.startswith("pdserve_router_disagg_decisions")]
        if shutil.which("nvidia-smi"):  # which process holds which GPU, while they run
            query = ["nvidia-smi", "--query-compute-apps=pid,used_memory,gpu_uuid", "--format=csv"]
            result["gpu_apps"] = subprocess.run(query, capture_output=True, text=True).stdout
        return result
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                proc.kill()


def _check_ports(p: Plan) -> None:
    """Compose's fixed ports must be free here: another server on 8000 would answer for the router."""
    ports = {int(p.service("router").env.get("PDSERVE_ROUTER_PORT", "8000"))}
    for s in p.services:
        ports |= {int(s.env[k]) for k in ("PDSERVE_PORT", "PDSERVE_KV_PORT", "PDSERVE_METRICS_PORT") if k in s.env}
        if "PDSERVE_KV_EVENTS_PORT" in s.env:
            ports |= {int(s.env["PDSERVE_KV_EVENTS_PORT"]), int(s.env["PDSERVE_KV_EVENTS_PORT"]) + 1}
    for port in sorted(ports):
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: TIME-WAIT is no owner
            try:
                sock.bind(("127.0.0.1", port))
            except OSError as exc:
                raise SystemExit(f"port {port} (compose.yaml's) is taken on this host: {exc}") from None


def _wait_model(url: str, procs: list[subprocess.Popen[bytes]], ready_s: float) -> str:
    end = time.monotonic() + ready_s
    while time.monotonic() < end:
        dead = [proc.args for proc in procs if proc.poll() is not None]
        if dead:
            raise RuntimeError(f"exited before the router was ready: {dead}")
        try:
            data = httpx.get(f"{url}/v1/models", timeout=3).json()["data"]
            if data:
                return str(data[0]["id"])
        except (httpx.HTTPError, KeyError, ValueError):
            pass
        time.sleep(2)
    raise RuntimeError(f"router not ready in {ready_s:.0f} s")


def _stream_chat(url: str, model: str) -> dict[str, Any]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Say hello from the compose topology."}],
        "max_tokens": 32,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    chunks: list[dict[str, Any]] = []
    start = time.perf_counter()
    first = 0.0
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=300) as resp:
        status = resp.status_code
        error = "" if status == 200 else resp.read().decode(errors="replace")
        for line in resp.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line[6:]))
                first = first or time.perf_counter() - start
    choices = [c for chunk in chunks for c in chunk.get("choices", [])]
    return {
        "status": status,
        "error": error,
        "chunks": len(chunks),
        "first_chunk_s": first,
        "total_s": time.perf_counter() - start,
        "text": "".join((c.get("delta") or {}).get("content") or "" for c in choices),
        "finish_reason": next((c["finish_reason"] for c in reversed(choices) if c.get("finish_reason")), None),
        "usage": next((chunk["usage"] for chunk in reversed(chunks) if chunk.get("usage")), None),
        "first_chunks": chunks[:3],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for the plan, the logs and the result")
    parser.add_argument("--engine", default="vllm", choices=["vllm", "sim"])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--secrets-dir", type=Path, required=True)
    parser.add_argument("--redis-port", type=int, help="a redis-server started as compose's; none: static lists")
    parser.add_argument("--ready-s", type=float, default=900)
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k.startswith("PDSERVE_")}
    p = localize(plan(env), args.engine, args.model_dir, args.secrets_dir, args.redis_port)
    (args.out / "compose-plan.json").write_text(json.dumps(asdict(p), indent=1))
    result = {"engine": args.engine, "substitutions": p.substitutions, **launch(p, args.out, args.ready_s)}
    (args.out / "compose-chat.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("engine", "model")} | {"chat": result["chat"]["text"]}, indent=1))
    if result["chat"]["status"] != 200 or not result["chat"]["chunks"]:
        raise SystemExit(f"the streamed chat completion failed: {result['chat']['error'] or 'no chunks'}")


if __name__ == "__main__":
    main()
