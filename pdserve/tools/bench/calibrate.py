"""``pdserve bench calibrate``: replay a GPU ``bench load`` run on a sim fleet, side by side.

Each run is ``FILE@P:D``: a ``pdserve bench load`` JSON measured on GPUs and the topology
it ran on (``1:1`` = one prefill + one decode worker; ``0:2`` = two colocated engines).
The sim fleet gets the same topology (one sim worker per GPU, the given profile), and the
same requests: ``bench load`` draws prompts, outputs and Poisson arrivals from
``--seed`` and the rate, so seed 0 (the GPU scripts') reproduces them exactly — checked
against the GPU file's per-request prompt lengths. Output: JSON and a markdown table of
TTFT p50/p90, TPOT p50, ITL p99 and goodput per rate, GPU beside sim, under the GPU run's SLO.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pdserve.tools.bench.load import sweep_point
from pdserve.tools.bench.report import Slo, summarize
from pdserve.tools.fleet import start_router, start_sim_worker
from pdserve.tools.procs import Procs

SERVED = "calibrate"
METRICS = ("ttft_p50_s", "ttft_p90_s", "tpot_p50_s", "itl_p99_s", "goodput_req_s")


@dataclass(frozen=True)
class GpuRun:
    """One measured GPU run and the topology it ran on."""

    path: Path
    prefill: int
    decode: int

    @classmethod
    def parse(cls, text: str) -> GpuRun:
        path, _, topo = text.rpartition("@")
        p, _, d = topo.partition(":")
        if not path or not p.isdigit() or not d.isdigit() or int(d) < 1:
            raise ValueError(f"run {text!r}: expected FILE@P:D with D >= 1 (P = 0: colocated)")
        return cls(Path(path), int(p), int(d))

    @property
    def topology(self) -> str:
        return f"colocated x{self.decode}" if self.prefill == 0 else f"{self.prefill}P:{self.decode}D"


def add_parser(sub: Any) -> None:
    p = sub.add_parser("calibrate", help="replay GPU bench-load runs on a sim fleet: GPU vs sim table")
    p.add_argument("runs", nargs="+", type=GpuRun.parse, help="FILE@P:D, e.g. gpu-pd-load.json@1:1")
    p.add_argument("--model", type=Path, required=True, help="model directory the GPU run served (its shape)")
    p.add_argument("--profile", default="llama-3.1-8b-h200", help="sim profile")
    p.add_argument("--engine-arg", action="append", default=[], help="more sim engine args KEY=VALUE")
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--vocab-size", type=int, default=128000, help="as the GPU run's bench load")
    p.add_argument("--trace-dir", type=Path, default=Path("deploy/gpu/traces"), help="where a trace run's file is")
    p.add_argument("--out", type=Path, default=Path("bench-out/calibrate.json"))
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    results = [_replay(args, r) for r in args.runs]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    summary = {"profile": args.profile, "engine_args": args.engine_arg, "runs": results}
    args.out.write_text(json.dumps(summary, indent=1))
    text = markdown(results)
    args.out.with_suffix(".md").write_text(text)
    print(text)
    return 0


def _replay(args: argparse.Namespace, gpu_run: GpuRun) -> dict[str, Any]:
    gpu = json.loads(gpu_run.path.read_text())
    trace = gpu.get("trace")  # bench load --trace: the same rows, the same salt per rate
    slo = Slo(gpu["slo"]["ttft_s"], gpu["slo"]["tpot_s"])
    worker_args = ["--model", str(args.model), "--served-model-name", SERVED, "--block-size", str(args.block_size)]
    worker_args += ["--max-model-len", "8192", "--engine-arg", f"profile={args.profile}"]
    worker_args += [a for kv in ["vocab_size=128256", *args.engine_arg] for a in ("--engine-arg", kv)]
    rows: dict[str, Any] = {}
    with Procs(args.out.parent / "logs" / gpu_run.path.stem) as procs:
        pre = [start_sim_worker(procs, "prefill", f"p{i}", worker_args).address for i in range(gpu_run.prefill)]
        colocated = ["--kv-connector", "none"] if gpu_run.prefill == 0 else []
        dec = [
            start_sim_worker(procs, "decode", f"d{i}", [*worker_args, *colocated]).address
            for i in range(gpu_run.decode)
        ]
        url = start_router(procs, args.model, pre, dec, ["--policy", "least-loaded", "--log-level", "WARNING"]).address
        for rate, measured in gpu["rates"].items():
            load_args = argparse.Namespace(
                url=url,
                seed=0,
                vocab_size=args.vocab_size,
                requests=measured["requests"],
                prompt_tokens=gpu["prompt_tokens"],
                output_tokens=gpu["output_tokens"],
                trace=None if trace is None else args.trace_dir / trace["file"],
                trace_scale=1.0 if trace is None else trace["scale"],
            )
            timings, wall = asyncio.run(sweep_point(load_args, SERVED, float(rate)))
            sim = summarize(timings, wall, slo)
            same = [t.prompt_tokens for t in timings] == [r["prompt"] for r in measured.get("per_request", [])]
            rows[rate] = {
                "gpu": {k: measured[k] for k in METRICS},
                "sim": {k: sim[k] for k in METRICS},
                "sim_errors": sim["errors"],
                "same_prompts": same,
            }
    return {"file": gpu_run.path.name, "topology": gpu_run.topology, "slo": gpu["slo"], "rates": rows}


def markdown(results: list[dict[str, Any]]) -> str:
    lines = [
        "| topology | rate | TTFT p50 GPU | sim | TTFT p90 GPU | sim | TPOT p50 GPU | sim "
        "| ITL p99 GPU | sim | goodput GPU | sim | same prompts |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:-:|",
    ]
    for res in results:
        for rate, r in res["rates"].items():
            g, s = r["gpu"], r["sim"]
            lines.append(
                f"| {res['topology']} | {float(rate):g} "
                f"| {g['ttft_p50_s'] * 1e3:.0f} ms | {s['ttft_p50_s'] * 1e3:.0f} ms "
                f"| {g['ttft_p90_s'] * 1e3:.0f} ms | {s['ttft_p90_s'] * 1e3:.0f} ms "
                f"| {g['tpot_p50_s'] * 1e3:.2f} ms | {s['tpot_p50_s'] * 1e3:.2f} ms "
                f"| {g['itl_p99_s'] * 1e3:.1f} ms | {s['itl_p99_s'] * 1e3:.1f} ms "
                f"| {g['goodput_req_s']:.2f} | {s['goodput_req_s']:.2f} | {'yes' if r['same_prompts'] else 'no'} |"
            )
    return "\n".join(lines) + "\n"
