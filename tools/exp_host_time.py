"""Where paged_attention_v1's host time per call goes (GPU machine): the whole direct call, the
torch.library call, and each step of the cached path timed alone. Prints one line per step.

    PYTHONPATH=. python3 tools/exp_host_time.py
"""

import time

import torch

import cupy_ops
import cupy_ops.torch_ops  # noqa: F401  registers torch.ops.cupy_ops
from cupy_ops import _checks, _interop
from cupy_ops.ops import paged_attention as pa


def per_call_us(fn, reps=20000):
    fn()
    torch.cuda.synchronize()
    best = None
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        us = (t1 - t0) / reps * 1e6
        best = us if best is None else min(best, us)
    return best


def main():
    dev = "cuda"
    T, H, Hkv, D, BS, L = 1, 32, 8, 128, 16, 64
    x = torch.randn(T, H, D, device=dev, dtype=torch.bfloat16)
    out = torch.empty_like(x)
    kc = torch.randn(L // BS, Hkv, D // 8, BS, 8, device=dev, dtype=torch.bfloat16)
    vc = torch.randn(L // BS, Hkv, D, BS, device=dev, dtype=torch.bfloat16)
    table = torch.arange(L // BS, device=dev, dtype=torch.int32)[None]
    lens = torch.full((T,), L, device=dev, dtype=torch.int32)
    paged = (x, kc, vc, Hkv, D ** -0.5, table, lens, BS, L)
    arrays = (out, None, None, None, x, kc, vc, table, lens, None)
    scalars = ("paged_attention_v1", Hkv, D ** -0.5, BS, L, "auto", 0, 0, 0, 64, 0)
    key = _interop.fingerprint(arrays, (scalars, tuple(map(type, scalars))))
    cupy_ops.paged_attention_v1(out, *paged)
    plan = pa._PLANS.get(key)
    assert plan is not None, "the plan key used here differs from the op's"
    stream = _interop.current_stream("torch", 0)
    steps = {
        "direct call": lambda: cupy_ops.paged_attention_v1(out, *paged),
        "torch.ops.cupy_ops call": lambda: torch.ops.cupy_ops.paged_attention_v1(out, *paged),
        "validation_requested": lambda: _checks.validation_requested("paged_attention_v1", None),
        "fingerprint (10 arrays)": lambda: _interop.fingerprint(arrays, (scalars, tuple(map(type, scalars)))),
        "plan cache get": lambda: pa._PLANS.get(key),
        "current_stream": lambda: _interop.current_stream("torch", 0),
        "plan.run (stream + launch)": plan.run,
        "launch only": lambda: plan.run_on(stream) if hasattr(plan, "run_on") else plan.run(),
        "torch empty kernel (x.add_(0) on 1 elem)": lambda: lens[:1].add_(0),
    }
    for name, fn in steps.items():
        print(f"{name:45s} {per_call_us(fn):7.2f} us", flush=True)


if __name__ == "__main__":
    main()
