#!/usr/bin/env bash
# Bring vLLM 0.26 (+ gRPC wheels) and NIXL to an offline GPU test machine, into /tmp/site.
# Usage: deploy/gpu/install.sh [BUNDLE_DIR] [NIXL_DIR]   (each step runs once per machine)
# BUNDLE_DIR: made by ../shared/gpu/build_vllm_bundle.py, plus grpcio/protobuf/grpcio-health-checking
# cp312 wheels in BUNDLE_DIR/whl (see docs/BENCHMARKS.md). NIXL_DIR: nixl + nixl-cu13 wheels.
set -euo pipefail
site=/tmp/site
mkdir -p "$site"
if [[ -n "${1:-}" && ! -f "$site/.pdserve-vllm" ]]; then
  tar xJf "$1"/vllm-*-sm90.tar.xz -C "$site"
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" "$1"/whl/*.whl
  touch "$site/.pdserve-vllm"
fi
if [[ -n "${2:-}" && ! -f "$site/.pdserve-nixl" ]]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" "$2"/*.whl
  touch "$site/.pdserve-nixl"
fi
