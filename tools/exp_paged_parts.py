"""Device experiment: where the GQA decode kernel's time goes. The kernel is rebuilt with
experiment switches (wrong results, timing only) and swapped into the op's own plan, on the
issue's shapes:
    -                      the kernel as shipped
    CUPY_OPS_EXP_SKIP_PV     P V for the first 16 dims only
    CUPY_OPS_EXP_SKIP_MATH   no math at all: the pipeline (copies, barriers) alone
    INEXACT                  the same instantiation with exact=False (head size not a constant)
    (SWITCHES="- A B+C": the shipped kernel, A, then B and C together; the others are below;
    ONLY="B64,B1 " keeps the shapes whose names contain one of those strings)

    PYTHONPATH=. python3 tools/exp_paged_parts.py
"""
import dataclasses
import math
import os

import torch

import cupy_ops
from cupy_ops import _bench, _device, _runtime
from cupy_ops.ops import paged_attention as pa

CONFIGS = [("v1 B64 L4096", "v1", 64, 4096, "auto"), ("v1 B256 L1024", "v1", 256, 1024, "auto"),
           ("v2 B64 L4096", "v2", 64, 4096, "auto"), ("v2 B256 L1024", "v2", 256, 1024, "auto"),
           ("v1 fp8 B64 L4096", "v1", 64, 4096, "fp8_e4m3"), ("v2 fp8 B64 L4096", "v2", 64, 4096, "fp8_e4m3"),
           ("v1 B8 L4096", "v1", 8, 4096, "auto"), ("v2 B8 L4096", "v2", 8, 4096, "auto"),
           ("v1 B1 L32768", "v1", 1, 32768, "auto"), ("v2 B1 L32768", "v2", 1, 32768, "auto")]
CONFIGS = [c for c in CONFIGS if any(w in c[0] for w in os.environ.get("ONLY", c[0]).split(","))]
# (A switch that skipped the warps' merge measured nothing useful: without the epilogue the
# compiler deletes the O accumulators and most of P V with it.) Switches measured and settled are
# removed from the kernel once their outcome is in docs/perf.md (session 7: WAIT_FIRST and Q_SMEM
# became the default, EMPTY_BARRIERS and Q_FIRST went).
SWITCHES = os.environ.get("SWITCHES", "- CUPY_OPS_EXP_SKIP_PV CUPY_OPS_EXP_SKIP_MATH").split()


def plan_variant(launch):
    """The (kernel family, variant) whose loaded kernel a plan's launch runs: the op chose it
    (v1 splits write fp32 partials, v2 CTAs may span partitions), so the experiment rebuilds
    exactly that instantiation."""
    for (_, family_op, variant), fn in list(_runtime._modules.items()):
        if fn.ptr == launch.func_ptr:
            return family_op, variant
    raise LookupError("the launch's kernel was not loaded through _runtime.get_kernel")


def op_plans(op, B, L, kv, sets):
    """Run v1 or v2 once on each (q, kc, vc, table, lens) of `sets` (bf16, 32 / 8 heads, d128,
    block 16) and return the op's cached plans, the outputs and the v2 scratch tensors.
    plan.run() replays raw pointers: the caller keeps every tensor returned alive as long as it
    runs the plans (a freed scratch's memory went to later tensors, which the plans then wrote)."""
    one = torch.ones((), device="cuda")
    P = math.ceil(L / 512)
    pa._PLANS.clear()
    plans, outs, scratch = [], [], []
    for q, kc, vc, table, lens in sets:
        out = torch.empty_like(q)
        outs.append(out)
        if op == "v1":
            cupy_ops.paged_attention_v1(out, q, kc, vc, 8, 128 ** -0.5, table, lens, 16, L,
                                        kv_cache_dtype=kv, k_scale=one, v_scale=one)
        else:
            es, ml = torch.empty(B, 32, P, device="cuda"), torch.empty(B, 32, P, device="cuda")
            tmp = torch.empty(B, 32, P, 128, dtype=q.dtype, device="cuda")
            scratch.append((es, ml, tmp))
            cupy_ops.paged_attention_v2(out, es, ml, tmp, q, kc, vc, 8, 128 ** -0.5, table,
                                        lens, 16, L, kv_cache_dtype=kv, k_scale=one, v_scale=one)
        plans.append(list(pa._PLANS._plans.values())[-1])
    return plans, outs, scratch


def main():
    print(_bench.device_line(_bench.copy_bandwidth_gbs()))
    src = _runtime.read_source("paged_attention_gqa.cu")
    opts = _runtime.compile_options(_device.arch(0))
    built = {}
    for name, op, B, L, kv in CONFIGS:
        sets = [_bench._paged_set(torch, B, L, 32, 8, 128, 16, "bfloat16", kv, i) for i in range(2)]
        plans, outs, scratch = op_plans(op, B, L, kv, sets)
        decode = [p.launches[0] if hasattr(p, "launches") else p for p in plans]  # the decode launches
        family_op, variant = plan_variant(decode[0])
        if family_op != pa.GQA_FAMILY.op:
            print(f"{name:18s} runs {family_op}, not the GQA kernel: skipped", flush=True)
            continue
        cells, shipped_out = [], None
        for sw in SWITCHES:
            sw = "" if sw == "-" else sw
            inexact = "INEXACT" in sw.split("+")
            expr = pa.GQA_FAMILY.name_expression(dataclasses.replace(variant, exact=False) if inexact else variant)
            defines = tuple(f"-D{x}" for x in sw.split("+") if x and x != "INEXACT")
            if (expr, sw) not in built:  # shapes share instantiations
                c = _runtime.nvrtc_compile(src, [expr], opts + defines)
                built[expr, sw] = _device.load_function(0, c.binary, c.lowered_names[expr])
            fn = built[expr, sw]
            for launch in decode:
                launch.func_ptr = fn.ptr
            us = _bench.gpu_time_us(lambda i: plans[i % 2].run(), reps=100)
            # The switch's output against the shipped kernel's (poisoned first): a layout switch
            # must agree to rounding, a SKIP_ one will not.
            outs[0].fill_(float("nan"))
            plans[0].run()
            torch.cuda.synchronize()
            if shipped_out is None:
                shipped_out = outs[0].float().clone()
            err = (outs[0].float() - shipped_out).abs().nan_to_num(float("inf"))
            diff = err.max().item()
            if diff > 1e-2:  # where: (sequence, head, dim) of the largest, and how many differ
                where = [int(x) for x in torch.unravel_index(err.argmax(), err.shape)]
                print(f"  {name} {sw}: {int((err > 1e-2).sum())} elements differ, largest at {where}", flush=True)
            cells.append(f"{sw.replace('CUPY_OPS_EXP_', '') or 'shipped'} {us:.1f} (diff {diff:.1e})")
        print(f"{name:18s} grid={decode[0].dims[:3]}: " + " | ".join(cells) +
              f" [SM clock {_bench.sm_clock_mhz():.0f} MHz]", flush=True)
        del sets
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
