"""Device experiment: phase timings (clock64 marks of CTA 0) and event times of the top-k kernel
for the benchmark shapes, with optional forced cluster size / thread count.

    python tools/exp_top_k.py [--threads 512] [--cluster C] [--define X=Y ...] [--no-spec]
"""
import argparse
import statistics

import torch

import cupy_ops
from cupy_ops import _device, _runtime
from cupy_ops.ops import top_k_per_row as m

ap = argparse.ArgumentParser()
ap.add_argument("--threads", type=int, default=512)
ap.add_argument("--cluster", type=int, default=None)
ap.add_argument("--define", action="append", default=[])
ap.add_argument("--no-timing", action="store_true")
ap.add_argument("--opt", action="append", default=[], help="extra NVRTC option")
ap.add_argument("--case", type=int, default=None, help="run only this case index")
ap.add_argument("--reps", type=int, default=60)
ap.add_argument("--check", action="store_true", help="compare the index sets with torch.topk's")
ap.add_argument("--no-spec", action="store_true", help="decode rows laid out from their own length")
args = ap.parse_args()

_orig = _runtime.get_kernel
_cache = {}


def kernel(family, variant, device):
    if family is not m.FAMILY:
        return _orig(family, variant, device)
    if variant not in _cache:
        expr = family.name_expression(variant)
        opts = list(_runtime.compile_options(_device.arch(device)))
        opts += [f"-D{d}" for d in args.define] + args.opt
        if not args.no_timing:
            opts.append("-DCUPY_OPS_TOPK_TIMING")
        c = _runtime.nvrtc_compile(_runtime.read_source(family.source), [expr], opts)
        _cache[variant] = _device.load_function(device, c.binary, c.lowered_names[expr])
    return _cache[variant]


m._runtime.get_kernel = kernel
m.SPECULATIVE_DECODE_LOADS = not args.no_spec
m.threads_for = lambda *a: args.threads
if args.cluster:
    m.launch_shape = lambda *a: args.cluster

CASES = ((64, 131072, 2048), (1, 32768, 2048), (4, 163840, 2048), (128, 8192, 2048))
for rows, cols, k in (CASES if args.case is None else CASES[args.case:args.case + 1]):
    x = [torch.randn(rows, cols, device="cuda") for _ in range(4)]
    sl = torch.full((rows,), cols, dtype=torch.int32, device="cuda")
    idx = torch.empty(rows, k, dtype=torch.int32, device="cuda")
    cupy_ops.top_k_per_row_decode(x[0], 1, sl, idx, rows, cols, 1, k)
    torch.cuda.synchronize()
    print(f"--- {rows}x{cols} K={k} threads={args.threads}", flush=True)
    cupy_ops.top_k_per_row_decode(x[1], 1, sl, idx, rows, cols, 1, k)
    torch.cuda.synchronize()
    if args.check:  # random normal scores: no ties, so the sets must be equal
        idx.fill_(-7)
        cupy_ops.top_k_per_row_decode(x[2], 1, sl, idx, rows, cols, 1, k)
        want = torch.topk(x[2], k, dim=1).indices.sort(dim=1).values
        same = torch.equal(idx.long().sort(dim=1).values, want)
        print(f"    check vs torch.topk: {'same sets' if same else 'DIFFERENT'}", flush=True)
    if not args.no_timing:
        continue
    times = []
    for i in range(args.reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(100000)
        s.record()
        cupy_ops.top_k_per_row_decode(x[i % 4], 1, sl, idx, rows, cols, 1, k)
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) * 1e3)
    print(f"    median {statistics.median(times):.1f} us", flush=True)
