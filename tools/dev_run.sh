set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 CUPY_OPS_CACHE_DIR=/tmp/cupy_ops_cache
mkdir -p $OUT
nvidia-smi --query-gpu=name,clocks.sm --format=csv > $OUT/device.txt
timeout 240 python3 -m pytest -q -p no:cacheprovider -x tests/test_top_k_per_row_gpu.py tests/test_determinism_gpu.py tests/test_large_gpu.py -k "top_k or topk" > $OUT/topk_tests.txt 2>&1
tail -3 $OUT/topk_tests.txt
(for d in 1 0; do echo "== REGISTER_PATH=$d"; python3 tools/exp_top_k.py --case 3 --define CUPY_OPS_TOPK_REGISTER_PATH=$d; python3 tools/exp_top_k.py --case 3 --no-timing --define CUPY_OPS_TOPK_REGISTER_PATH=$d; done
 for ct in "1 8 512" "1 4 512" "1 2 1024" "1 4 1024" "0 8 1024" "0 2 1024"; do set -- $ct; echo "== case $1 cluster $2 threads $3"; python3 tools/exp_top_k.py --case $1 --cluster $2 --threads $3; python3 tools/exp_top_k.py --case $1 --no-timing --cluster $2 --threads $3; done) > $OUT/phases.txt 2>&1
timeout 150 python3 -m cupy_ops bench top_k_per_row --json $OUT/bench_topk.json > $OUT/bench_topk.txt 2>&1
cat $OUT/phases.txt $OUT/bench_topk.txt
