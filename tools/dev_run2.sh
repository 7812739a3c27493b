set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 CUPY_OPS_CACHE_DIR=/tmp/cupy_ops_cache
mkdir -p $OUT
(python3 tools/exp_top_k.py --case 3
 python3 tools/exp_top_k.py --case 3 --define CUPY_OPS_TOPK_EXP_NO_HIST=1
 python3 tools/exp_top_k.py --case 0 --cluster 8 --threads 1024
 python3 tools/exp_top_k.py --case 1 --cluster 4 --threads 512) > $OUT/phases2.txt 2>&1
grep -E "timing|median" $OUT/phases2.txt
cp tools/vs_v3_vertical_slash.cu cuda_src/vertical_slash.cu
timeout 200 compute-sanitizer --tool memcheck --show-backtrace device --print-limit 3 python3 -m pytest -q -p no:cacheprovider -x tests/test_vertical_slash_gpu.py -k "golden_fixtures and plain-A" > $OUT/vs_memcheck.txt 2>&1
grep -E "Invalid|at 0x|by thread|Address|ERROR SUMMARY|passed|failed" $OUT/vs_memcheck.txt | head -30
