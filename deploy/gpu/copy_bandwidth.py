"""GPU 0 → GPU 1 copy bandwidth with torch (the baseline for the NIXL transfer rate)."""

from __future__ import annotations

import json
import time

import torch

if torch.cuda.device_count() < 2:
    raise SystemExit(json.dumps({"error": "needs two GPUs"}))
nbytes = 1 << 30
src = torch.empty(nbytes, dtype=torch.uint8, device="cuda:0")
dst = torch.empty(nbytes, dtype=torch.uint8, device="cuda:1")
for _ in range(3):
    dst.copy_(src)
torch.cuda.synchronize(0)
torch.cuda.synchronize(1)
reps = 20
start = time.perf_counter()
for _ in range(reps):
    dst.copy_(src, non_blocking=True)
torch.cuda.synchronize(0)
torch.cuda.synchronize(1)
seconds = time.perf_counter() - start
print(
    json.dumps(
        {
            "bytes": nbytes * reps,
            "seconds": seconds,
            "gb_per_s": nbytes * reps / seconds / 1e9,
            "p2p": torch.cuda.can_device_access_peer(0, 1),
            "device": torch.cuda.get_device_name(0),
        }
    )
)
