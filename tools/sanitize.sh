#!/usr/bin/env bash
# compute-sanitizer over every op's GPU tests (issue #7): memcheck, racecheck, initcheck, synccheck.
# Usage (device machine): bash tools/sanitize.sh [pytest -k expression]   -> logs under $OUT
# Sanitized runs are 10-100x slower: the -k default keeps one small case per op.
set -uo pipefail
OUT=${OUT:-sanitize_out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 CUPY_OPS_CACHE_DIR=${CUPY_OPS_CACHE_DIR:-/tmp/cupy_ops_cache}
SELECT=${1:-"cupy_inputs or threads_on or current_stream or fixtures or lengths_around_k and 512 or small"}
python3 -m cupy_ops precompile --all -j 16 2>&1 | tail -1
rc=0
for tool in memcheck racecheck initcheck synccheck; do
  extra=""
  [ "$tool" = memcheck ] && extra="--leak-check no"
  # --target-processes all: pytest may spawn workers; --error-exitcode makes failures visible.
  timeout 1200 compute-sanitizer --tool "$tool" $extra --target-processes all --error-exitcode 99 \
    python3 -m pytest -q -p no:cacheprovider -x tests -k "$SELECT" -m "not large" \
    > "$OUT/$tool.txt" 2>&1
  status=$?
  summary=$(grep -E "ERROR SUMMARY|passed|failed" "$OUT/$tool.txt" | tail -2 | tr '\n' ' ')
  echo "$tool: exit $status; $summary" | tee -a "$OUT/summary.txt"
  [ $status -ne 0 ] && rc=1
done
exit $rc
