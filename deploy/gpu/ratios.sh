#!/usr/bin/env bash
# Issue #18 item 1: P:D splits against colocated engines on ONE multi-GPU host, one worker per
# GPU (CUDA_VISIBLE_DEVICES per process), one router over them, two mixes, open-loop goodput.
# Usage: deploy/gpu/ratios.sh   (after deploy/gpu/install.sh; results in $OUT)
#   GPUS=N         GPUs to use (default: nvidia-smi's count; ENGINE=sim: 4)
#   SPLITS="..."   topologies, each P:D or "coloc" (default 4 GPUs: "coloc 1:3 2:2 3:1 1:1";
#                  2 GPUs: "coloc 1:1"). coloc = N independent engines, no KV transfer.
#   MIXES="long chat"  long: prompts 2048-4096 random ids, outputs 128-256;
#                  chat: the Mooncake conversation trace (prompts /4, cut at 7680; its outputs cut at 512)
#   RATES_LONG=8,16,24 RATES_CHAT=4,8,12 (req/s; 2 GPUs: 4,8,12 and 2,4,6)  REQUESTS=200 per rate  SLO_TTFT=1.0  SLO_TPOT=0.025
#   DECIDER=always-remote  the router's --disagg-decider in P/D topologies
#   READY_S=420    how long a topology may take to serve (engines start in parallel)
#   ROUTER_PORT=8000  PORT_BASE=50100 (worker i: gRPC PORT_BASE+i, NIXL 5600+i, KV events 5700+2i)
#   ENGINE=sim     the same topology on sim workers (SIM_PROFILE, default llama-3.1-8b-h200);
#                  CUDA_VISIBLE_DEVICES is then ignored. Dry run: ENGINE=sim RATES=2 REQUESTS=20
# Every process this script starts is killed on exit, failure included. $OUT gets ratios-summary-TAG.{md,json}
# and ratios-raw-TAG.tar.gz (per-topology load JSONs, logs, router metrics: the device returns 8 files).
set -uo pipefail
final="${OUT:-/tmp/pdserve-out}"
here="$(cd "$(dirname "$0")" && pwd)"; repo="$(cd "$here/../.." && pwd)"
engine="${ENGINE:-vllm}"
py="${PYTHON:-python3}"
export PYTHONPATH="/tmp/site:$repo" PYTHONUNBUFFERED=1 VLLM_USE_FLASHINFER_SAMPLER=0 VLLM_WORKER_MULTIPROC_METHOD=spawn
model="$repo/deploy/gpu/llama-3.1-8b-shape"
name=llama-3.1-8b-dummy
trace="${TRACE:-$here/traces/mooncake_conversation_first1000.jsonl}"  # REQUESTS <= its 1,000 rows

if [[ -n "${GPUS:-}" ]]; then gpus="$GPUS"
elif [[ "$engine" == sim ]]; then gpus=4
else gpus=$(nvidia-smi --query-gpu=index --format=csv,noheader | wc -l)
fi
if [[ "$gpus" -ge 4 ]]; then default_splits="coloc 1:3 2:2 3:1 1:1"; else default_splits="coloc 1:1"; fi
splits="${SPLITS:-$default_splits}"
tag="$(echo "$engine $splits" | tr ' :' '_-')"
out="$final/ratios-raw-$tag"; mkdir -p "$out"
mixes="${MIXES:-long chat}"
requests="${REQUESTS:-200}"
slo=(--slo-ttft "${SLO_TTFT:-1.0}" --slo-tpot "${SLO_TPOT:-0.025}")
# Defaults sized so that one topology (start, warm-up, both mixes) takes about 4.5 min on 4 GPUs.
if [[ "$gpus" -ge 4 ]]; then long_rates=8,16,24 chat_rates=4,8,12; else long_rates=4,8,12 chat_rates=2,4,6; fi
declare -A rates=([long]="${RATES:-${RATES_LONG:-$long_rates}}" [chat]="${RATES:-${RATES_CHAT:-$chat_rates}}")
declare -A mix_args=(
  [long]="--prompt-tokens 2048:4096 --output-tokens 128:256"
  [chat]="--trace $trace --trace-scale 4 --prompt-tokens 1:7680 --output-tokens 1:512"
)

common=(--model "$model" --served-model-name "$name" --max-model-len 8192 --block-size "${BLOCK_SIZE:-16}"
        --metrics-port 0 --startup-timeout 600 --log-level WARNING)
if [[ "$engine" == sim ]]; then
  common+=(--engine sim --engine-arg "profile=${SIM_PROFILE:-llama-3.1-8b-h200}" --engine-arg vocab_size=128256)
else
  common+=(--dtype bfloat16 --no-enforce-eager --engine-arg load_format=dummy --engine-arg kv_cache_memory_bytes=null
           --engine-arg gpu_memory_utilization=0.85)
fi

router_port="${ROUTER_PORT:-8000}"; url="http://127.0.0.1:$router_port"
pids=() prefill=() decode=()
join() { local IFS=,; echo "$*"; }
cleanup() { [[ ${#pids[@]} -gt 0 ]] && kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; pids=(); }
pack() {
  cleanup
  for ext in json md; do
    [[ -f "$out/ratios-summary.$ext" ]] && cp "$out/ratios-summary.$ext" "$final/ratios-summary-$tag.$ext"
  done
  tar czf "$final/ratios-raw-$tag.tar.gz" -C "$final" "ratios-raw-$tag" && rm -rf "$out"
}
trap pack EXIT
trap 'exit 130' INT TERM

start_worker() {  # ROLE GPU LABEL [more worker flags]: one worker on one GPU; its address joins $ROLE's list
  local role="$1" gpu="$2" label="$3"; shift 3
  local port=$((${PORT_BASE:-50100} + gpu)) kv=$((5600 + gpu)) events=$((5700 + 2 * gpu))
  local module=decode_worker; [[ "$role" == prefill ]] && module=prefill_worker
  CUDA_VISIBLE_DEVICES="$gpu" "$py" -m "$module" "${common[@]}" --port "$port" --kv-port "$kv" \
    --kv-events-port "$events" "$@" > "$out/$label-$role-gpu$gpu.log" 2>&1 &
  pids+=($!)
  if [[ "$role" == prefill ]]; then prefill+=("127.0.0.1:$port"); else decode+=("127.0.0.1:$port"); fi
}

wait_up() {  # the router answering /v1/models with the model; fails at once when a process died
  for _ in $(seq 1 $(( ${READY_S:-420} / 2 ))); do
    curl -sf "$url/v1/models" | grep -q "$name" && return 0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null || { echo "process $pid exited before the router was ready"; return 1; }; done
    sleep 2
  done
  echo "router not ready in ${READY_S:-420} s"; return 1
}

gpus_idle() {  # engine cores gone and their GPU memory back, before the next topology starts
  [[ "$engine" == sim ]] && return 0
  for _ in $(seq 1 60); do
    [[ -z "$(nvidia-smi --query-compute-apps=pid --format=csv,noheader 2>/dev/null)" ]] && return 0
    sleep 1
  done
  echo "GPU processes still present after 60 s:"; nvidia-smi --query-compute-apps=pid,used_memory --format=csv
}

run_topology() {  # TOPO: coloc or P:D
  local topo="$1" label gpu p d router_args=()
  prefill=(); decode=()
  label="ratios-${topo/:/p}d"; [[ "$topo" == coloc ]] && label=ratios-coloc
  if [[ "$topo" == coloc ]]; then
    for ((gpu = 0; gpu < gpus; gpu++)); do start_worker decode "$gpu" "$label" --kv-connector none; done
  else
    p="${topo%:*}"; d="${topo#*:}"
    if ((p + d > gpus)); then echo "$topo: needs $((p + d)) GPUs, have $gpus: skipped"; return 0; fi
    for ((gpu = 0; gpu < p + d; gpu++)); do
      if ((gpu < p)); then start_worker prefill "$gpu" "$label"; else start_worker decode "$gpu" "$label"; fi
    done
    # always-remote: every prompt is prefilled on a prefill GPU, so each split is measured as
    # itself (the default threshold decider prefills on decode GPUs once the prefill side queues).
    router_args+=(--prefill "$(join "${prefill[@]}")" --disagg-decider "${DECIDER:-always-remote}")
  fi
  router_args+=(--decode "$(join "${decode[@]}")")
  local began; began=$(date +%s)
  "$py" -m router --model "$model" "${router_args[@]}" --policy "${POLICY:-prefix-aware}" --port "$router_port" \
    --log-level WARNING > "$out/$label-router.log" 2>&1 &
  pids+=($!)
  wait_up || return 1
  echo "$topo: up $(( $(date +%s) - began )) s after its workers started"
  for mix in $mixes; do
    # Warm-up (CUDA graphs, NIXL handshakes), not measured; then the sweep.
    "$py" -m pdserve bench load --url "$url" --model "$name" --vocab-size 128000 --rates 1 --requests "${WARMUP:-8}" \
      --prompt-tokens 512:2048 --output-tokens 8:8 --seed 99 --out "$out/$label-$mix-warmup.json" \
      "${slo[@]}" > /dev/null 2>&1
    # shellcheck disable=SC2086  # mix_args holds several flags
    "$py" -m pdserve bench load --url "$url" --model "$name" --vocab-size 128000 --rates "${rates[$mix]}" \
      --requests "$requests" ${mix_args[$mix]} "${slo[@]}" --seed 0 \
      --label "$topo $mix" --out "$out/$label-$mix.json" 2>&1 | tail -n 20 | cut -c1-240
  done
  curl -sf "$url/metrics" > "$out/$label-router-metrics.txt" || true
  cleanup
  gpus_idle
}

echo "engine=$engine gpus=$gpus splits=[$splits] mixes=[$mixes] requests=$requests"
failed=0
for topo in $splits; do run_topology "$topo" || { echo "$topo: FAILED (logs in $out)"; failed=1; cleanup; gpus_idle; }; done
[[ "$engine" == sim ]] || nvidia-smi --query-gpu=index,name,memory.total --format=csv > "$out/ratios-gpus.csv" 2>&1
"$py" "$here/ratios_summary.py" "$out" --gpus "$gpus" --engine "$engine"
exit "$failed"
