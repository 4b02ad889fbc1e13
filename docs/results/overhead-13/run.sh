#!/bin/bash
# Router overhead before and after issue #13 (docs/BENCHMARKS.md §4b′): `bench compare overhead`
# for the previous main (710d300, checked out in a worktree) and this checkout, alternating.
set -u
REPO=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
OLD=${OLD:-/tmp/pdserve-710d300}
PY=${PY:-$HOME/.cache/pdserve/venv/bin/python}
OUT=$(realpath -m "${OUT:-bench-out/overhead-13}")
[ -d "$OLD" ] || git -C "$REPO" worktree add --detach "$OLD" 710d300
mkdir -p "$OUT"
for round in 1 2 3 4; do
  for side in old new; do
    dir=$REPO; [ $side = old ] && dir=$OLD
    echo "== round $round $side $(date -u +%T)"
    (cd "$dir" && PYTHONPATH=$dir timeout 900 "$PY" -m pdserve bench compare overhead --out "$OUT/$side-$round" \
      > "$OUT/$side-$round.log" 2>&1; echo "exit $?")
    grep -A12 "added e2e p50" "$OUT/$side-$round.log" | grep -E "direct|pdserve"
  done
done
