#!/usr/bin/env bash
# Device A/B of two top-k builds in one process order: this tree ("new") against ab_old/, a copy
# of an earlier commit made before the device call (untracked, so the device tool carries it):
#   rm -rf ab_old && mkdir ab_old && git archive <commit> | tar -x -C ab_old
# With arguments, each is also run as "new" built with that define (tools/exp_top_k.py --define),
# e.g. bash tools/ab_topk.sh CUPY_OPS_EXP_TOPK_SOMETHING: staged switches against this tree's default
# (without ab_old/ the "old" build is skipped).
# Event times and set checks of tools/exp_top_k.py, two rounds, then this tree's phase marks.
export PYTHONUNBUFFERED=1 CUPY_OPS_CACHE_DIR=${CUPY_OPS_CACHE_DIR:-/tmp/cupy_ops_cache}
exp() {  # exp DIR [--define X]
  local d=$1; shift
  (cd "$d" && PYTHONPATH=$PWD python3 tools/exp_top_k.py --no-timing --check --reps 200 "$@"; \
   PYTHONPATH=$PWD python3 tools/exp_top_k.py --no-timing --check --reps 200 --threads 1024 --case 0 "$@")
}
for r in 1 2; do
  echo "== round $r new"; exp .
  [ -d ab_old ] && { echo "== round $r old"; exp ab_old; }
  for d in "$@"; do echo "== round $r new $d"; exp . --define "$d"; done
done
for c in 3 1; do echo "== marks case $c"; PYTHONPATH=$PWD python3 tools/exp_top_k.py --case $c --reps 5; done
