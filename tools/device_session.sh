#!/usr/bin/env bash
# One device run that re-checks a HEAD (device tool): GPU tests (+ opt-in large ones),
# notebooks on the GPU, selftest, host-time breakdown, and the wheel in a fresh venv.
# Logs under $OUT. Each step has its own time limit so one hang cannot eat the run.
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 CUPY_OPS_CACHE_DIR=${CUPY_OPS_CACHE_DIR:-/tmp/cupy_ops_cache}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv > "$OUT/device.txt"
step() { local name=$1 limit=$2; shift 2; local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1; local rc=$?
  echo "$name: rc=$rc $((SECONDS - t0))s $(tail -1 "$OUT/$name.txt")" | tee -a "$OUT/summary.txt"; }
step precompile 170 python3 -m cupy_ops precompile --all -j 16
GPU_FILES=$(ls tests/test_*_gpu.py | tr '\n' ' ')
step pytest_gpu 300 python3 -m pytest -q -p no:cacheprovider -rs $GPU_FILES tests/test_torch_ops.py \
  tests/test_vllm_compat.py tests/test_functional.py tests/test_notebooks.py tests/test_cli.py \
  tests/test_runtime.py tests/test_multi_device.py tests/test_vertical_slash_op.py
step pytest_large 70 python3 -m pytest -q -p no:cacheprovider -m large tests/test_large_gpu.py \
  tests/test_merge_attn_states_gpu.py
step selftest 30 python3 -m cupy_ops selftest
step host_time 40 python3 tools/exp_host_time.py
wheel() { rm -rf /tmp/whl /tmp/wv && python3 -m pip wheel --no-deps --no-build-isolation -q -w /tmp/whl . &&
  python3 -m venv --system-site-packages /tmp/wv && /tmp/wv/bin/pip install -q --no-deps /tmp/whl/*.whl &&
  cd /tmp && env -u PYTHONPATH /tmp/wv/bin/python -c "import cupy_ops,sys; print(cupy_ops.__file__)" &&
  env -u PYTHONPATH /tmp/wv/bin/python -m cupy_ops selftest; }
step wheel 60 bash -c "$(declare -f wheel); wheel"
