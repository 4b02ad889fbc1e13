#!/usr/bin/env bash
# Issue #16 item 3: NIXL KV transfer between two engines on one GPU, per UCX/NIXL variant.
# Usage: deploy/gpu/kv_path.sh [VARIANT ...]   (after deploy/gpu/install.sh; results in $OUT)
set -uo pipefail
out="${OUT:-/tmp/pdserve-out}"; mkdir -p "$out"
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 VLLM_USE_FLASHINFER_SAMPLER=0 VLLM_WORKER_MULTIPROC_METHOD=spawn
(ucx_info -v; ucx_info -d | grep -E "Transport|Device" ) > "$out/ucx_info.txt" 2>&1 || python3 - > "$out/ucx_info.txt" 2>&1 <<'PY'
import glob; print(glob.glob('/tmp/site/nixl*/**/ucx*', recursive=True)[:20])
PY
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
n=0
for variant in "${@:-default host}"; do
  n=$((n + 1))
  UCX_PROTO_INFO=y timeout 280 python3 deploy/gpu/kv_path.py "$variant" "$out/kv_path-$n.json" "${PROMPT_TOKENS:-3072}" \
    > "$out/kv_path-$n.log" 2>&1
  echo "variant $n ($variant): exit $?"
  grep -m3 -iE "software emulation|ucp_get|cuda_ipc|tcp/lo|rma" "$out/kv_path-$n.log" || true
  tail -2 "$out/kv_path-$n.log"
  if [[ $(stat -c %s "$out/kv_path-$n.log") -gt 4000000 ]]; then  # UCX_LOG_LEVEL=debug: keep what names a path
    grep -iE "cuda_ipc|reachab|emulation|tcp/lo|zcopy|rndv|error|gb_per_s|device_copy" "$out/kv_path-$n.log" | head -3000 \
      > "$out/kv_path-$n.filtered.log"; rm "$out/kv_path-$n.log"
  fi
done
