"""Greedy token ids of fixed prompts through one router, and the workers' KV counters.

Usage: python3 deploy/gpu/tp_flow.py URL LABEL OUT_JSON VOCAB [WORKER_ADDR ...]
       python3 deploy/gpu/tp_flow.py --verdict OUT_DIR
Each run writes {label, outputs: [token ids per prompt], usage, workers: {addr: Info/Load}}.
``--verdict`` compares OUT_DIR/tp-*.json: every P/D run against the colocated engine with
its DECODE side's TP (which computes tokens 2..n from the transferred KV) and its first
token against the colocated engine with its PREFILL side's TP; the two colocated engines
against each other show what TP alone changes (bf16 reductions in another order).
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

PROMPT_LENGTHS = (100, 900, 3000)
MAX_TOKENS = 32


def wait_router(url: str, deadline_s: float = 420) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            if json.loads(urllib.request.urlopen(f"{url}/v1/models", timeout=2).read())["data"]:
                return
        except (OSError, KeyError, ValueError):
            pass
        time.sleep(2)
    raise SystemExit(f"router {url} not ready")


def greedy(url: str, prompt: list[int]) -> dict[str, Any]:
    body = {"prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0, "ignore_eos": True, "return_token_ids": True}
    model = json.loads(urllib.request.urlopen(f"{url}/v1/models", timeout=10).read())["data"][0]["id"]
    req = urllib.request.Request(
        f"{url}/v1/completions", json.dumps({"model": model, **body}).encode(), {"Content-Type": "application/json"}
    )
    resp = json.loads(urllib.request.urlopen(req, timeout=600).read())
    return {"token_ids": resp["choices"][0]["token_ids"], "usage": resp["usage"]}


async def worker_state(addrs: list[str]) -> dict[str, Any]:
    import grpc

    from pdserve.v1 import worker_pb2 as pb
    from pdserve.v1 import worker_pb2_grpc as pb_grpc

    found: dict[str, Any] = {}
    for addr in addrs:
        async with grpc.aio.insecure_channel(addr) as ch:
            for stub in (pb_grpc.DecodeWorkerStub(ch), pb_grpc.PrefillWorkerStub(ch)):
                try:
                    info = await stub.Info(pb.InfoRequest(), timeout=5)
                    load = await stub.Load(pb.LoadRequest(), timeout=5)
                except grpc.aio.AioRpcError:
                    continue
                found[addr] = {
                    "role": info.role,
                    "kv_capacity_tokens": info.kv_capacity_tokens,
                    "kv_transfers": load.kv_transfers,
                    "kv_bytes": load.kv_bytes_transferred,
                    "kv_failures": load.kv_transfer_failures,
                }
                break
    return found


def run(url: str, label: str, out: Path, vocab: int, addrs: list[str]) -> None:
    wait_router(url)
    rng = random.Random(18)
    prompts = [[rng.randrange(1000, vocab) for _ in range(n)] for n in PROMPT_LENGTHS]
    results = [greedy(url, p) for p in prompts]
    report = {
        "label": label,
        "prompt_lengths": PROMPT_LENGTHS,
        "outputs": [r["token_ids"] for r in results],
        "usage": [r["usage"] for r in results],
        "workers": asyncio.run(worker_state(addrs)),
    }
    out.write_text(json.dumps(report, indent=1))
    print(label, [o[:6] for o in report["outputs"]], report["workers"], flush=True)


def _first_divergence(a: list[int], b: list[int]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None if len(a) == len(b) else 0)


def verdict(out: Path) -> dict[str, Any]:
    files = [p for p in sorted(out.glob("tp-*.json")) if p.name != "tp-verdict.json"]
    runs = {p.stem.removeprefix("tp-"): json.loads(p.read_text()) for p in files}
    coloc = {k.removeprefix("coloc-"): v["outputs"] for k, v in runs.items() if k.startswith("coloc-")}
    checks: dict[str, Any] = {}
    for name, run_ in runs.items():
        if not name.startswith("pd-"):
            continue
        p_tp, d_tp = name.removeprefix("pd-").split("-")  # pd-p2-d1 → ("p2", "d1")
        ref_d, ref_p = coloc.get(f"tp{d_tp[1:]}"), coloc.get(f"tp{p_tp[1:]}")
        decode = [w for w in run_["workers"].values() if w["role"] == "decode"]
        checks[name] = {
            "identical_to_colocated_decode_tp": ref_d is not None and run_["outputs"] == ref_d,
            "first_divergence_vs_decode_tp": None
            if ref_d is None
            else [_first_divergence(a, b) for a, b in zip(run_["outputs"], ref_d, strict=True)],
            "first_token_equals_colocated_prefill_tp": None
            if ref_p is None
            else [a[:1] == b[:1] for a, b in zip(run_["outputs"], ref_p, strict=True)],
            "kv_transfers": sum(w["kv_transfers"] for w in decode),
            "kv_failures": sum(w["kv_failures"] for w in decode),
        }
        # A failed pull is recomputed on the decode side (kv_load_failure_policy=recompute):
        # equal output without a transfer would prove nothing.
        checks[name]["pass"] = (
            checks[name]["identical_to_colocated_decode_tp"]
            and checks[name]["kv_transfers"] >= len(PROMPT_LENGTHS)
            and checks[name]["kv_failures"] == 0
        )
    if "tp1" in coloc and "tp2" in coloc:
        checks["colocated_tp1_vs_tp2_first_divergence"] = [
            _first_divergence(a, b) for a, b in zip(coloc["tp1"], coloc["tp2"], strict=True)
        ]
    pd = [v for k, v in checks.items() if k.startswith("pd-")]
    checks["verdict"] = "pass" if pd and all(v["pass"] for v in pd) else "fail"
    (out / "tp-verdict.json").write_text(json.dumps(checks, indent=1))
    return checks


if __name__ == "__main__":
    if sys.argv[1] == "--verdict":
        print(json.dumps(verdict(Path(sys.argv[2])), indent=1))
    else:
        run(sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]), sys.argv[5:])
