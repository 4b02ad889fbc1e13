#!/usr/bin/env bash
# Issue #18 item 2: KV handed across a tensor-parallel mismatch (vLLM 0.26 NixlConnector), greedy
# output compared token for token with colocated engines. Needs 3 GPUs (runs on 4, uses 0-2):
#   phase 1: prefill TP=2 (GPUs 0,1) -> decode TP=1 (GPU 2)            -> OUT/tp-pd-p2-d1.json
#   phase 2: prefill TP=1 (GPU 0)    -> decode TP=2 (GPUs 1,2)          -> OUT/tp-pd-p1-d2.json
#   phase 3: colocated TP=1 (GPU 0) and colocated TP=2 (GPUs 1,2)      -> OUT/tp-coloc-tp{1,2}.json
#   then OUT/tp-verdict.json (deploy/gpu/tp_flow.py --verdict): P/D output == the colocated engine
#   of the decode side's TP, with KV actually transferred (decode counters > 0, no failures).
# Usage: deploy/gpu/tp_mismatch.sh   (after deploy/gpu/install.sh; results in $OUT)
#   LAYERS=8     layers of the random Llama-3.1-8B-shaped checkpoint written to /tmp (file weights,
#                not load_format=dummy: dummy weights differ between TP=1 and TP=2, see
#                deploy/gpu/random_checkpoint.py)   DTYPE=bfloat16   BLOCK_SIZE=16
#   ENGINE=sim   the same phases and ports on sim workers (no TP: the plumbing only)
# NixlConnector facts this relies on (vLLM 0.26 source, nixl/ and kv_connector/utils.py): either TP
# may be larger if one divides the other (TransferTopology.tp_ratio); head splitting needs the HND
# KV layout, which NixlConnector.get_required_kvcache_layout sets for non-MLA models; one NIXL side
# channel per engine (VLLM_NIXL_SIDE_CHANNEL_PORT + data-parallel index; its listener serves every
# TP rank's metadata), so --kv-port stays one port per worker; P frees its blocks only after every
# D rank assigned to it has read them (consumer_notification_counts_by_req).
# $OUT gets tp-verdict.json and tp-raw.tar.gz (the runs' JSONs and logs: the device returns 8 files).
set -uo pipefail
final="${OUT:-/tmp/pdserve-out}"; out="$final/tp-raw"; mkdir -p "$out"
here="$(cd "$(dirname "$0")" && pwd)"; repo="$(cd "$here/../.." && pwd)"
py="${PYTHON:-python3}"
engine="${ENGINE:-vllm}"
export PYTHONPATH="/tmp/site:$repo" PYTHONUNBUFFERED=1 VLLM_USE_FLASHINFER_SAMPLER=0 VLLM_WORKER_MULTIPROC_METHOD=spawn
vocab=128000
pids=()
cleanup() { [[ ${#pids[@]} -gt 0 ]] && kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; pids=(); }
pack() {
  cleanup
  [[ -f "$out/tp-verdict.json" ]] && cp "$out/tp-verdict.json" "$final/"
  tar czf "$final/tp-raw.tar.gz" -C "$final" tp-raw && rm -rf "$out"
}
trap pack EXIT
trap 'exit 130' INT TERM

if [[ "$engine" == sim ]]; then
  model="$repo/deploy/gpu/llama-3.1-8b-shape"
  engine_args=(--engine sim --engine-arg profile=llama-3.1-8b-h200 --engine-arg vocab_size=128256)
else
  model=/tmp/pdserve-tp-model
  [[ -f "$model/config.json" ]] || "$py" "$here/random_checkpoint.py" "$repo/deploy/gpu/llama-3.1-8b-shape" "$model" \
    --layers "${LAYERS:-8}" | tee "$out/tp-checkpoint.json" || exit 1
  engine_args=(--dtype "${DTYPE:-bfloat16}" --engine-arg gpu_memory_utilization=0.85 --engine-arg kv_cache_memory_bytes=null)
fi
common=(--model "$model" --served-model-name tp-check --max-model-len 8192 --block-size "${BLOCK_SIZE:-16}"
        --metrics-port 0 --startup-timeout 600 "${engine_args[@]}")

worker() {  # ROLE GPUS TP PORT KV_PORT LOG [flags]
  local role="$1" gpus="$2" tp="$3" port="$4" kv="$5" log="$6"; shift 6
  local module=decode_worker; [[ "$role" == prefill ]] && module=prefill_worker
  local tp_arg=(); [[ "$engine" == sim ]] || tp_arg=(--engine-arg "tensor_parallel_size=$tp")
  CUDA_VISIBLE_DEVICES="$gpus" "$py" -m "$module" "${common[@]}" "${tp_arg[@]}" --port "$port" --kv-port "$kv" \
    --kv-events-port $((5700 + 2 * (port - 50051))) "$@" > "$out/$log.log" 2>&1 &
  pids+=($!)
}

router() {  # PORT LOG ARGS...
  local port="$1" log="$2"; shift 2
  "$py" -m router --model "$model" "$@" --policy least-loaded --port "$port" > "$out/$log.log" 2>&1 &
  pids+=($!)
}

gpus_idle() {  # engine cores gone and their GPU memory back, before the next phase starts
  [[ "$engine" == sim ]] && return 0
  for _ in $(seq 1 60); do
    [[ -z "$(nvidia-smi --query-compute-apps=pid --format=csv,noheader 2>/dev/null)" ]] && return 0
    sleep 1
  done
}

flow() {  # PORT LABEL WORKER_ADDRS...
  local port="$1" label="$2"; shift 2
  timeout 480 "$py" "$here/tp_flow.py" "http://127.0.0.1:$port" "$label" "$out/tp-$label.json" "$vocab" "$@"
}

# Phase 1 and 2: P/D across the mismatch. The router sends every request to the prefill worker
# (always-remote), so each prompt's KV crosses the TP boundary.
for phase in "p2-d1 0,1 2 2 1" "p1-d2 0 1,2 1 2"; do
  read -r label pgpus dgpus ptp dtp <<< "$phase"
  began=$(date +%s)
  worker prefill "$pgpus" "$ptp" 50051 5600 "tp-pd-$label-prefill"
  worker decode "$dgpus" "$dtp" 50052 5601 "tp-pd-$label-decode"
  router 8000 "tp-pd-$label-router" --prefill 127.0.0.1:50051 --decode 127.0.0.1:50052 --disagg-decider always-remote
  flow 8000 "pd-$label" 127.0.0.1:50051 127.0.0.1:50052 || echo "pd-$label: FAILED (logs in $out)"
  echo "pd-$label: $(( $(date +%s) - began )) s"
  grep -hm2 -iE "kv cache layout|tp_ratio|heterogeneous" "$out/tp-pd-$label-decode.log" || true
  cleanup; gpus_idle
done

# Phase 3: the colocated references, both at once (GPU 0; GPUs 1,2).
began=$(date +%s)
worker decode 0 1 50053 5602 tp-coloc-tp1 --kv-connector none
worker decode 1,2 2 50054 5603 tp-coloc-tp2 --kv-connector none
router 8001 tp-coloc-tp1-router --decode 127.0.0.1:50053
router 8002 tp-coloc-tp2-router --decode 127.0.0.1:50054
flow 8001 coloc-tp1 127.0.0.1:50053 & f1=$!
flow 8002 coloc-tp2 127.0.0.1:50054 & f2=$!
wait "$f1" "$f2"
echo "colocated: $(( $(date +%s) - began )) s"
cleanup
"$py" "$here/tp_flow.py" --verdict "$out"
