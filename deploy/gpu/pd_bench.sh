#!/usr/bin/env bash
# P/D versus colocated on a 2-GPU host, a Llama-3.1-8B-shaped model with random weights.
# Usage: deploy/gpu/pd_bench.sh pd|colocated   (after deploy/gpu/install.sh; results in $OUT)
#   pd:        router + prefill worker on GPU 0 + decode worker on GPU 1, KV over NIXL
#   colocated: router (least-loaded) + two independent engines, one per GPU, no KV transfer
set -euo pipefail
mode="$1"
out="${OUT:-/tmp/pdserve-out}"; mkdir -p "$out"
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 VLLM_USE_FLASHINFER_SAMPLER=0 VLLM_WORKER_MULTIPROC_METHOD=spawn
model="$PWD/deploy/gpu/llama-3.1-8b-shape"
name=llama-3.1-8b-dummy
common=(--model "$model" --served-model-name "$name" --max-model-len 8192 --block-size "${BLOCK_SIZE:-16}" --dtype bfloat16
        --no-enforce-eager --engine-arg load_format=dummy --engine-arg kv_cache_memory_bytes=null
        --engine-arg gpu_memory_utilization=0.85 --startup-timeout 400)
rates="${RATES:-1,2,4,8}"; requests="${REQUESTS:-48}"

[[ -n "${SKIP_COPY:-}" ]] || python3 deploy/gpu/copy_bandwidth.py > "$out/$mode-copy-bandwidth.json" 2>&1 || true

pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null' EXIT
if [[ "$mode" == pd ]]; then
  CUDA_VISIBLE_DEVICES=0 python3 -m prefill_worker "${common[@]}" --port 50051 --kv-port 5600 \
    > "$out/pd-prefill.log" 2>&1 & pids+=($!)
  CUDA_VISIBLE_DEVICES=1 UCX_PROTO_INFO=y python3 -m decode_worker "${common[@]}" --port 50052 --kv-port 5601 \
    > "$out/pd-decode.log" 2>&1 & pids+=($!)
  router_args=(--prefill 127.0.0.1:50051 --decode 127.0.0.1:50052)
else
  CUDA_VISIBLE_DEVICES=0 python3 -m decode_worker "${common[@]}" --port 50052 --kv-connector none \
    > "$out/colocated-gpu0.log" 2>&1 & pids+=($!)
  CUDA_VISIBLE_DEVICES=1 python3 -m decode_worker "${common[@]}" --port 50053 --kv-connector none \
    > "$out/colocated-gpu1.log" 2>&1 & pids+=($!)
  router_args=(--decode 127.0.0.1:50052,127.0.0.1:50053)
fi
python3 -m router --model "$model" "${router_args[@]}" --policy least-loaded --port 8000 \
  > "$out/$mode-router.log" 2>&1 & pids+=($!)

python3 deploy/gpu/check_flow.py "$mode" "$out" "$name"
python3 -m pdserve bench load --url http://127.0.0.1:8000 --model "$name" --vocab-size 128000 \
  --rates "$rates" --requests "$requests" --prompt-tokens 2048:4096 --output-tokens 128:256 \
  --slo-ttft 1.0 --slo-tpot 0.010 --label "$mode" --out "$out/$mode-load.json"
python3 deploy/gpu/check_flow.py "$mode-after" "$out" "$name"
nvidia-smi --query-compute-apps=pid,used_memory,gpu_uuid --format=csv > "$out/$mode-nvidia-smi.csv" || true
