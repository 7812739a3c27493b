"""Device experiment: paged decode kernel configurations on the issue's benchmark shapes.

Builds variants outside the table through nvrtc_compile (source edits for warps/tile are not
needed: only template arguments change) and times them with the bench harness.
"""
import torch

from cupy_ops import _bench, _device, _interop, _runtime
from cupy_ops.ops import paged_attention as pa

CONFIGS = [("B64 L4096", 64, 4096, 32, 8, 128, 16, "bfloat16", "auto"),
           ("B8 L4096", 8, 4096, 32, 8, 128, 16, "bfloat16", "auto"),
           ("fp8e4m3 B64 L4096", 64, 4096, 32, 8, 128, 16, "bfloat16", "fp8_e4m3")]


def main():
    copy = _bench.copy_bandwidth_gbs()
    print(f"copy {copy:.0f} GB/s")
    for name, B, L, Hq, Hkv, D, BS, dtype, kv in CONFIGS:
        sets = [_bench._paged_set(torch, B, L, Hq, Hkv, D, BS, dtype, kv, i) for i in range(2)]
        one = torch.ones((), device="cuda")
        outs = [torch.empty_like(s[0]) for s in sets]
        kvk = pa.KV_KINDS[kv]
        print(name)
        for stages, order in ((2, "random"), (3, "random"), (3, "sequential")):
            if order == "sequential":
                for q, kc, vc, table, lens in sets:
                    table.copy_(torch.arange(table.numel(), device="cuda", dtype=torch.int32).view_as(table))
            v = pa.MmaVariant(dtype, kvk, dtype, 128, stages)
            src = _runtime.read_source("paged_attention.cu")
            expr = pa.MMA_FAMILY.name_expression(v)
            c = _runtime.nvrtc_compile(src, [expr], _runtime.compile_options(_device.arch(0)))
            k = _device.load_function(0, c.binary, c.lowered_names[expr])
            plans = []
            for (q, kc, vc, table, lens), out in zip(sets, outs):
                a = pa._validate((out, None, None, None, q, kc, vc, table, lens, None, one, one),
                                 ("paged_attention_v1", Hkv, D ** -0.5, BS, L, kv, 0, 0, 0, 64, 0))
                elem = 1 if kvk != "auto" else 2
                smem = pa.smem_bytes(v, D, pa.MMA_TILE, elem)
                grid = (B, Hkv, 1)
                target = (a.out.ptr, 0, 0, a.out.strides[0], a.out.strides[1], 0)
                split = -(-L // 64) * 64
                plans.append(_interop.LaunchPlan(pa.MMA_DECODE_PARAMS, k, a.query, grid, (128,),
                                                 pa._decode_args(a, target, 1, split, 64) + (split, 0, 0, 0, 0), smem))
            us = _bench.gpu_time_us(lambda i: plans[i % 2].run(), reps=50)
            print(f"  stages {stages}, {order} block table: {us:.1f} us (smem {smem // 1024} KB)", flush=True)
        del sets
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
