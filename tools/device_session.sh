#!/usr/bin/env bash
# One device run that re-checks a HEAD (device tool). Steps (default: all but sanitize, launch):
#   precompile pytest_gpu pytest_large selftest host_time wheel launch launch_floor sanitize racecheck initcheck
#   topk_tests topk_phases topk_spec topk_staged sanitize_topk ncu_vs ncu_topk ncu_paged paged_parts paged_repeat gqa_stages paged_floor paged8_tests paged_warps paged_tests bench_paged bench_paged2 bench_paged_noown
#   sanitize_paged sanitize_vs bench_topk bench_topk_nospec bench_vs bench_vs_global bench_merge
# e.g. STEPS="sanitize launch wheel" bash tools/device_session.sh; with
# CUPY_OPS_EXPERIMENT_DEFINES=CUPY_OPS_EXP_... every step runs that experimental kernel path.
# Logs under $OUT, one line per step in $OUT/summary.txt (the rest packed into $OUT/all.tgz when
# over 8 files); each step has its own time limit so one hang cannot eat the run.
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 CUPY_OPS_CACHE_DIR=${CUPY_OPS_CACHE_DIR:-/tmp/cupy_ops_cache}
STEPS=${STEPS:-precompile pytest_gpu pytest_large selftest host_time wheel}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv > "$OUT/device.txt"
# SM clock, power and temperature once a second for the whole run (lent cards differ: perf.md).
nvidia-smi --query-gpu=clocks.sm,power.draw,temperature.gpu --format=csv,noheader,nounits -lms 1000 \
  > "$OUT/clocks.csv" 2>/dev/null &
CLOCKS_PID=$!
step() { local name=$1 limit=$2; shift 2; local t0=$SECONDS
  case " $STEPS " in *" $name "*) ;; *) return ;; esac
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1; local rc=$?
  echo "$name: rc=$rc $((SECONDS - t0))s $(tail -1 "$OUT/$name.txt")" | tee -a "$OUT/summary.txt"; }
wheel() { rm -rf /tmp/whl /tmp/wv && python3 -m pip wheel --no-deps --no-build-isolation -q -w /tmp/whl . &&
  python3 -m venv --without-pip /tmp/wv &&
  site=$(/tmp/wv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") &&
  python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" > "$site/machine_packages.pth" &&
  python3 -m pip install -q --no-deps --no-index --target "$site" /tmp/whl/*.whl &&
  cd /tmp && env -u PYTHONPATH /tmp/wv/bin/python -c "import cupy_ops; print(cupy_ops.__file__)" &&
  env -u PYTHONPATH /tmp/wv/bin/python -m cupy_ops selftest; }
# ncu_profile KERNEL_REGEX LAUNCHES_TO_SKIP SCRIPT [CSV]: one launch's headline metrics, stall
# reasons and hottest SASS lines (CSV: also keep the whole SASS source page there). NCU_EXTRA: more
# ncu options, e.g. "--warp-sampling-interval 0" for the densest stall sampling of a short kernel.
ncu_profile() { ncu --set full ${NCU_EXTRA:-} --import-source no -k "regex:$1" --launch-skip "$2" -c 1 -f -o /tmp/ncu_prof \
    python3 "$3" > /dev/null &&
  ncu -i /tmp/ncu_prof.ncu-rep --page details |
    grep -E 'Duration|Throughput|IPC|Issued|Eligible|Warp Cycles|Registers|Achieved|Theoretical Occ|Stall';
  python3 tools/ncu_stalls.py /tmp/ncu_prof.ncu-rep; python3 tools/ncu_hot.py /tmp/ncu_prof.ncu-rep 40 ${4:+"$4"}; }
GPU_FILES=$(ls tests/test_*_gpu.py | tr '\n' ' ')
step precompile 300 python3 -m cupy_ops precompile --all -j 16
step pytest_gpu 300 python3 -m pytest -q -p no:cacheprovider -rs $GPU_FILES tests/test_torch_ops.py \
  tests/test_vllm_compat.py tests/test_functional.py tests/test_notebooks.py tests/test_cli.py \
  tests/test_runtime.py tests/test_multi_device.py tests/test_vertical_slash_op.py
step pytest_large 70 python3 -m pytest -q -p no:cacheprovider -m large tests/test_large_gpu.py \
  tests/test_merge_attn_states_gpu.py
step selftest 30 python3 -m cupy_ops selftest
step host_time 40 python3 tools/exp_host_time.py
step launch 40 python3 tools/exp_launch.py
step launch_floor 60 python3 tools/exp_launch_floor.py
step wheel 60 bash -c "$(declare -f wheel); wheel"
step sanitize 480 env OUT="$OUT/sanitize" TOOL_TIMEOUT=115 bash tools/sanitize.sh
step initcheck 120 env OUT="$OUT/initcheck" TOOLS=initcheck TOOL_TIMEOUT=110 bash tools/sanitize.sh
step topk_tests 200 python3 -m pytest -q -p no:cacheprovider -x tests/test_top_k_per_row_gpu.py \
  tests/test_determinism_gpu.py tests/test_large_gpu.py -k "top_k or topk"
step topk_phases 120 bash -c "for t in 512 1024; do python3 tools/exp_top_k.py --threads \$t; done"
# topk_spec: decode rows laid out for logits.shape[1] before seq_lens arrives (default) vs from
# their own length (--no-spec), A/B in one process order, two rounds, sets checked; case 0 also
# at the op's 1024 threads
step topk_spec 300 bash -c "for r in 1 2; do for d in '' '--no-spec'; do echo \"== round \$r \$d\"; \
  python3 tools/exp_top_k.py --no-timing --check --reps 200 \$d; \
  python3 tools/exp_top_k.py --no-timing --check --reps 200 --threads 1024 --case 0 \$d; done; done"
# topk_staged: the switches in TOPK_SWITCHES (docs/perf.md's staged top-k experiments) A/B against
# the default, and against ab_old/ where there is one (tools/ab_topk.sh)
step topk_staged 480 bash tools/ab_topk.sh ${TOPK_SWITCHES:-}
# sanitize_topk: memcheck and racecheck on the decode layouts (speculative loads read up to
# logits.shape[1] before seq_lens is known; rows past it are laid out again)
step sanitize_topk 300 bash -c "for t in memcheck racecheck; do compute-sanitizer --tool \$t --error-exitcode 99 \
  python3 -m pytest -q -p no:cacheprovider tests/test_top_k_per_row_gpu.py \
  -k '(misaligned_rows or longer_than_shape or garbage_past_row_end or (decode_next_n and 4)) and (auto or C2)' 2>&1 | tail -3; done"
step ncu_vs 200 bash -c "$(declare -f ncu_profile); ncu_profile vertical 1 tools/ncu_vs.py $OUT/ncu_sass_vs.csv"
# ncu_paged: v1 and v2 (OPS) at B64 L4096 and B256 L1024, SASS pages kept as $OUT/ncu_sass_OP_BN.csv
step ncu_paged 400 bash -c "$(declare -f ncu_profile); for s in '64 4096' '256 1024'; do set -- \$s; for op in ${OPS:-v1 v2}; do echo \"== \$op B\$1 L\$2\"; OP=\$op B=\$1 L=\$2 ncu_profile paged_decode_gqa 2 tools/ncu_paged.py $OUT/ncu_sass_\${op}_B\$1.csv; done; done"
step ncu_topk 200 bash -c "$(declare -f ncu_profile); ROWS=\${ROWS:-128} COLS=\${COLS:-8192} ncu_profile top_k 2 tools/ncu_topk.py $OUT/ncu_sass_topk.csv"
step paged_parts 300 env SWITCHES="${SWITCHES:-- CUPY_OPS_EXP_SKIP_MATH}" \
  python3 tools/exp_paged_parts.py
step paged_repeat 300 python3 tools/exp_paged_repeat.py
step gqa_stages 200 python3 tools/exp_paged.py
step paged_floor 200 python3 tools/exp_paged_floor.py
step paged8_tests 200 env CUPY_OPS_PAGED_WARPS=8 python3 -m pytest -q -p no:cacheprovider -x tests/test_paged_attention_gpu.py
step paged_warps 200 python3 tools/exp_paged_warps.py
step paged_tests 200 python3 -m pytest -q -p no:cacheprovider tests/test_paged_attention_gpu.py
step bench_paged 200 python3 -m cupy_ops bench paged_attention --json "$OUT/bench_paged.json"
step bench_paged2 200 python3 -m cupy_ops bench paged_attention --json "$OUT/bench_paged2.json"
step bench_paged_noown 200 python3 -c "import sys; from cupy_ops.ops import paged_attention as pa; pa.V2_OWN_MERGE = False; \
from cupy_ops.__main__ import main; sys.exit(main(['bench', 'paged_attention', '--json', '$OUT/bench_paged_noown.json']))"
step sanitize_paged 400 env OUT="$OUT/sanitize_paged" TOOLS="memcheck racecheck" TOOL_TIMEOUT=190 bash tools/sanitize.sh \
  "(split_call and 128 and auto) or (both_tensor_core and gqa and (auto-128-16 or fp8_e4m3) and multi_part) or scratch_contract or unaligned_tmp_out or (partition_rounds and (auto-128-16 or auto-80-1 or fp8_e4m3))"
step sanitize_vs 300 env OUT="$OUT/sanitize_vs" TOOLS="memcheck racecheck" TOOL_TIMEOUT=140 bash tools/sanitize.sh \
  "test_vertical_slash_gpu and (golden or random_sweep and 64-3)"
step bench_topk 150 python3 -m cupy_ops bench top_k_per_row --json "$OUT/bench_topk.json"
step bench_topk_nospec 150 python3 -c "import sys; from cupy_ops.ops import top_k_per_row as m; m.SPECULATIVE_DECODE_LOADS = False; \
from cupy_ops.__main__ import main; sys.exit(main(['bench', 'top_k_per_row', '--json', '$OUT/bench_topk_nospec.json']))"
step bench_vs 150 python3 -m cupy_ops bench vertical_slash --json "$OUT/bench_vs.json"
# bench_vs_global: every case on the global-memory kernel (no staging; _smem_limit 0, as the tests force it)
step bench_vs_global 150 python3 -c "import sys; from cupy_ops.ops import vertical_slash as vs; vs._smem_limit = lambda d: 0; \
from cupy_ops.__main__ import main; sys.exit(main(['bench', 'vertical_slash', '--json', '$OUT/bench_vs_global.json']))"
step bench_merge 150 python3 -m cupy_ops bench merge_attn_states --json "$OUT/bench_merge.json"

step racecheck 300 env OUT="$OUT/racecheck" TOOLS=racecheck TOOL_TIMEOUT=290 bash tools/sanitize.sh

kill $CLOCKS_PID 2>/dev/null
awk -F', *' '$1 > 1000 {print $1}' "$OUT/clocks.csv" | sort -n |
  awk '{v[NR] = $1} END {if (NR) print "SM clock while busy (MHz, 1 s samples): min " v[1] ", median " v[int((NR + 1) / 2)] ", max " v[NR]}' |
  tee -a "$OUT/summary.txt"

# The device tool brings back at most 8 files from $OUT: pack everything but the summary when more.
if [ "$(find "$OUT" -type f | wc -l)" -gt 8 ]; then
  tar czf /tmp/device_session.tgz -C "$OUT" --exclude summary.txt . &&
    find "$OUT" -type f ! -name summary.txt -delete && find "$OUT" -mindepth 1 -type d -empty -delete &&
    mv /tmp/device_session.tgz "$OUT/all.tgz"
fi
