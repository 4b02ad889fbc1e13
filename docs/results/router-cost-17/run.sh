#!/bin/bash
# Router cost per request before and after issue #17's cuts (docs/BENCHMARKS.md §10): ab.py from the
# main this branch started from (6a9e414, checked out in a worktree) and from this checkout, alternating.
set -u
REPO=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
OLD=${OLD:-/tmp/pdserve-6a9e414}
PY=${PY:-$HOME/.cache/pdserve/venv/bin/python}
OUT=$(realpath -m "${OUT:-bench-out/router-cost-17}")
AB=$REPO/docs/results/router-cost-17/ab.py
[ -d "$OLD" ] || git -C "$REPO" worktree add --detach "$OLD" 6a9e414
mkdir -p "$OUT"
for round in $(seq "${ROUNDS:-4}"); do
  for side in old new; do
    dir=$REPO; [ $side = old ] && dir=$OLD
    line=$(cd "$dir" && PYTHONPATH=$dir timeout 600 "$PY" "$AB" "$OUT/$side-$round" "${REQUESTS:-300}" 2> "$OUT/$side-$round.log" | tail -1)
    echo "$round $side $(date -u +%T) $line" | tee -a "$OUT/results.txt"
  done
done
