"""Host cost of one cuLaunchKernel by parameter count (GPU machine): an empty kernel with 1
pointer, with 34 scalar parameters (paged attention's count), and with one 272-byte struct
passed by value. Prints microseconds per launch (best of 5 loops of 20000).

    PYTHONPATH=. python3 tools/exp_launch.py
"""

import time
import types

import cupy
import numpy as np

from cupy_ops import _interop

SRC = r"""
struct P { long long v[34]; };
extern "C" __global__ void one(int* p) { if (p == (int*)1) *p = 0; }
extern "C" __global__ void many(int* p, long long a1, long long a2, long long a3, long long a4,
    long long a5, long long a6, long long a7, long long a8, long long a9, long long a10,
    int b1, int b2, int b3, int b4, int b5, int b6, int b7, int b8, int b9, int b10,
    int c1, int c2, int c3, int c4, int c5, int c6, int c7, int c8, int c9, int c10,
    float f1, float f2, float f3) { if (p == (int*)1) *p = a1 + b1 + c1 + (int)f1; }
extern "C" __global__ void packed(P p) { if (p.v[0] == 1) *(int*)p.v[1] = 0; }
"""


def per_launch_us(plan, reps=20000):
    stream = cupy.cuda.get_current_stream().ptr
    plan.run_on(stream)
    cupy.cuda.Device().synchronize()
    best = None
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(reps):
            plan.run_on(stream)
        t1 = time.perf_counter()
        cupy.cuda.Device().synchronize()
        best = min(best or 1e9, (t1 - t0) / reps * 1e6)
    return best


def main():
    mod = cupy.RawModule(code=SRC)
    buf = cupy.zeros(4, dtype=cupy.int32)

    class Info:  # what LaunchPlan reads of the array it takes the stream from
        framework, device = "cupy", 0

    cases = {
        "1 pointer": ("one", ["ptr"], (buf.data.ptr,)),
        "34 parameters": ("many", ["ptr"] + ["i64"] * 10 + ["i32"] * 20 + ["f32"] * 3,
                          (buf.data.ptr,) + (0,) * 30 + (0.0,) * 3),
        "one 272-byte struct": ("packed", ["i64"] * 34, (0,) * 34),
    }
    for name, (fn, param_types, values) in cases.items():
        kernel = types.SimpleNamespace(ptr=mod.get_function(fn).kernel.ptr)  # what LaunchPlan reads
        if fn == "packed":  # the struct is one parameter: pass a pointer to its 272 bytes
            params = _interop.KernelParams(["i64"] * 34)
            packed = params.pack(values)
            ptrs = np.array([packed.values.ctypes.data], dtype=np.uint64)
            plan = _interop.LaunchPlan(_interop.KernelParams(["ptr"]), kernel, Info, (1,), (32,), (0,))
            plan.args.pointers = ptrs
            plan.args.address = ptrs.ctypes.data
            keep = (packed, ptrs)  # noqa: F841
        else:
            plan = _interop.LaunchPlan(_interop.KernelParams(param_types), kernel, Info, (1,), (32,), values)
        print(f"{name:22s} {per_launch_us(plan):6.2f} us", flush=True)
        if fn == "packed":
            del keep


if __name__ == "__main__":
    main()
