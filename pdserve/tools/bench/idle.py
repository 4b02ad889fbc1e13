"""Idle CPU of a started P/D pair, with and without pdserve's NIXL progress-thread delay.

Starts ``pdserve up`` (one prefill and one decode worker, NIXL) twice on the same model:
as shipped, and with ``--engine-arg worker_extension_cls=`` (vLLM's default, no
extension: NIXL's progress thread polls with nixl 1.5's hard-coded 0 µs delay). Once
the cluster is up and has settled, it sums the CPU time of each worker's process tree
(vLLM engine cores included) over ``--seconds``, then sends one completion and checks
that the decode worker pulled its KV over NIXL.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

from pdserve.config import resolve_model
from pdserve.tools.bench.results import machine
from pdserve.tools.model import model_or_default
from pdserve.tools.ports import UpPorts
from pdserve.tools.up import wait_ready

MODES = {"nixl-delay": (), "no-delay": ("--worker-arg=--engine-arg=worker_extension_cls=",)}


def add_parser(sub: Any) -> None:
    p = sub.add_parser("idle-cpu", help="idle CPU of a P/D pair, with and without the NIXL progress delay")
    p.add_argument("--model", default="", help="HF model directory (default: the embedded model)")
    p.add_argument("--seconds", type=float, default=10.0, help="how long the idle CPU is summed")
    p.add_argument("--settle", type=float, default=5.0, help="seconds after the ready line before measuring")
    p.add_argument("--out", default="bench-out/idle_cpu.json", help="JSON results file")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    model_dir, _ = resolve_model(*model_or_default(args.model, ""))
    results: dict[str, Any] = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv)}
    results["modes"] = {mode: _run_mode(mode, model_dir, args) for mode in MODES}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(markdown(results))
    return 0


def _run_mode(mode: str, model_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    ports = UpPorts.free()
    cmd = [sys.executable, "-m", "pdserve", "up", "--model", str(model_dir), *ports.up_args(), *MODES[mode]]
    log = Path(args.out).with_suffix(f".{mode}.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        model = wait_ready(ports.url, proc, log)
        time.sleep(args.settle)
        cpu = _idle_cpu(proc.pid, args.seconds)
        metrics = ports.metrics_urls()[1]
        pulls = _kv_pulls(metrics)
        prompt = f"{mode} {time.time()} " + "hello " * 200  # no prefix the decode engine holds already
        body = {"model": model, "prompt": prompt, "max_tokens": 8, "temperature": 0}
        reply = httpx.post(f"{ports.url}/v1/completions", json=body, timeout=300)
        return {**cpu, "status": reply.status_code, "kv_pulls": _pulled_since(metrics, pulls)}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)


def _idle_cpu(root: int, seconds: float) -> dict[str, float]:
    """% of one core each worker's process tree used over ``seconds``."""
    trees = {role: _tree(root, f"{role}_worker") for role in ("prefill", "decode")}
    before = {role: _cpu_s(procs) for role, procs in trees.items()}
    time.sleep(seconds)
    used = {f"{role}_pct": round(100 * (_cpu_s(procs) - before[role]) / seconds, 1) for role, procs in trees.items()}
    return {**used, "pair_pct": round(sum(used.values()), 1)}


def _tree(root: int, module: str) -> list[psutil.Process]:
    workers = [p for p in psutil.Process(root).children(recursive=True) if module in " ".join(p.cmdline())]
    return [q for w in workers for q in (w, *w.children(recursive=True))]


def _cpu_s(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            times = p.cpu_times()
        except psutil.NoSuchProcess:  # a short-lived helper process; the engines stay
            continue
        total += times.user + times.system
    return total


def _pulled_since(metrics_url: str, before: float, wait_s: float = 15.0) -> float:
    """KV pulls counted since ``before``; the engine reports them with its step stats,
    so a count may land a moment after the response."""
    deadline = time.monotonic() + wait_s
    while (pulled := _kv_pulls(metrics_url) - before) == 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    return pulled


def _kv_pulls(metrics_url: str) -> float:
    text = httpx.get(metrics_url, timeout=60).text
    for family in text_string_to_metric_families(text):
        if family.name == "pdserve_worker_kv_transfers":
            return sum(s.value for s in family.samples if s.name.endswith("_total"))
    raise RuntimeError(f"{metrics_url} has no pdserve_worker_kv_transfers")


def markdown(results: dict[str, Any]) -> str:
    rows = [
        "| NIXL progress thread | prefill worker | decode worker | P+D pair | request | KV pulls |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for mode, r in results["modes"].items():
        rows.append(
            f"| {mode} | {r['prefill_pct']} % | {r['decode_pct']} % | {r['pair_pct']} % | {r['status']} |"
            f" {r['kv_pulls']:g} |"
        )
    return "\n".join(rows)
