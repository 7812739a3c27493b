#!/usr/bin/env bash
# compute-sanitizer over every op's GPU tests (issue #7): memcheck, racecheck, initcheck, synccheck.
# Usage (device machine): bash tools/sanitize.sh [pytest -k expression]   -> logs under $OUT
# Sanitized runs are 10-100x slower: the -k default keeps a few small cases per kernel path.
set -uo pipefail
OUT=${OUT:-sanitize_out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 CUPY_OPS_CACHE_DIR=${CUPY_OPS_CACHE_DIR:-/tmp/cupy_ops_cache}
# One to a few small cases of every kernel path of every op (cluster sizes auto and 2 for top-k).
SELECT=${1:-"(split_call or both_tensor_core or block_sizes or fp8_caches or v2_scratch or block_sparse or query_slice or (matches_reference and d128) or special_lse or strided_and_misaligned or lengths_around_k or tricky_values or decode_next_n or unvalidated_bad_ranges or golden_fixtures or invalid_values_without_validation or global_memory_kernel or bit_exact or threads_on) and not C1 and not C4 and not C8"}
# racecheck is the slowest tool (it tracks every shared-memory access): one case per kernel path.
RACE_SELECT=${1:-"(split_call and 128) or (both_tensor_core and 128-16 and auto) or (matches_reference and d128 and bfloat16) or (fp8_caches and bfloat16) or (v2_scratch and bfloat16) or (block_sparse and 1) or (lengths_around_k and auto) or (tricky_values and 70000 and auto) or (decode_next_n and 4 and auto) or (golden_fixtures and plain) or global_memory_kernel or (bit_exact and fp8) or (special_lse and float16)"}
python3 -m cupy_ops precompile --all -j 16 2>&1 | tail -1
rc=0
for tool in ${TOOLS:-memcheck racecheck initcheck synccheck}; do
  extra=""
  select=$SELECT
  [ "$tool" = racecheck ] && select=$RACE_SELECT
  [ "$tool" = memcheck ] && extra="--leak-check no"
  # --target-processes all: pytest may spawn workers; --error-exitcode makes failures visible.
  timeout ${TOOL_TIMEOUT:-1200} compute-sanitizer --tool "$tool" $extra --target-processes all --error-exitcode 99 \
    python3 -m pytest -q -p no:cacheprovider tests/test_*_gpu.py -k "$select" -m "not large" \
    > "$OUT/$tool.txt" 2>&1
  status=$?
  summary=$(grep -E "ERROR SUMMARY|passed|failed" "$OUT/$tool.txt" | tail -2 | tr '\n' ' ')
  echo "$tool: exit $status; $summary" | tee -a "$OUT/summary.txt"
  [ $status -ne 0 ] && rc=1
done
exit $rc
