export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 CUPY_OPS_CACHE_DIR=/tmp/cupy_ops_cache
mkdir -p $OUT
timeout 200 bash -c "ncu --set full --import-source no -k regex:top_k --launch-skip 2 -c 1 -f -o /tmp/ncu_tk python3 tools/ncu_topk.py > /dev/null && ncu -i /tmp/ncu_tk.ncu-rep --page details | grep -E 'Duration|Throughput|IPC|Issued|Eligible|Warp Cycles|Registers|Achieved|Theoretical Occ|Stall' ; python3 tools/ncu_hot.py /tmp/ncu_tk.ncu-rep 70" > $OUT/ncu_topk.txt 2>&1
tail -80 $OUT/ncu_topk.txt
