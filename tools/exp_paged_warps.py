"""Device A/B: paged_attention_v1 (and v2) with the GQA kernel and the 4- and 8-warp head-as-M
tensor-core kernels on the issue's benchmark shapes plus a few head sizes, same inputs, same
process, alternating.

    PYTHONPATH=. python3 tools/exp_paged_warps.py
"""

import os

import torch

import cupy_ops
from cupy_ops import _bench
from cupy_ops.ops import paged_attention as pa

EXTRA = [("B64 L4096 d64", 64, 4096, 32, 8, 64, 16, "bfloat16", "auto"),
         ("B64 L4096 Hq128/8", 64, 4096, 128, 8, 128, 16, "bfloat16", "auto"),
         ("B32 L4096 d256", 32, 4096, 32, 8, 256, 16, "bfloat16", "auto"),
         ("B64 L4096 bs32", 64, 4096, 32, 8, 128, 32, "bfloat16", "auto"),
         ("B64 L4096 bs8", 64, 4096, 32, 8, 128, 8, "bfloat16", "auto"),
         ("B64 L4096 bs64", 64, 4096, 32, 8, 128, 64, "bfloat16", "auto"),
         ("fp8 B64 L4096 bs32", 64, 4096, 32, 8, 128, 32, "bfloat16", "fp8_e4m3"),
         ("fp8 B64 L4096 bs8", 64, 4096, 32, 8, 128, 8, "bfloat16", "fp8_e4m3")]
# ONLY="name,name": run these configs only; VERSIONS="v1": skip the v2 timings.


def main():
    only = os.environ.get("ONLY")
    for name, B, L, Hq, Hkv, D, BS, dtype, kv in _bench.PAGED_CONFIGS + EXTRA:
        if only and name not in only.split(","):
            continue
        elem = 1 if kv != "auto" else 2
        n = _bench.rotation_count(2 * B * L * Hkv * D * elem)
        sets = [_bench._paged_set(torch, B, L, Hq, Hkv, D, BS, dtype, kv, i) for i in range(n)]
        outs = [torch.empty_like(s[0]) for s in sets]
        P = -(-L // 512)
        scratch = [(torch.empty(B, Hq, P, device="cuda"), torch.empty(B, Hq, P, device="cuda"),
                    torch.empty(B, Hq, P, D, device="cuda", dtype=getattr(torch, dtype))) for _ in sets]
        one = torch.ones((), device="cuda")

        def v1(i):
            q, kc, vc, table, lens = sets[i % n]
            cupy_ops.paged_attention_v1(outs[i % n], q, kc, vc, Hkv, D ** -0.5, table, lens, BS, L,
                                        kv_cache_dtype=kv, k_scale=one, v_scale=one)

        def v2(i):
            q, kc, vc, table, lens = sets[i % n]
            cupy_ops.paged_attention_v2(outs[i % n], *scratch[i % n], q, kc, vc, Hkv, D ** -0.5, table,
                                        lens, BS, L, kv_cache_dtype=kv, k_scale=one, v_scale=one)
        res = {}
        defaults = (pa.MMA_WARPS, pa.V2_PART_CTAS_MIN_WAVES, pa.V2_PARTS_MIN_GROUP, pa.V2_MULTI_PART)
        for rnd in range(2):
            for kernel in os.environ.get("KERNELS", "gqa 4 8").split():
                pa.MMA_WARPS = kernel
                for vname, fn, parts in (("v1", v1, True), ("v2", v2, True), ("v2/part-CTAs", v2, False),
                                         ("v2/multi", v2, False)):
                    if vname not in os.environ.get("VERSIONS", "v1 v2 v2/part-CTAs v2/multi").split():
                        continue
                    pa.V2_PART_CTAS_MIN_WAVES = 10**9 if parts else 0
                    pa.V2_PARTS_MIN_GROUP = 0 if parts else 10**9
                    pa.V2_MULTI_PART = vname == "v2/multi"
                    pa._PLANS.clear()
                    res.setdefault((vname, kernel), []).append(_bench.gpu_time_us(fn, reps=60))
        pa.MMA_WARPS, pa.V2_PART_CTAS_MIN_WAVES, pa.V2_PARTS_MIN_GROUP, pa.V2_MULTI_PART = defaults
        pa._PLANS.clear()
        cells = [f"{v} {k} {min(t):.1f}" for (v, k), t in sorted(res.items())]
        print(f"{name:20s} " + " | ".join(cells), flush=True)
        sets = outs = scratch = None
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
