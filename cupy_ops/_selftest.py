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
            src = np.ascontiguousarray(a, np.int32 if dtype == "int32" else np.float32)
            return torch.from_numpy(src).to("cuda", getattr(torch, dtype))
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


def check_paged_attention(arrays: Arrays, dtype: str, rng) -> tuple[str, float, bool]:
    """v1 and v2 on a small GQA cache (one empty sequence, one crossing a partition)."""
    from . import paged_attention_v1, paged_attention_v2
    from .reference import paged_attention as ref
    S, Hq, Hkv, D, BS = 3, 8, 2, 64, 16
    lens = np.array([600, 0, 37], np.int32)
    blocks = [-(-int(n) // BS) for n in lens]
    num_blocks = sum(blocks) + 1
    x = 16 // np.dtype(dtype if dtype != "bfloat16" else "float16").itemsize
    kc = rng.standard_normal((num_blocks, Hkv, D // x, BS, x))
    vc = rng.standard_normal((num_blocks, Hkv, D, BS))
    table = np.zeros((S, max(blocks)), np.int32)
    perm = rng.permutation(num_blocks - 1)
    pos = 0
    for s, nb in enumerate(blocks):
        table[s, :nb] = perm[pos:pos + nb]
        pos += nb
    q = rng.standard_normal((S, Hq, D))
    P = -(-int(lens.max()) // 512)
    dq, dk, dv = arrays.put(q, dtype), arrays.put(kc, dtype), arrays.put(vc, dtype)
    dt, dl = arrays.put(table, "int32"), arrays.put(lens, "int32")
    out1 = arrays.put(np.full((S, Hq, D), np.nan), dtype)
    out2 = arrays.put(np.full((S, Hq, D), np.nan), dtype)
    es, ml = arrays.put(np.zeros((S, Hq, P)), "float32"), arrays.put(np.zeros((S, Hq, P)), "float32")
    tmp = arrays.put(np.zeros((S, Hq, P, D)), dtype)
    scale = D ** -0.5
    paged_attention_v1(out1, dq, dk, dv, Hkv, scale, dt, dl, BS, int(lens.max()))
    paged_attention_v2(out2, es, ml, tmp, dq, dk, dv, Hkv, scale, dt, dl, BS, int(lens.max()))
    arrays.sync()
    want = ref.paged_attention(arrays.get(dq), arrays.get(dk), arrays.get(dv), Hkv, scale, table, lens,
                               BS, int(lens.max()))
    err = max(float(np.max(np.abs(arrays.get(o) - want))) for o in (out1, out2))
    ok = bool(np.isfinite(err) and err <= 8 * UNIT_ROUNDOFF[dtype] * max(1.0, float(np.abs(vc).max())) + 1e-5)
    return f"[{S},{Hq},{D}]", err, ok


def check_top_k_per_row(arrays: Arrays, dtype: str, rng) -> tuple[str, float, bool]:
    """Prefill and decode on rows longer and shorter than K; error = wrong index slots."""
    from . import top_k_per_row_decode, top_k_per_row_prefill
    from .reference import top_k_per_row as ref
    R, N, K = 3, 5000, 512
    logits = rng.standard_normal((R, N))
    starts, ends = np.array([0, 7, 100], np.int32), np.array([N, 4000, 400], np.int32)
    seq_lens = np.array([N, 300, 3000], np.int32)
    dl = arrays.put(logits, dtype)
    host = arrays.get(dl).astype(np.float32)  # the scores as rounded to dtype
    got_p = arrays.put(np.full((R, K), -7), "int32")
    got_d = arrays.put(np.full((R, K), -7), "int32")
    top_k_per_row_prefill(dl, arrays.put(starts, "int32"), arrays.put(ends, "int32"), got_p, R, N, 1, K)
    top_k_per_row_decode(dl, 1, arrays.put(seq_lens, "int32"), got_d, R, N, 1, K)
    arrays.sync()
    wrong = 0
    for got, want, lengths in (
            (got_p, ref.top_k_per_row_prefill(host, starts, ends, R, N, 1, K), ends - starts),
            (got_d, ref.top_k_per_row_decode(host, 1, seq_lens, R, N, 1, K), seq_lens)):
        g = arrays.get(got).astype(np.int64)
        long_rows = lengths > K
        want = want.astype(np.int64)
        g[long_rows], want[long_rows] = np.sort(g[long_rows], 1), np.sort(want[long_rows], 1)
        wrong += int((g != want).sum())
    return f"[{R},{N}] K={K}", float(wrong), wrong == 0


def check_reshape_and_cache(arrays: Arrays, dtype: str, rng) -> tuple[str, float, bool]:
    """An unquantized and an fp8 (e4m3) cache, written bit for bit like the reference."""
    from . import reshape_and_cache
    from .reference.reshape_and_cache import reshape_and_cache as ref
    T, H, D, BS, NB = 21, 2, 64, 16, 3
    key, value = rng.standard_normal((T, H, D)), rng.standard_normal((T, H, D))
    slots = rng.permutation(NB * BS)[:T]
    slots[3] = -1  # padding token
    dk, dv, ds = arrays.put(key, dtype), arrays.put(value, dtype), arrays.put(slots, "int64")
    err = 0.0
    for kv, cache_dtype in (("auto", dtype), ("fp8_e4m3", "uint8")):
        x = 16 // (1 if kv != "auto" else np.dtype(dtype if dtype != "bfloat16" else "float16").itemsize)
        kc0, vc0 = np.zeros((NB, H, D // x, BS, x)), np.zeros((NB, H, D, BS))
        kc, vc = arrays.put(kc0, cache_dtype), arrays.put(vc0, cache_dtype)
        scale = arrays.put(np.array(0.5), "float32")
        reshape_and_cache(dk, dv, kc, vc, ds, kv, scale, scale)
        arrays.sync()
        cast = (lambda a: a) if kv == "auto" else (lambda a: a.astype(np.uint8))
        want = ref(arrays.get(dk), arrays.get(dv), cast(kc0), cast(vc0), slots, kv, 0.5, 0.5)
        err = max(err, *(float(np.max(np.abs(arrays.get(g) - w))) for g, w in zip((kc, vc), want)))
    return f"[{T},{H},{D}]", err, err == 0.0


def check_vertical_slash(arrays: Arrays, dtype: str, rng) -> tuple[str, float, bool]:
    """Both layout ops (causal and not; mergehead with INT32_MAX/MIN padding) vs the reference,
    exactly on the defined entries; the error column counts mismatched entries."""
    from . import convert_vertical_slash_indexes, convert_vertical_slash_indexes_mergehead
    from .reference import vertical_slash as ref
    B, H, nv, ns, ctx = 2, 3, 24, 40, 700
    q = np.array([700, 333], np.int32)
    kv = np.array([900, 333], np.int32)
    V = np.full((B, H, nv), 2**31 - 1, np.int32)
    S = np.full((B, H, ns), -(2**31), np.int32)
    vc = rng.integers(1, nv + 1, H).astype(np.int32)
    sc = rng.integers(1, ns + 1, H).astype(np.int32)
    for b in range(B):
        for h in range(H):
            V[b, h] = np.sort(rng.choice(int(kv[b]), nv, replace=False))
            S[b, h] = np.sort(rng.choice(int(kv[b]), ns, replace=False))[::-1]
            S[b, h, -1] = 0   # the main diagonal
    mismatches = 0
    args = [arrays.put(x, "int32") for x in (q, kv, V, S)]
    counts = [arrays.put(x, "int32") for x in (vc, sc)]
    for causal in (True, False):
        got = convert_vertical_slash_indexes(*args, ctx, 64, 64, causal)
        got_mh = convert_vertical_slash_indexes_mergehead(*args, *counts, ctx, 64, 64, causal)
        arrays.sync()
        want = ref.convert_vertical_slash_indexes(q, kv, V, S, ctx, 64, 64, causal)
        want_mh, defined = ref.convert_vertical_slash_indexes_mergehead(
            q, kv, V, S, vc, sc, ctx, 64, 64, causal, return_defined=True)
        for g, w in zip(got, want):
            mismatches += int(np.sum(arrays.get(g) != w))
        for g, w, d in zip(got_mh, want_mh, defined):
            mismatches += int(np.sum(arrays.get(g)[d] != w[d]))
    return f"[{B},{H},{ns}]", float(mismatches), mismatches == 0


CHECKS = {"merge_attn_states": check_merge_attn_states,
          "paged_attention_v1/v2": check_paged_attention,
          "top_k_per_row_prefill/decode": check_top_k_per_row,
          "reshape_and_cache": check_reshape_and_cache,
          "convert_vertical_slash_*": check_vertical_slash}
CHECK_DTYPES = {"convert_vertical_slash_*": ("int32",)}  # index ops: one run, not one per dtype


def run_selftest(stream=None) -> int:
    stream = stream or sys.stdout
    kind = backend()
    arrays = Arrays(kind)
    rng = np.random.default_rng(0)
    where = kind if kind == "numpy-reference" else f"{kind} on {_device.name(0)}"
    print(f"cupy_ops selftest: {where}", file=stream)
    header = f"{'op':28s} {'dtype':9s} {'shape':14s} {'max error':>12s} {'ms':>8s}  result"
    print(header, file=stream)
    print("-" * len(header), file=stream)
    failures = 0
    for op, check in CHECKS.items():
        for dtype in CHECK_DTYPES.get(op, arrays.dtypes()):
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
