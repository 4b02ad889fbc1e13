"""Wait for the router, send one greedy token-id request, log the path it took.

Writes OUT/MODE-flow.json: the output token ids (to compare P/D with colocated),
and each worker's Info and Load (KV transfers, bytes, seconds) before and after.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
import urllib.request

import grpc

from pdserve.v1 import worker_pb2 as pb
from pdserve.v1 import worker_pb2_grpc as pb_grpc

mode, out, model = sys.argv[1], sys.argv[2], sys.argv[3]
URL = "http://127.0.0.1:8000"
WORKERS = {
    "127.0.0.1:50051": pb_grpc.PrefillWorkerStub,
    "127.0.0.1:50052": pb_grpc.DecodeWorkerStub,
    "127.0.0.1:50053": pb_grpc.DecodeWorkerStub,
}


def wait_router(deadline_s: float = 480) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            urllib.request.urlopen(f"{URL}/v1/models", timeout=2).read()
            return
        except OSError:
            time.sleep(2)
    raise SystemExit("router not ready")


async def workers() -> dict:
    found = {}
    for addr, stub_cls in WORKERS.items():
        async with grpc.aio.insecure_channel(addr) as ch:
            try:
                stub = stub_cls(ch)
                info = await stub.Info(pb.InfoRequest(), timeout=3)
                load = await stub.Load(pb.LoadRequest(), timeout=3)
            except grpc.aio.AioRpcError:
                continue
            found[addr] = {
                "role": info.role,
                "vllm": info.vllm_version,
                "kv_capacity_tokens": info.kv_capacity_tokens,
                "kv_transfers": load.kv_transfers,
                "kv_bytes": load.kv_bytes_transferred,
                "kv_seconds": load.kv_transfer_seconds,
                "kv_failures": load.kv_transfer_failures,
            }
    return found


def greedy(prompt: list[int]) -> dict:
    body = json.dumps(
        {
            "model": model,
            "prompt": prompt,
            "max_tokens": 64,
            "temperature": 0,
            "ignore_eos": True,
            "return_token_ids": True,
        }
    ).encode()
    req = urllib.request.Request(f"{URL}/v1/completions", body, {"Content-Type": "application/json"})
    start = time.perf_counter()
    resp = json.loads(urllib.request.urlopen(req, timeout=300).read())
    return {
        "seconds": time.perf_counter() - start,
        "token_ids": resp["choices"][0]["token_ids"],
        "usage": resp["usage"],
    }


wait_router()
report: dict = {"mode": mode, "before": asyncio.run(workers())}
rng = random.Random(7)
prompt = [rng.randrange(1000, 128000) for _ in range(3000)]
report["first"] = greedy(prompt)  # includes the NIXL handshake in P/D
report["second"] = greedy([*prompt[:-1], prompt[-1] ^ 1])  # fresh last block
report["after"] = asyncio.run(workers())
json.dump(report, open(f"{out}/{mode}-flow.json", "w"), indent=1)
print(json.dumps({k: report[k] for k in ("before", "after")}), flush=True)
