"""Device A/B: the 8-warp v1 kernel with and without -DCUPY_OPS_PAGED_TABLE_PREFETCH (block-table
entries read one tile ahead), on shapes where v1 runs unsplit. Same inputs, same process.

    PYTHONPATH=. python3 tools/exp_paged_prefetch.py
"""
import torch

from cupy_ops import _bench, _device, _interop, _runtime
from cupy_ops.ops import paged_attention as pa

SHAPES = [("B64 L4096", 64, 4096, 128, 16), ("B256 L1024", 256, 1024, 128, 16),
          ("B32 L4096 d256", 32, 4096, 256, 16), ("B64 L4096 bs32", 64, 4096, 128, 32)]


def kernel(variant, defines):
    src = _runtime.read_source("paged_attention_mma.cu")
    expr = pa.MMA8_FAMILY.name_expression(variant)
    c = _runtime.nvrtc_compile(src, [expr], _runtime.compile_options(_device.arch(0)) + tuple(defines))
    return _device.load_function(0, c.binary, c.lowered_names[expr])


def main():
    Hq, Hkv = 32, 8
    for name, B, L, D, BS in SHAPES:
        n = _bench.rotation_count(2 * B * L * Hkv * D * 2)
        sets = [_bench._paged_set(torch, B, L, Hq, Hkv, D, BS, "bfloat16", "auto", i) for i in range(n)]
        outs = [torch.empty_like(s[0]) for s in sets]
        one = torch.ones((), device="cuda")
        v = pa.choose_variant("bfloat16", "auto", D, Hq // Hkv, "bfloat16", False)
        smem = pa.smem_bytes(v, D, pa.MMA_TILE, 2, False, True)
        res = {}
        for label, defines in (("base", ()), ("prefetch", ("-DCUPY_OPS_PAGED_TABLE_PREFETCH",))):
            k = kernel(v, defines)
            plans = []
            for (q, kc, vc, table, lens), out in zip(sets, outs):
                a = pa._validate((out, None, None, None, q, kc, vc, table, lens, None, one, one),
                                 ("paged_attention_v1", Hkv, D ** -0.5, BS, L, "auto", 0, 0, 0, 64, 0))
                target = (a.out.ptr, 0, 0, a.out.strides[0], a.out.strides[1], 0)
                split = -(-L // 64) * 64
                plans.append(_interop.LaunchPlan(pa.MMA_DECODE_PARAMS, k, a.query, (B, Hkv, 1), (pa.MMA8_THREADS,),
                                                 pa._decode_args(a, target, 1, split, 64) + (split,), smem))
            res[label] = plans
        times = {label: [] for label in res}
        for _ in range(3):
            for label, plans in res.items():
                times[label].append(_bench.gpu_time_us(lambda i: plans[i % n].run(), reps=60))
        ref = outs[0].clone()
        res["base"][0].run()
        torch.cuda.synchronize()
        a_out = outs[0].clone()
        res["prefetch"][0].run()
        torch.cuda.synchronize()
        same = torch.equal(a_out, outs[0])
        print(f"{name:18s} " + " | ".join(f"{lb} {min(t):.1f}" for lb, t in times.items())
              + f" | outputs equal: {same}", flush=True)
        del ref
        sets = outs = None
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
