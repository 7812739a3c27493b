"""Device experiment: v2's in-launch partition merge (last CTA per (sequence, head chunk)) on
grids of several waves, against the reduce kernel, on the bench shapes (same run).

    PYTHONPATH=. python3 tools/exp_paged_v2_fused.py
"""
from cupy_ops import _bench
from cupy_ops.ops import paged_attention as pa


def main():
    copy = _bench.copy_bandwidth_gbs()
    for waves in (1, 1000):
        pa.FUSED_MERGE_MAX_WAVES = waves
        pa._PLANS.clear()
        for row in _bench.bench_paged(copy):
            print(f"fused merge up to {waves:4d} waves: {row['config']:20s} v1 {row['v1_us']:7.1f}  v2 {row['v2_us']:7.1f}",
                  flush=True)


if __name__ == "__main__":
    main()
