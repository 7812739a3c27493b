"""GPU: every op end to end on CuPy arrays in a process where torch cannot be imported (#9).

Runs in a subprocess with ``sys.modules["torch"] = None`` (any ``import torch`` fails), on
CuPy's current (non-default) stream, checked against the NumPy references.
"""

import subprocess
import sys
import textwrap

from .conftest import requires_gpu

pytestmark = requires_gpu

SCRIPT = textwrap.dedent('''
    import sys
    sys.modules["torch"] = None          # torch is "not installed"
    import numpy as np, cupy as cp
    import cupy_ops
    from cupy_ops.reference import merge_attn_states as rm, top_k_per_row as rt
    from cupy_ops.reference import vertical_slash as rv, paged_attention as rp
    rng = np.random.default_rng(0)
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        # merge_attn_states
        T, H, D = 33, 4, 64
        x, y = rng.standard_normal((T, H, D)).astype(np.float32), rng.standard_normal((T, H, D)).astype(np.float32)
        p, s = rng.standard_normal((H, T)).astype(np.float32), rng.standard_normal((H, T)).astype(np.float32)
        out = cp.full((T, H, D), np.nan, cp.float32)
        cupy_ops.merge_attn_states(out, cp.asarray(x), cp.asarray(p), cp.asarray(y), cp.asarray(s))
        want, _ = rm.merge_attn_states(x, p, y, s)
        assert np.allclose(cp.asnumpy(out), want, rtol=1e-5, atol=1e-6), "merge"
        # top_k_per_row_decode
        logits = rng.standard_normal((2, 5000)).astype(np.float32)
        sl = np.array([5000, 3000], np.int32)
        idx = cp.full((2, 512), -7, cp.int32)
        cupy_ops.top_k_per_row_decode(cp.asarray(logits), 1, cp.asarray(sl), idx, 2, 5000, 1, 512)
        ref = rt.top_k_per_row_decode(logits, 1, sl, 2, 5000, 1, 512)
        assert (np.sort(cp.asnumpy(idx), 1) == np.sort(ref, 1)).all(), "top-k"
        # convert_vertical_slash_indexes: outputs allocated by CuPy
        q = np.array([300], np.int32); kv = np.array([300], np.int32)
        v = np.sort(rng.choice(300, (1, 2, 8), replace=True), -1).astype(np.int32)
        sv = np.sort(rng.choice(300, (1, 2, 10), replace=False), -1)[..., ::-1].astype(np.int32).copy()
        sv[..., -1] = 0
        got = cupy_ops.convert_vertical_slash_indexes(*(cp.asarray(a) for a in (q, kv, v, sv)), 300, 64, 64)
        ref = rv.convert_vertical_slash_indexes(q, kv, v, sv, 300, 64, 64)
        assert all(isinstance(g, cp.ndarray) for g in got), "vertical-slash outputs are CuPy"
        assert all((cp.asnumpy(g) == r).all() for g, r in zip(got, ref)), "vertical-slash"
        # paged_attention_v1 (fp32, GQA)
        S, Hq, Hkv, D, BS = 2, 4, 2, 64, 16
        lens = np.array([40, 17], np.int32)
        kc = rng.standard_normal((6, Hkv, D // 4, BS, 4)).astype(np.float32)
        vc = rng.standard_normal((6, Hkv, D, BS)).astype(np.float32)
        table = np.array([[0, 3, 5], [1, 2, 4]], np.int32)
        qq = rng.standard_normal((S, Hq, D)).astype(np.float32)
        o = cp.full((S, Hq, D), np.nan, cp.float32)
        cupy_ops.paged_attention_v1(o, cp.asarray(qq), cp.asarray(kc), cp.asarray(vc), Hkv, 0.125,
                                    cp.asarray(table), cp.asarray(lens), BS, 40)
        want = rp.paged_attention(qq, kc, vc, Hkv, 0.125, table, lens, BS, 40)
        assert np.allclose(cp.asnumpy(o), want, rtol=1e-4, atol=1e-5), "paged"
    stream.synchronize()
    print("cupy-only ok")
''')


def test_every_op_on_cupy_without_torch():
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "cupy-only ok" in r.stdout, r.stdout[-2000:] + r.stderr[-4000:]
