"""Device check: is the op's output the same on every run, and right? For a few bench shapes the
op's plan is run many times (outputs poisoned before each run, a second plan interleaved as the
benchmarks do), each result compared with the float64 reference; then the same after swapping in
a fresh build of the same instantiation, as tools/exp_paged_parts.py does.

    PYTHONPATH=. python3 tools/exp_paged_repeat.py
"""
import dataclasses
import os

import numpy as np
import torch

from cupy_ops import _bench, _device, _runtime
from cupy_ops.ops import paged_attention as pa
from cupy_ops.reference import paged_attention as ref_pa
from exp_paged_parts import op_plans, plan_variant  # tools/ is the script's directory

CONFIGS = [("v2 B8 L4096", "v2", 8, 4096), ("v1 B8 L4096", "v1", 8, 4096),
           ("v2 B64 L4096", "v2", 64, 4096), ("v2 B1 L32768", "v2", 1, 32768),
           ("v2 B256 L1024", "v2", 256, 1024)]
CONFIGS = [c for c in CONFIGS if any(w in c[0] for w in os.environ.get("ONLY", c[0]).split(","))]
CHECK_SEQS = 8  # sequences compared with the reference (the CPU reference is slow)


def reference(q, kc, vc, table, lens, L):
    n = min(CHECK_SEQS, q.shape[0])
    used = table[:n].flatten().long()  # only these sequences' blocks, renumbered
    sub_table = torch.arange(used.numel(), dtype=torch.int32).view(n, -1).numpy()
    return ref_pa.paged_attention(q[:n].float().cpu().numpy(), kc[used].float().cpu().numpy(),
                                  vc[used].float().cpu().numpy(), 8, 128 ** -0.5, sub_table,
                                  lens[:n].cpu().numpy(), 16, L)


def main():
    print(_bench.device_line(_bench.copy_bandwidth_gbs()))
    src = _runtime.read_source("paged_attention_gqa.cu")
    opts = _runtime.compile_options(_device.arch(0))
    for name, op, B, L in CONFIGS:
        sets = [_bench._paged_set(torch, B, L, 32, 8, 128, 16, "bfloat16", "auto", i) for i in range(2)]
        want = reference(*sets[0], L)
        n = want.shape[0]
        plans, outs, scratch = op_plans(op, B, L, "auto", sets)
        torch.cuda.synchronize()
        first = np.abs(outs[0][:n].double().cpu().numpy() - want).max()
        lines = [f"{name}: launches {len(getattr(plans[0], 'launches', [plans[0]]))}, first call err {first:.2e}"]

        def check(label, reps):
            errs = []
            for r in range(reps):
                outs[0].fill_(float("nan"))
                if scratch:
                    scratch[0][2].fill_(float("nan"))  # tmp_out
                plans[0].run()
                plans[1].run()
                torch.cuda.synchronize()
                got = outs[0][:n].double().cpu().numpy()
                errs.append(float(np.nan_to_num(np.abs(got - want), nan=np.inf).max()))
            bad = sum(e > 2e-2 for e in errs)
            lines.append(f"  {label}: {reps} runs, err min {min(errs):.2e} max {max(errs):.2e}, {bad} over 2e-2")

        check("plan as built", 20)
        _bench.gpu_time_us(lambda i: plans[i % 2].run(), reps=100)
        check("after the timing loop", 10)
        decode = [p.launches[0] if hasattr(p, "launches") else p for p in plans]
        family_op, variant = plan_variant(decode[0])

        def swap_in(v):  # a fresh build of instantiation v runs the plans' decode launches
            expr = pa.GQA_FAMILY.name_expression(v)
            c = _runtime.nvrtc_compile(src, [expr], opts)
            fn = _device.load_function(0, c.binary, c.lowered_names[expr])
            for launch in decode:
                launch.func_ptr = fn.ptr

        if family_op == pa.GQA_FAMILY.op:
            swap_in(variant)
            check("fresh build swapped in", 10)
            _bench.gpu_time_us(lambda i: plans[i % 2].run(), reps=100)
            check("fresh build, after timing", 10)
            if variant.exact:  # the run-time head size form of the same kernel
                swap_in(dataclasses.replace(variant, exact=False))
                _bench.gpu_time_us(lambda i: plans[i % 2].run(), reps=100)
                check("exact=False build, after timing", 10)
        print("\n".join(lines), flush=True)
        del sets
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
