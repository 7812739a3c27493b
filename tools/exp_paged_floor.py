"""Device experiment: does v1's wave model pick the best split? (docs/perf.md, paged attention)

paged_attention_v1 with the split forced to 1..6 pieces per sequence vs the wave model's choice,
on the shapes where the model matters. How fast the paged layout can be read at all (the bytes
floor in our access pattern, with plain loads, cp.async or bulk copies) is tools/exp_paged_tma.py.

    PYTHONPATH=. python3 tools/exp_paged_floor.py
"""

import torch

import cupy_ops
from cupy_ops import _bench
from cupy_ops.ops import paged_attention as pa

SHAPES = [("B64 L4096 bf16", 64, 4096, "auto"), ("B256 L1024 bf16", 256, 1024, "auto"),
          ("fp8 B64 L4096", 64, 4096, "fp8_e4m3"), ("B8 L4096 bf16", 8, 4096, "auto")]


def forced_splits():
    model = pa.v1_splits
    for name, B, L, kv in SHAPES:
        sets = [_bench._paged_set(torch, B, L, 32, 8, 128, 16, "bfloat16", kv, i)
                for i in range(_bench.rotation_count(2 * B * L * 8 * 128 * (1 if kv != "auto" else 2)))]
        outs = [torch.empty_like(s[0]) for s in sets]
        one = torch.ones((), device="cuda")

        def run(i):
            q, kc, vc, table, lens = sets[i % len(sets)]
            cupy_ops.paged_attention_v1(outs[i % len(sets)], q, kc, vc, 8, 128 ** -0.5, table, lens, 16, L,
                                        kv_cache_dtype=kv, k_scale=one, v_scale=one)
        results = []
        for pieces in (None, 1, 2, 3, 4, 6):
            if pieces is None:
                pa.v1_splits = model
            else:
                per = -(-L // pieces // 64) * 64
                pa.v1_splits = lambda *a, per=per: per  # noqa: E731
            pa._PLANS.clear()
            results.append(f"{'model' if pieces is None else pieces}: {_bench.gpu_time_us(run, reps=60):.1f}")
        pa.v1_splits = model
        pa._PLANS.clear()
        print(f"{name}: " + ", ".join(results), flush=True)
        sets = outs = None  # free before the next shape
        torch.cuda.empty_cache()


if __name__ == "__main__":
    forced_splits()
