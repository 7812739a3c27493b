set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 CUPY_OPS_CACHE_DIR=/tmp/cupy_ops_cache
mkdir -p $OUT
ROWS=128 COLS=8192 timeout 200 ncu --set full --import-source no -k regex:top_k --launch-skip 2 -c 1 -f -o /tmp/ncu_tk python3 tools/ncu_topk.py > /dev/null 2>&1
(ncu -i /tmp/ncu_tk.ncu-rep --page details | grep -E 'Duration|IPC|Issued Warp|Eligible|Warp Cycles|Registers|Achieved Occ|Theoretical Occ'; python3 tools/ncu_stalls.py /tmp/ncu_tk.ncu-rep; python3 tools/ncu_hot.py /tmp/ncu_tk.ncu-rep 60 $OUT/ncu_src.csv) > $OUT/ncu_topk_short.txt 2>&1
cat $OUT/ncu_topk_short.txt | head -100
