"""`python -m cupy_ops selftest`: every implemented op on a small example, checked against the
float64 reference, on the GPU when there is one (else on the reference path); prints a table."""

from __future__ import annotations

import sys
import time

import numpy as np

from . import _device


def backend() -> str:
    if _device.gpu_count() > 0:
        try:
            import torch
            if torch.cuda.is_available():
                return "torch-cuda"
        except ImportError:
            pass
        return "cupy"
    return "numpy-reference"


class Arrays:
    """Moves NumPy test data into the backend under test and back."""

    def __init__(self, kind: str):
        self.kind = kind

    def dtypes(self):
        if self.kind == "torch-cuda":
            return ("float32", "float16", "bfloat16")
        return ("float32", "float16")  # NumPy and CuPy have no bfloat16

    def put(self, a: np.ndarray, dtype: str):
        if self.kind == "torch-cuda":
            import torch
            return torch.from_numpy(np.ascontiguousarray(a, np.float32)).to("cuda", getattr(torch, dtype))
        if self.kind == "cupy":
            import cupy
            return cupy.asarray(a.astype(dtype))
        return a.astype(dtype)

    def get(self, a) -> np.ndarray:
        if self.kind == "torch-cuda":
            return a.float().cpu().numpy().astype(np.float64)
        if self.kind == "cupy":
            import cupy
            return cupy.asnumpy(a).astype(np.float64)
        return a.astype(np.float64)

    def sync(self):
        if self.kind == "torch-cuda":
            import torch
            torch.cuda.synchronize()
        elif self.kind == "cupy":
            import cupy
            cupy.cuda.get_current_stream().synchronize()


UNIT_ROUNDOFF = {"float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8}


def check_merge_attn_states(arrays: Arrays, dtype: str, rng) -> tuple[str, float, bool]:
    from . import merge_attn_states
    from .reference.merge_attn_states import merge_attn_states as ref_merge
    T, H, D = 37, 4, 128
    x, y = rng.standard_normal((T, H, D)), rng.standard_normal((T, H, D))
    p, s = rng.standard_normal((H, T)) * 2, rng.standard_normal((H, T)) * 2
    p[0, :3] = -np.inf  # empty prefix for three tokens
    s[1, 3:5] = np.inf  # empty suffix (FA2 style +inf) for two
    dx, dy = arrays.put(x, dtype), arrays.put(y, dtype)
    dp, ds = arrays.put(p, "float32"), arrays.put(s, "float32")
    out = arrays.put(np.full((T, H, D), np.nan), dtype)
    out_lse = arrays.put(np.full((H, T), np.nan), "float32")
    merge_attn_states(out, dx, dp, dy, ds, out_lse)
    arrays.sync()
    ref, ref_lse = ref_merge(arrays.get(dx), arrays.get(dp), arrays.get(dy), arrays.get(ds))
    got, got_lse = arrays.get(out), arrays.get(out_lse)
    err = float(np.max(np.abs(got - ref) / (np.abs(ref) + 1)))
    ok = bool(np.all(np.isfinite(got)) and err <= 2 * UNIT_ROUNDOFF[dtype] + 1e-6
              and np.allclose(got_lse, ref_lse, rtol=1e-6, atol=1e-6))
    return f"[{T},{H},{D}]", err, ok


CHECKS = {"merge_attn_states": check_merge_attn_states}


def run_selftest(stream=None) -> int:
    stream = stream or sys.stdout
    kind = backend()
    arrays = Arrays(kind)
    rng = np.random.default_rng(0)
    where = kind if kind == "numpy-reference" else f"{kind} on {_device.name(0)}"
    print(f"cupy_ops selftest: {where}", file=stream)
    header = f"{'op':28s} {'dtype':9s} {'shape':14s} {'max rel err':>12s} {'ms':>8s}  result"
    print(header, file=stream)
    print("-" * len(header), file=stream)
    failures = 0
    for op, check in CHECKS.items():
        for dtype in arrays.dtypes():
            t0 = time.perf_counter()
            try:
                shape, err, ok = check(arrays, dtype, rng)
            except Exception as exc:  # noqa: BLE001 - the table reports every failure
                shape, err, ok = "-", float("nan"), False
                print(f"  {op} {dtype}: {type(exc).__name__}: {exc}", file=stream)
            ms = (time.perf_counter() - t0) * 1e3
            failures += not ok
            print(f"{op:28s} {dtype:9s} {shape:14s} {err:12.3e} {ms:8.1f}  {'PASS' if ok else 'FAIL'}",
                  file=stream)
    print(f"{'all passed' if failures == 0 else f'{failures} FAILED'}", file=stream)
    return 1 if failures else 0
