# Device run for this session's branches: STEPS="topk_tests phases ncu bench_topk vs_tests bench_vs" OUT=... bash tools/dev_run.sh
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 CUPY_OPS_CACHE_DIR=/tmp/cupy_ops_cache
mkdir -p $OUT
nvidia-smi --query-gpu=name,clocks.sm --format=csv > $OUT/device.txt
has() { case " $STEPS " in *" $1 "*) return 0;; esac; return 1; }
if has vs_tests || has bench_vs; then
  if has vs_tests; then
    timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_vertical_slash_gpu.py tests/test_vertical_slash_op.py > $OUT/vs_tests.txt 2>&1; tail -3 $OUT/vs_tests.txt
  fi
  if has bench_vs; then
    timeout 150 python3 -m cupy_ops bench vertical_slash --json $OUT/bench_vs.json > $OUT/bench_vs.txt 2>&1; cat $OUT/bench_vs.txt
  fi
fi
if has topk_tests; then
  timeout 240 python3 -m pytest -q -p no:cacheprovider -x tests/test_top_k_per_row_gpu.py tests/test_determinism_gpu.py tests/test_large_gpu.py -k "top_k or topk" > $OUT/topk_tests.txt 2>&1
  tail -3 $OUT/topk_tests.txt
fi
if has ncu; then
  ROWS=128 COLS=8192 timeout 200 ncu --set full --import-source no -k regex:top_k --launch-skip 2 -c 1 -f -o /tmp/ncu_tk python3 tools/ncu_topk.py > /dev/null 2>&1
  (ncu -i /tmp/ncu_tk.ncu-rep --page details | grep -E 'Duration|IPC|Issued Warp|Eligible|Warp Cycles|Registers|Achieved Occ|Theoretical Occ'; python3 tools/ncu_stalls.py /tmp/ncu_tk.ncu-rep; python3 tools/ncu_hot.py /tmp/ncu_tk.ncu-rep 40) > $OUT/ncu_topk_short.txt 2>&1
  head -60 $OUT/ncu_topk_short.txt
fi
if has bench_topk; then
  timeout 150 python3 -m cupy_ops bench top_k_per_row --json $OUT/bench_topk.json > $OUT/bench_topk.txt 2>&1; cat $OUT/bench_topk.txt
fi
if has phases; then
 (while read -r args; do echo "== $args"; python3 tools/exp_top_k.py --no-timing $args; done <<'CONFIGS'
--case 3 --cluster 1 --threads 512
--case 3 --cluster 1 --threads 512 --define CUPY_OPS_TOPK_PREFETCH=0
--case 3 --cluster 1 --threads 1024
CONFIGS
 ) > $OUT/phases.txt 2>&1
  grep -E "==|median|timing" $OUT/phases.txt
fi
