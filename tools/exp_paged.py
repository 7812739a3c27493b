"""Device experiment: GQA decode kernel configurations outside the variant table (pipeline depth,
hence CTAs per SM) on the issue's benchmark shapes and two block sizes.

Builds instantiations through nvrtc_compile (only template arguments change) and times v1 with
the bench harness against the table's own choice in the same process.

    PYTHONPATH=. python3 tools/exp_paged.py
"""
import torch

from cupy_ops import _bench, _device, _interop, _runtime
from cupy_ops.ops import paged_attention as pa

CONFIGS = [("B64 L4096", 64, 4096, 32, 8, 128, 16, "bfloat16", "auto", (2, 3)),
           ("B64 L4096 bs32", 64, 4096, 32, 8, 128, 32, "bfloat16", "auto", (2, 3)),
           ("B256 L1024", 256, 1024, 32, 8, 128, 16, "bfloat16", "auto", (2, 3)),
           ("fp8e4m3 B64 L4096", 64, 4096, 32, 8, 128, 16, "bfloat16", "fp8_e4m3", (2, 3, 4)),
           ("B32 L4096 d256", 32, 4096, 32, 8, 256, 16, "bfloat16", "auto", (2, 3))]


def main():
    print(_bench.device_line(_bench.copy_bandwidth_gbs()))
    src = _runtime.read_source("paged_attention_gqa.cu")
    for name, B, L, Hq, Hkv, D, BS, dtype, kv, stage_list in CONFIGS:
        sets = [_bench._paged_set(torch, B, L, Hq, Hkv, D, BS, dtype, kv, i) for i in range(2)]
        one = torch.ones((), device="cuda")
        outs = [torch.empty_like(s[0]) for s in sets]
        kvk = pa.KV_KINDS[kv]
        elem = 1 if kvk != "auto" else 2
        cells = []
        for stages in stage_list:
            v = pa.GqaVariant(dtype, kvk, dtype, D, stages, 8, exact=True)
            expr = pa.GQA_FAMILY.name_expression(v)
            c = _runtime.nvrtc_compile(src, [expr], _runtime.compile_options(_device.arch(0)))
            smem = pa.smem_bytes(v, D, pa.MMA_TILE, elem)
            k = _device.load_function(0, c.binary, c.lowered_names[expr])
            plans = []
            for (q, kc, vc, table, lens), out in zip(sets, outs):
                a = pa._validate((out, None, None, None, q, kc, vc, table, lens, None, one, one),
                                 ("paged_attention_v1", Hkv, D ** -0.5, BS, L, kv, 0, 0, 0, 64, 0))
                target = (a.out.ptr, 0, 0, a.out.strides[0], a.out.strides[1], 0)
                split = -(-L // 64) * 64
                plans.append(_interop.LaunchPlan(pa.MMA_DECODE_PARAMS, k, a.query, (B, Hkv, 1), (128,),
                                                 pa._decode_args(a, target, 1, split, 64) + (split, 0, 0, 0, 0),
                                                 smem))
            try:
                us = _bench.gpu_time_us(lambda i: plans[i % 2].run(), reps=60)
                cells.append(f"stages {stages} ({smem // 1024} KB): {us:.1f}")
            except Exception as e:  # noqa: BLE001 (an experiment: report and go on)
                cells.append(f"stages {stages}: {type(e).__name__} {e}")
        print(f"{name:20s} " + " | ".join(cells), flush=True)
        del sets
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
