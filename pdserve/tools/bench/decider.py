"""``pdserve bench compare decider``: the disaggregation deciders over a load sweep.

One simulated fleet shape (``--prefill`` + ``--decode`` gRPC sim workers behind
pdserve's router), per KV-path profile (``fast``: llama-3.1-8b-h200, NVLink-class
68 GB/s; ``slow``: llama-3.1-8b-h200-tcp, DESIGN §8's 0.4 GB/s), per rate: the same
prompts and Poisson arrivals for ``always-remote``, ``always-local`` and ``priced``, a
fresh fleet each, after ``--warmup`` sequential requests (not measured). Reports goodput
under the SLO, the share of remote prefills, and the router's handover (prefill done →
first decode token) against the decode workers' raw transfer time (their Load counters).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
from prometheus_client.parser import text_string_to_metric_families

from pdserve.tools.bench import workloads
from pdserve.tools.bench.report import Slo, save_figure, summarize, write_json
from pdserve.tools.bench.results import machine, output_and_slo
from pdserve.tools.bench.run import drive, int_range
from pdserve.tools.fleet import start_router, start_sim_worker
from pdserve.tools.model import model_from_env
from pdserve.tools.procs import Procs
from pdserve.v1 import worker_pb2 as pb
from pdserve.v1 import worker_pb2_grpc as pb_grpc

MODEL = "sim"
BLOCK = 128
DECIDERS = ("always-remote", "always-local", "priced")
PROFILES = {"fast": "llama-3.1-8b-h200", "slow": "llama-3.1-8b-h200-tcp"}


def _fleet(procs: Procs, args: argparse.Namespace, profile: str, decider: str) -> tuple[str, list[str]]:
    """The workers and a router with ``decider`` (``--ttft-target``: told the run's TTFT SLO)."""
    common = ["--served-model-name", MODEL, "--block-size", str(BLOCK), "--max-model-len", "16384"]
    common += ["--engine-arg", f"profile={profile}"]
    pre = [
        start_sim_worker(procs, "prefill", f"prefill{i}", [*common, "--engine-arg", f"engine_id=prefill{i}"]).address
        for i in range(args.prefill)
    ]
    dec = [start_sim_worker(procs, "decode", f"decode{i}", common).address for i in range(args.decode)]
    flags = ["--policy", "prefix-aware", "--disagg-decider", decider, "--log-level", "WARNING"]
    if args.ttft_target or args.slo_target:
        flags += ["--disagg-ttft-target", str(args.slo_ttft)]
    if args.slo_target:
        flags += ["--disagg-tpot-target", str(args.slo_tpot)]
    return start_router(procs, model_from_env(), pre, dec, flags).address, dec


def _kv_counts(url: str, decode: list[str]) -> dict[str, float]:
    """Counters so far: decisions (router), handover (router), transfers (decode workers' Load)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    keys = ("remote", "local", "handover_s", "handovers", "worker_s", "workers", "transfer_s", "transfers")
    out = dict.fromkeys(keys, 0.0)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "pdserve_router_disagg_decisions_total":
                out["remote" if s.labels["decision"] == "remote" else "local"] += s.value
            elif s.name == "pdserve_router_kv_handover_seconds_sum":
                out["handover_s"] = s.value
            elif s.name == "pdserve_router_kv_handover_seconds_count":
                out["handovers"] = s.value
            elif s.name == "pdserve_router_kv_handover_worker_seconds_sum":
                out["worker_s"] = s.value
            elif s.name == "pdserve_router_kv_handover_worker_seconds_count":
                out["workers"] = s.value
    for addr in decode:
        with grpc.insecure_channel(addr) as channel:
            load = pb_grpc.DecodeWorkerStub(channel).Load(pb.LoadRequest(), timeout=10)
        out["transfers"] += load.kv_transfers
        out["transfer_s"] += load.kv_transfer_seconds
    return out


def _kv_figures(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Of the measured run: remote share, mean handover at the router, mean raw transfer."""
    d = {k: after[k] - before[k] for k in after}
    decisions = d["remote"] + d["local"]
    return {
        "remote_share": d["remote"] / decisions if decisions else 0.0,
        "handover_mean_s": d["handover_s"] / d["handovers"] if d["handovers"] else 0.0,
        "handover_worker_mean_s": d["worker_s"] / d["workers"] if d["workers"] else 0.0,
        "transfer_mean_s": d["transfer_s"] / d["transfers"] if d["transfers"] else 0.0,
    }


def run(args: argparse.Namespace) -> int:
    slo = Slo(args.slo_ttft, args.slo_tpot)
    rates = [float(r) for r in args.rates.split(",")]
    rows: dict[str, dict[str, Any]] = {}
    # One at a time before the measured load: the priced decider's cold start (the threshold
    # decider) learns from them, as it would from a deployment's warm-up (pdserve up).
    warm = workloads.random_lengths(random.Random(-1), args.warmup, (2000, 2000), (4, 4))
    for label, profile in PROFILES.items():
        for rate in rates:
            rng = random.Random(f"{args.seed}-{rate}")  # the same prompts per rate on both profiles
            items = workloads.random_lengths(rng, args.requests, args.prompt_tokens, (args.output_tokens,) * 2)
            for decider in DECIDERS:
                key = f"{label} {decider} @ {rate:g}"
                with Procs(args.out / "logs" / key.replace(" ", "_")) as procs:
                    url, decode = _fleet(procs, args, profile, decider)
                    asyncio.run(drive(url, MODEL, warm, 0.0, 1, progress=False))  # every decider alike
                    before = _kv_counts(url, decode)
                    timings, wall = asyncio.run(drive(url, MODEL, items, rate, 1, seed=1, progress=False))
                    rows[key] = {"profile": label, "decider": decider, "rate": rate}
                    rows[key] |= summarize(timings, wall, slo) | _kv_figures(before, _kv_counts(url, decode))
                print(key, {k: round(rows[key][k], 3) for k in ("goodput_req_s", "remote_share", "ttft_p50_s")})
    meta = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M"), "command": sys.argv}
    write_json(args.out / "decider.json", {**meta, "args": vars(args), "rows": rows})
    text = _table(rows, rates)
    (args.out / "decider.md").write_text(text + "\n")
    _plot(args.out / "decider.png", rows, rates)
    print(f"\n{meta['machine']}, {meta['date']}\n\n{text}\n")
    return 0


def _table(rows: dict[str, dict[str, Any]], rates: list[float]) -> str:
    head = (
        "| profile | rate | goodput remote | goodput local | goodput priced | priced vs best fixed | priced remote % "
    )
    head += "| TTFT p50 priced | ITL p99 priced | handover mean | of it decode worker | raw transfer mean |"
    lines = [head, "|---|" + "---:|" * 11]
    for label in PROFILES:
        for rate in rates:
            r = {d: rows[f"{label} {d} @ {rate:g}"] for d in DECIDERS}
            good = {d: r[d]["goodput_req_s"] for d in DECIDERS}
            best = max(good["always-remote"], good["always-local"])
            ratio = good["priced"] / best if best else 1.0
            p = r["priced"]
            lines.append(
                f"| {label} | {rate:g} | {good['always-remote']:.2f} | {good['always-local']:.2f} | "
                f"{good['priced']:.2f} | {100 * (ratio - 1):+.1f} % | {100 * p['remote_share']:.0f} % | "
                f"{1000 * p['ttft_p50_s']:.0f} ms | {1000 * p['itl_p99_s']:.1f} ms | "
                f"{1000 * p['handover_mean_s']:.1f} ms | {1000 * p.get('handover_worker_mean_s', 0.0):.1f} ms | "
                f"{1000 * p['transfer_mean_s']:.1f} ms |"
            )
    return "\n".join(lines)


def _plot(path: Path, rows: dict[str, dict[str, Any]], rates: list[float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PROFILES), figsize=(5 * len(PROFILES), 4), sharey=True)
    for ax, label in zip(axes, PROFILES, strict=True):
        for decider in DECIDERS:
            ax.plot(rates, [rows[f"{label} {decider} @ {r:g}"]["goodput_req_s"] for r in rates], "o-", label=decider)
        ax.set(title=f"KV path: {label} ({PROFILES[label]})", xlabel="offered req/s", ylabel="goodput req/s")
        ax.grid(alpha=0.3)
    axes[0].legend()
    save_figure(fig, path)


def add_parser(kinds: Any, common: argparse.ArgumentParser) -> None:
    p = kinds.add_parser("decider", parents=[common], help="always-remote vs always-local vs priced, two KV paths")
    p.add_argument("--prefill", type=int, default=2, help="sim prefill workers")
    p.add_argument("--decode", type=int, default=2, help="sim decode workers")
    p.add_argument("--requests", type=int, default=60, help="requests per rate")
    p.add_argument("--warmup", type=int, default=8, help="sequential requests before each measured run")
    p.add_argument("--ttft-target", action="store_true", help="give the routers --disagg-ttft-target = --slo-ttft")
    p.add_argument(
        "--slo-target",
        action="store_true",
        help="give the routers the whole SLO: --disagg-ttft-target = --slo-ttft, --disagg-tpot-target = --slo-tpot",
    )
    p.add_argument("--prompt-tokens", type=int_range, default=(500, 6000))
    p.add_argument("--rates", default="4,8,12,16")
    output_and_slo(p, output_tokens=64, slo_ttft=1.0, slo_tpot=0.010)
    p.set_defaults(run=run)
