#!/usr/bin/env bash
# Issue #18 item 5: the compose demo's `gpu` profile (router + prefill on GPU 0 + decode on GPU 1)
# run from deploy/compose/compose.yaml's own commands and environment as plain processes (the GPU
# machines have no Docker), then one streamed chat completion through the router.
# Usage: deploy/gpu/compose_topology.sh   (after deploy/gpu/install.sh; results in $OUT)
#   REDIS_PORT=6379  where a redis-server exists (else: no registry, static worker lists)
#   ENGINE=sim   the same services on the sim engine (as compose's sim profile), no GPU needed
#   MODEL_SHAPE=deploy/gpu/llama-3.1-8b-shape   config.json of the model; a byte-level tokenizer is
#                added (deploy/gpu/tokenized_shape.py) so the chat route has a template, and the
#                workers load dummy weights
# What had to be substituted for Docker is listed in $OUT/compose-chat.json ("substitutions").
# Every process started here is stopped on exit, failure included.
# $OUT gets compose-chat.json, compose-plan.json and compose-logs.tar.gz (the device returns 8 files).
set -uo pipefail
final="${OUT:-/tmp/pdserve-out}"; out="$final/compose-raw"; mkdir -p "$out"
here="$(cd "$(dirname "$0")" && pwd)"; repo="$(cd "$here/../.." && pwd)"
py="${PYTHON:-python3}"
export PYTHONPATH="/tmp/site:$repo" PYTHONUNBUFFERED=1 VLLM_USE_FLASHINFER_SAMPLER=0
work="$(mktemp -d /tmp/pdserve-compose.XXXXXX)"
pids=()
cleanup() {
  [[ ${#pids[@]} -gt 0 ]] && kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"
  for f in compose-chat.json compose-plan.json; do [[ -f "$out/$f" ]] && cp "$out/$f" "$final/"; done
  tar czf "$final/compose-logs.tar.gz" -C "$final" compose-raw && rm -rf "$out"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The `model` volume: a shape with a tokenizer (compose mounts PDSERVE_MODEL_DIR at /models/model).
"$py" "$here/tokenized_shape.py" "$repo/${MODEL_SHAPE:-deploy/gpu/llama-3.1-8b-shape}" "$work/model" || exit 1
export PDSERVE_SERVED_MODEL_NAME="${PDSERVE_SERVED_MODEL_NAME:-llama-3.1-8b-dummy}"

# The `secrets` volume, filled by compose's own secrets-init script (random secrets, Redis's CA and
# certificate by openssl), run here with /secrets -> $work/secrets and without its chown to Redis's uid.
mkdir -p "$work/secrets"
"$py" - "$repo/deploy/compose/compose.yaml" "$work/secrets" <<'PY' || exit 1
import subprocess, sys, yaml
script = yaml.safe_load(open(sys.argv[1]))["services"]["secrets-init"]["entrypoint"][2]
script = script.replace("$$", "$").replace("cd /secrets", f"cd {sys.argv[2]}").replace("chown 999 redis.key; ", "")
subprocess.run(["sh", "-c", script], check=True)
PY

# The redis service, as compose runs it (password through stdin, TLS only), where a redis-server exists.
redis_flag=()
if command -v redis-server > /dev/null; then
  s="$work/secrets"
  printf 'requirepass %s\n' "$(cat "$s/redis_password")" |
    redis-server - --save '' --appendonly no --maxmemory 512mb --maxmemory-policy noeviction \
      --bind 127.0.0.1 --port 0 --tls-port "${REDIS_PORT:-6379}" --tls-cert-file "$s/redis.crt" \
      --tls-key-file "$s/redis.key" --tls-ca-cert-file "$s/redis-ca.crt" --tls-auth-clients no \
      > "$out/compose-redis.log" 2>&1 &
  pids+=($!)
  redis_flag=(--redis-port "${REDIS_PORT:-6379}")
fi

engine=(); [[ "${ENGINE:-vllm}" == sim ]] && engine=(--engine sim)
"$py" "$here/compose_topology.py" "$out" --model-dir "$work/model" --secrets-dir "$work/secrets" \
  "${engine[@]}" "${redis_flag[@]}" &
pids+=($!)
wait "${pids[-1]}"
