#!/usr/bin/env bash
# Issue #17 item 4: the request rate each router sustains within 5 ms of added p99 latency, and
# that rate per router core — pdserve --workers 1,2,4, sglang-router and vllm-router (cache_aware)
# in one run, over zero-profile sim workers (no GPU used). On a 16-core host: routers on cores
# 0-3, sim workers on 4-9, the load generator on 10-15 (taskset); fewer cores: nothing pinned.
#
# Usage: PEER_WHEELS=DIR MODEL=DIR deploy/gpu/ceiling.sh        (results in $OUT, ≤ 8 minutes)
#   PEER_WHEELS  sglang_router-0.3.2 and vllm_router-0.1.17 wheels (+ any of their deps missing from
#                /tmp/site: setproctitle, orjson), installed once with --no-deps into $PEERS_DIR (/tmp/peers);
#                put pdserve's httptools wheel there too: the GPU image lacks it, and without it pdserve's
#                router parses HTTP with h11 (it warns; the 2026-12-06 run did)
#   MODEL        a model directory with a tokenizer (weights not needed: the workers are simulated),
#                e.g. the embedded default's config.json, generation_config.json, tokenizer*.json
#   PY           the python (default python3; /tmp/site and /tmp/peers go on its PYTHONPATH)
#   PEERS_PYTHON a python that imports the peers (default: $PY with /tmp/peers on the path)
#   RATES DURATION WORKERS OUTPUT_TOKENS STREAM_INTERVAL ROUTER_WORKERS GENERATORS ROUTER_CORES WORKER_CORES LOAD_CORES BUDGET_S ONLY
#                override the sweep (see `pdserve bench compare ceiling --help`)
# Locally (no wheels, peers from ~/.cache/pdserve/peers):
#   PY=~/.cache/pdserve/venv/bin/python PEERS_PYTHON=~/.cache/pdserve/peers/bin/python \
#     RATES=50,100 DURATION=3 WORKERS=2 ROUTER_WORKERS=1,2 deploy/gpu/ceiling.sh
set -uo pipefail
out="${OUT:-/tmp/pdserve-out}"; mkdir -p "$out"
py="${PY:-python3}"
peers="${PEERS_DIR:-/tmp/peers}"
export PYTHONPATH="/tmp/site:$PWD:$peers${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [[ -n "${PEER_WHEELS:-}" && ! -f "$peers/.pdserve-peers" ]]; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --target "$peers" "$PEER_WHEELS"/*.whl \
    && touch "$peers/.pdserve-peers"
fi
peers_python="${PEERS_PYTHON:-$py}"
for peer in sglang_router.launch_router vllm_router.launch_router; do  # say early what cannot run
  err="$out/import-$peer.txt"
  "$peers_python" -c "import $peer" 2> "$err" || echo "cannot import $peer (that router's rows will be missing): $(tail -1 "$err")"
  [[ -s "$err" ]] || rm -f "$err"
done

if [[ -z "${MODEL:-}" ]]; then  # the embedded default, if this host has (or can convert) it
  MODEL=$("$py" -m pdserve.tools.model 2>/dev/null | tail -1) || { echo "set MODEL=DIR (a tokenizer directory)"; exit 2; }
fi
export PDSERVE_MODEL="$MODEL"
# The router and sim workers must run without vLLM: a stand-in that fails on import proves it.
poison=$(mktemp -d); mkdir -p "$poison/vllm"
echo 'raise ImportError("pdserve ceiling: the router and sim workers must not import vllm")' > "$poison/vllm/__init__.py"
export PYTHONPATH="$poison:$PYTHONPATH"

ncpu=$(nproc)
if (( ncpu >= 16 )); then rc=0-3 wc=4-9 lc=10-15; else rc="" wc="" lc=""; fi
rc="${ROUTER_CORES-$rc}"; wc="${WORKER_CORES-$wc}"; lc="${LOAD_CORES-$lc}"
if [[ -n "$lc" ]]; then gens=$(taskset -c "$lc" nproc); else gens=2; fi
gens="${GENERATORS:-$gens}"
(lscpu; echo; free -g) > "$out/machine.txt" 2>&1

run=$(mktemp -d)
# timeout: a hard stop past the sweep's own budget (SIGTERM unwinds the bench: every fleet stops)
timeout -k 20 "${HARD_LIMIT_S:-460}" "$py" -m pdserve bench compare ceiling --out "$run" \
  --rates "${RATES:-50,100,150,200,300,400,700,1000,1400,2000,2800,4000}" --duration "${DURATION:-5}" \
  --workers "${WORKERS:-6}" --output-tokens "${OUTPUT_TOKENS:-8}" --stream-interval "${STREAM_INTERVAL:-1}" --router-workers "${ROUTER_WORKERS:-1,2,4}" --generators "$gens" \
  --router-cores "$rc" --worker-cores "$wc" --load-cores "$lc" --budget-s "${BUDGET_S:-400}" \
  --peers-python "$peers_python" --only "${ONLY:-}" > "$out/ceiling.log" 2>&1 &
bench=$!
trap 'kill -TERM $bench 2>/dev/null' INT TERM  # timeout passes it on to the bench
wait $bench; status=$?
cp "$run"/ceiling.json "$run"/ceiling.md "$out"/ 2>/dev/null
tar czf "$out/ceiling-logs.tar.gz" -C "$run" logs 2>/dev/null
rm -rf "$run" "$poison"
cat "$out/ceiling.md" 2>/dev/null || tail -30 "$out/ceiling.log"
exit $status
