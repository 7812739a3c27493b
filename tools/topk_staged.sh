#!/usr/bin/env bash
# Device A/B of docs/perf.md's staged top-k experiment switches against the default build, in one
# process order, two rounds, index sets checked against torch.topk (tools/exp_top_k.py); case 0
# (64x131072) also at the op's 1024 threads; then phase marks of the default and of all switches.
# Usage (device machine, repository root): bash tools/topk_staged.sh [SWITCH ...]
export PYTHONPATH=${PYTHONPATH:-$PWD} PYTHONUNBUFFERED=1
SWITCHES=("$@")
[ ${#SWITCHES[@]} -eq 0 ] && SWITCHES=(${TOPK_SWITCHES:-})  # none staged now (tenth session)
[ ${#SWITCHES[@]} -eq 0 ] && { echo "no switches given"; exit 2; }
ALL=()
for s in "${SWITCHES[@]}"; do ALL+=(--define "$s"); done
run() {  # run LABEL [--define X ...]
  local label=$1; shift
  echo "== $label"
  python3 tools/exp_top_k.py --no-timing --check --reps 200 "$@"
  python3 tools/exp_top_k.py --no-timing --check --reps 200 --threads 1024 --case 0 "$@"
}
for r in 1 2; do
  run "round $r default"
  for s in "${SWITCHES[@]}"; do run "round $r $s" --define "$s"; done
  [ ${#SWITCHES[@]} -gt 1 ] && run "round $r all" "${ALL[@]}"
done
for c in 3 1; do
  echo "== marks case $c default"; python3 tools/exp_top_k.py --case $c --reps 5
  echo "== marks case $c all"; python3 tools/exp_top_k.py --case $c --reps 5 "${ALL[@]}"
done
