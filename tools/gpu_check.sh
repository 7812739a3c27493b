#!/usr/bin/env bash
# One device run: GPU tests, selftest and benchmarks, logs under $OUT (device tool) or ./gpu_out.
# Usage: bash tools/gpu_check.sh [pytest -k expression] ; env LARGE=1 adds the >2^31-element tests.
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 CUPY_OPS_CACHE_DIR=${CUPY_OPS_CACHE_DIR:-/tmp/cupy_ops_cache}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/device.txt"
python3 -m cupy_ops precompile ${PRECOMPILE_OPS:+--op $PRECOMPILE_OPS} --all -j 16 2>&1 | tail -1 | tee "$OUT/precompile.txt"
rc=0
python3 -m pytest -q -p no:cacheprovider tests ${1:+-k "$1"} 2>&1 | tee "$OUT/pytest.txt" | tail -25 || rc=1
if [ "${LARGE:-0}" = 1 ]; then
  python3 -m pytest -q -p no:cacheprovider -m large tests 2>&1 | tee "$OUT/pytest_large.txt" | tail -5 || rc=1
fi
python3 -m cupy_ops selftest 2>&1 | tee "$OUT/selftest.txt" || rc=1
if [ "${BENCH:-1}" = 1 ]; then
  for op in ${BENCH_OPS:-merge_attn_states paged_attention}; do
    python3 -m cupy_ops bench $op --json "$OUT/bench_$op.json" 2>&1 | tee "$OUT/bench_$op.txt" || rc=1
  done
fi
exit $rc
