#!/usr/bin/env bash
# Issue #16 on ONE GPU: a prefill and a decode engine sharing the device (0.42 of its memory
# each, KV over NIXL) under each disaggregation decider (priced: told the SLO), against one
# colocated engine on the same device (run first: the baseline); the same prompts and Poisson
# arrivals (bench load --seed 0) in every row.
# Usage: deploy/gpu/pd1_bench.sh   (after deploy/gpu/install.sh; results in $OUT)
#   DECIDERS="priced always-remote"  RATES=2,4,8  REQUESTS=40  UCX_EXTRA="UCX_TLS=..." (optional)
#   KV_UCX=none       both workers with --kv-ucx-error-handling none (shared memory / cuda_ipc, not tcp/lo)
#   COLOCATED=0       skip the colocated baseline (when an earlier call on this machine ran it)
#   PREFILL_KV_GIB=8 DECODE_KV_GIB=16   the P/D engines' KV caches, sized explicitly: two engines
#                     profiling memory at once on one GPU count each other's use (seen: 0.06 GiB left)
#   TAG=name          prefix of the P/D rows' files and labels (default pd)
set -uo pipefail
out="${OUT:-/tmp/pdserve-out}"; mkdir -p "$out"
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 VLLM_USE_FLASHINFER_SAMPLER=0 VLLM_WORKER_MULTIPROC_METHOD=spawn
model="$PWD/deploy/gpu/llama-3.1-8b-shape"
name=llama-3.1-8b-dummy
rates="${RATES:-2,4,8}"; requests="${REQUESTS:-40}"
common=(--model "$model" --served-model-name "$name" --max-model-len 8192 --block-size 16 --dtype bfloat16
        --no-enforce-eager --engine-arg load_format=dummy --engine-arg kv_cache_memory_bytes=null
        --startup-timeout 400)
load=(python3 -m pdserve bench load --url http://127.0.0.1:8000 --model "$name" --vocab-size 128000
      --prompt-tokens 2048:4096 --output-tokens 128:256 --slo-ttft 1.0 --slo-tpot 0.010 --seed 0)

pids=()
router_pid=""
cleanup() { kill $router_pid "${pids[@]}" 2>/dev/null; wait 2>/dev/null; }
trap cleanup EXIT

wait_up() {  # a router answering /v1/models with a model
  for _ in $(seq 1 240); do
    kill -0 "$router_pid" 2>/dev/null || { echo "router exited"; return 1; }
    curl -sf http://127.0.0.1:8000/v1/models | grep -q "$name" && return 0
    sleep 2
  done
  echo "router not ready"; return 1
}

start_router() {  # LABEL ARGS...
  local label="$1"; shift
  python3 -m router --model "$model" "$@" --policy least-loaded --port 8000 > "$out/$label-router.log" 2>&1 &
  router_pid=$!
  wait_up
}

stop_router() {
  curl -sf http://127.0.0.1:8000/metrics > "$out/$1-router-metrics.txt" || true
  curl -s http://127.0.0.1:8000/health > "$out/$1-router-health.json" || true
  kill "$router_pid" 2>/dev/null; wait "$router_pid" 2>/dev/null; router_pid=""
}

run_load() {  # LABEL: warm-up (8 requests, not measured), then the sweep
  "${load[@]}" --rates 1 --requests 8 --output-tokens 16:16 --seed 99 --label "$1-warmup" \
    --out "$out/$1-warmup.json" > "$out/$1-warmup.log" 2>&1
  "${load[@]}" --rates "$rates" --requests "$requests" --label "$1" --out "$out/$1-load.json" 2>&1 | tail -8
}

# --- colocated: one engine on the same GPU -------------------------------------------------
if [[ "${COLOCATED:-1}" != 0 ]]; then
CUDA_VISIBLE_DEVICES=0 python3 -m decode_worker "${common[@]}" --port 50052 --kv-connector none \
  --engine-arg gpu_memory_utilization="${COLOCATED_MEM:-0.84}" > "$out/colocated.log" 2>&1 & pids+=($!)
start_router colocated --decode 127.0.0.1:50052 || exit 1
python3 deploy/gpu/check_flow.py colocated "$out" "$name" > /dev/null 2>&1
run_load colocated
stop_router colocated
kill "${pids[@]}" 2>/dev/null; wait "${pids[@]}" 2>/dev/null; pids=()
sleep 3
fi

# --- P/D: both engines on GPU 0, one router restart per decider --------------------------
tag="${TAG:-pd}"
common+=(--kv-ucx-error-handling "${KV_UCX:-peer}")
env ${UCX_EXTRA:-} CUDA_VISIBLE_DEVICES=0 python3 -m prefill_worker "${common[@]}" --port 50051 --kv-port 5600 \
  --engine-arg gpu_memory_utilization=0.42 --engine-arg kv_cache_memory_bytes=$(( ${PREFILL_KV_GIB:-8} << 30 )) \
  > "$out/$tag-prefill.log" 2>&1 & pids+=($!)
env ${UCX_EXTRA:-} CUDA_VISIBLE_DEVICES=0 UCX_PROTO_INFO=y python3 -m decode_worker "${common[@]}" --port 50052 \
  --kv-port 5601 --engine-arg gpu_memory_utilization=0.42 --engine-arg kv_cache_memory_bytes=$(( ${DECODE_KV_GIB:-16} << 30 )) \
  > "$out/$tag-decode.log" 2>&1 & pids+=($!)
began=$(date +%s)
for decider in ${DECIDERS:-priced always-remote}; do
  start_router "$tag-$decider" --prefill 127.0.0.1:50051 --decode 127.0.0.1:50052 --disagg-decider "$decider" \
    --disagg-ttft-target 1 --disagg-tpot-target 0.010 || exit 1
  echo "$tag-$decider: router up $(( $(date +%s) - began )) s after the engines started"
  python3 deploy/gpu/check_flow.py "$tag-$decider" "$out" "$name" > /dev/null 2>&1
  run_load "$tag-$decider"
  python3 deploy/gpu/check_flow.py "$tag-$decider-after" "$out" "$name" > /dev/null 2>&1
  stop_router "$tag-$decider"
  grep -E "^pdserve_router_(disagg_decisions|kv_handover(_worker)?_seconds_(sum|count))" \
    "$out/$tag-$decider-router-metrics.txt" 2>/dev/null || true
done
grep -m3 -iE "KV PATH|kv path" "$out/$tag-decode.log" || true
grep -m4 -iE "software emulation|cuda_ipc|tcp/lo" "$out/$tag-decode.log" || true
nvidia-smi --query-gpu=name,memory.total --format=csv > "$out/gpu.csv" 2>&1 || true
