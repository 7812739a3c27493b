"""Device experiment: merge_attn_states launch configurations and host-overhead breakdown.

Compiles configurations outside the variant table (threads, unroll, cache hints) straight through
nvrtc_compile and times them with the bench harness. Not part of the package's API.
"""
import time

import torch

import cupy_ops
from cupy_ops import _bench, _device, _interop, _runtime
from cupy_ops.ops import merge_attn_states as M

# H200 (4.3 TB/s) needs more bytes in flight per SM than the H100 the table's 512 x 2 was tuned on.
CONFIGS = [(512, 2, "plain"), (512, 4, "plain"), (256, 4, "plain"), (256, 8, "plain"),
           (1024, 2, "plain"), (128, 8, "plain")]
SIZES = [(256, 16, 128, "float32"), (4096, 32, 128, "bfloat16"), (65536, 32, 128, "bfloat16"),
         (16912, 16, 256, "bfloat16")]


def build(threads, unroll, hint, dtype):
    src = _runtime.read_source("merge_attn_states.cu")
    if hint == "cs":  # evict-first cache hints
        src = src.replace("#include \"common/vec.cuh\"", """#include "common/vec.cuh"
namespace cupy_ops {
template <typename T, int N> __device__ __forceinline__ Vec<T, N> load_cs(const T* p) {
  Vec<T, N> v; v.raw = __ldcs(reinterpret_cast<const typename Vec<T, N>::Raw*>(p)); return v; }
template <typename T, int N> __device__ __forceinline__ void store_cs(T* p, const Vec<T, N>& v) {
  __stcs(reinterpret_cast<typename Vec<T, N>::Raw*>(p), v.raw); }
}""")
        src = src.replace("= load_vec<", "= load_cs<").replace("store_vec<T, VEC>(", "store_cs<T, VEC>(")
    expr = f"cupy_ops::merge_attn_states_kernel<{_interop.CPP_TYPES[dtype]}, 16, {threads}, {unroll}, false>"
    c = _runtime.nvrtc_compile(src, [expr], _runtime.compile_options(_device.arch(0)))
    return _device.load_function(0, c.binary, c.lowered_names[expr])


def build_empty():
    c = _runtime.nvrtc_compile("extern \"C\" __global__ void empty() {}", [], _runtime.compile_options(_device.arch(0)))
    from cupy.cuda import function
    m = function.Module()
    m.load(c.binary)
    return m.get_function("empty")


def main():
    copy = _bench.copy_bandwidth_gbs()
    print(f"copy {copy:.0f} GB/s")
    sms = _device.sm_count(0)
    for T, H, D, dtype in SIZES:
        dt = getattr(torch, dtype)
        item = torch.empty(0, dtype=dt).element_size()
        nbytes = 3 * T * H * D * item + 12 * T * H
        n = _bench.rotation_count(nbytes)
        sets = [(torch.empty(T, H, D, dtype=dt, device="cuda"), torch.randn(T, H, D, device="cuda").to(dt),
                 torch.randn(H, T, device="cuda"), torch.randn(T, H, D, device="cuda").to(dt),
                 torch.randn(H, T, device="cuda"), torch.empty(H, T, device="cuda")) for _ in range(n)]
        line = f"{T}x{H}x{D} {dtype}:"
        for threads, unroll, hint in CONFIGS:
            k = build(threads, unroll, hint, dtype)
            vph = D * item // 16
            grid, tpb = M.launch_geometry(T, H, vph, sms, threads, unroll)
            plans = []
            for o, x, p, y, s, ol in sets:
                infos = [_interop.describe("x", "x", a) for a in (o, x, p, y, s, ol)]
                out, pre, plse, suf, slse, olse = infos
                plans.append(_interop.LaunchPlan(M.PARAMS, k, out, (grid,), (threads,),
                                                 M._kernel_args(out, olse, pre, plse, suf, slse, vph, tpb)))
            us = _bench.gpu_time_us(lambda i: plans[i % n].run())
            line += f"  {threads}/{unroll}/{hint} {us:.2f}us {100 * nbytes / us / 1e3 / copy:.1f}%"
        print(line, flush=True)
        del sets
        torch.cuda.empty_cache()

    # calibration: an empty launch and a same-bytes device copy, timed the same way
    empty = build_empty()
    print(f"empty kernel: {_bench.gpu_time_us(lambda i: empty((1,), (32,), ())):.2f} us")
    for T, H, D, dtype in SIZES:
        dt = getattr(torch, dtype)
        item = torch.empty(0, dtype=dt).element_size()
        half = (3 * T * H * D * item + 12 * T * H) // 2
        n = _bench.rotation_count(2 * half)
        bufs = [(torch.empty(half, dtype=torch.uint8, device="cuda"), torch.randint(0, 255, (half,), dtype=torch.uint8, device="cuda")) for _ in range(n)]
        us = _bench.gpu_time_us(lambda i: bufs[i % n][0].copy_(bufs[i % n][1]))
        print(f"same-bytes copy {T}x{H}x{D} {dtype}: {us:.2f} us ({2 * half / us / 1e3:.0f} GB/s)")
        del bufs

    # host overhead breakdown on a tiny problem
    x = torch.randn(16, 4, 128, device="cuda", dtype=torch.float16)
    p = torch.randn(4, 16, device="cuda")
    out, ol = torch.empty_like(x), torch.empty_like(p)
    args = (out, x, p, x, p, ol)
    N = 5000

    def t(label, fn):
        fn()
        t0 = time.perf_counter()
        for _ in range(N):
            fn()
        print(f"  {label:34s} {(time.perf_counter() - t0) / N * 1e6:6.2f} us")
        torch.cuda.synchronize()
    print("host overhead breakdown:")
    t("full call (plan cached)", lambda: cupy_ops.merge_attn_states(*args))
    t("fingerprint", lambda: _interop.fingerprint(args, False))
    key = _interop.fingerprint(args, False)
    t("plan lookup", lambda: M._PLANS.get(key))
    plan = M._PLANS.get(key)
    t("plan.run (stream + launch)", plan.run)
    t("current_stream", lambda: _interop.current_stream("torch", 0))
    t("full validation (_plan)", lambda: M._plan(*args, lse_base2=False))
    t("describe x6", lambda: [_interop.describe("x", "x", a) for a in args])
    t("torch empty_like (reference)", lambda: torch.empty_like(x))


if __name__ == "__main__":
    main()
