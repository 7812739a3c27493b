"""The functional layer: decode_attention, merge_states, paged_kv_from_dense.

CPU: the NumPy path end to end (dense K/V -> paged cache -> decode_attention equals dense
attention computed here in float64), fp8 caches, framework of the outputs, argument errors.
GPU (skips without one): torch and CuPy-only inputs against the host (reference) path.
"""

import numpy as np
import pytest

import cupy_ops
from cupy_ops import CupyOpsValueError
from cupy_ops.functional import choose_version
from cupy_ops.reference.merge_attn_states import merge_attn_states as merge_ref
from cupy_ops.reference.paged_attention import fp8_to_float64
from cupy_ops.reference.reshape_and_cache import float_to_fp8

from .conftest import requires_gpu

# Lengths: empty, shorter than a block, a block multiple +- 1, and past one 512-token partition.
LENS = (0, 3, 15, 17, 513)


def dense_inputs(lens=LENS, Hq=4, Hkv=2, D=32, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    keys = [rng.standard_normal((n, Hkv, D)).astype(dtype) for n in lens]
    values = [rng.standard_normal((n, Hkv, D)).astype(dtype) for n in lens]
    q = rng.standard_normal((len(lens), Hq, D)).astype(dtype)
    return q, keys, values


def dense_attention(q, keys, values, scale=None):
    """float64 softmax(q.k * scale) v per sequence and head (GQA: head h reads kv head h // group).
    An empty sequence gives zeros, as paged attention does."""
    S, Hq, D = q.shape
    scale = D ** -0.5 if scale is None else scale
    out = np.zeros((S, Hq, D))
    for s in range(S):
        k, v = np.asarray(keys[s], np.float64), np.asarray(values[s], np.float64)
        group = Hq // k.shape[1]
        for h in range(Hq):
            if not len(k):
                continue
            logits = k[:, h // group] @ q[s, h].astype(np.float64) * np.float32(scale)
            p = np.exp(logits - logits.max())
            out[s, h] = (p / p.sum()) @ v[:, h // group]
    return out


# The kernel-free reference adds 1e-6 to each softmax denominator (vLLM): relative error 1e-6.
TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("block_size", [1, 4, 16])
def test_numpy_dense_to_paged_to_decode_equals_dense_attention(block_size):
    q, keys, values = dense_inputs()
    paged = cupy_ops.paged_kv_from_dense(keys, values, block_size=block_size)
    assert isinstance(paged, cupy_ops.PagedKV) and all(isinstance(a, np.ndarray) for a in paged)
    assert paged.seq_lens.dtype == np.int32 and paged.block_tables.dtype == np.int32
    out = cupy_ops.decode_attention(q, *paged)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == q.shape
    np.testing.assert_allclose(out, dense_attention(q, keys, values), **TOL)


def test_padded_4d_form_with_seq_lens_ignores_padding_rows():
    q, keys, values = dense_inputs()
    S, L = len(LENS), max(LENS)
    k4 = np.full((S, L, 2, 32), np.nan, np.float32)
    v4 = np.full((S, L, 2, 32), np.nan, np.float32)
    for s, n in enumerate(LENS):
        k4[s, :n], v4[s, :n] = keys[s], values[s]
    paged = cupy_ops.paged_kv_from_dense(k4, v4, 16, seq_lens=list(LENS))
    listed = cupy_ops.paged_kv_from_dense(keys, values, 16)
    for a, b in zip(paged, listed):
        assert np.array_equal(a, b)  # padding never reaches the cache (slot -1)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_both_versions_and_explicit_arguments(version):
    q, keys, values = dense_inputs(seed=1)
    paged = cupy_ops.paged_kv_from_dense(keys, values, 8, extra_blocks=3)
    assert paged.key_cache.shape[0] == sum(-(-n // 8) for n in LENS) + 3
    out = np.full_like(q, np.nan)
    got = cupy_ops.decode_attention(q, *paged, scale=0.3, version=version, out=out,
                                    max_seq_len=600)
    assert got is out
    np.testing.assert_allclose(out, dense_attention(q, keys, values, scale=0.3), **TOL)


def test_choose_version_follows_vllms_rule():
    assert choose_version(1, 32, 512) == "v1"        # one partition
    assert choose_version(8, 32, 4096) == "v2"       # 256 rows of work, 8 partitions
    assert choose_version(64, 32, 4096) == "v1"      # 2048 rows fill the GPU
    assert choose_version(64, 32, 8193) == "v2"      # past 8192 tokens


@pytest.mark.parametrize("kv,fmt", [("fp8_e4m3", "e4m3"), ("fp8_e5m2", "e5m2")])
def test_fp8_cache_round_trip(kv, fmt):
    q, keys, values = dense_inputs(seed=2)
    ks, vs = 0.02, 0.05
    paged = cupy_ops.paged_kv_from_dense(keys, values, 16, kv_cache_dtype=kv, k_scale=ks, v_scale=vs)
    assert paged.key_cache.dtype == np.uint8
    out = cupy_ops.decode_attention(q, *paged, kv_cache_dtype=kv, k_scale=ks, v_scale=vs)
    dq = [fp8_to_float64(float_to_fp8(k / np.float32(s), fmt), fmt) * np.float32(s)
          for k, s in zip(keys, [ks] * len(keys))]
    dv = [fp8_to_float64(float_to_fp8(v / np.float32(vs), fmt), fmt) * np.float32(vs) for v in values]
    np.testing.assert_allclose(out, dense_attention(q, dq, dv), **TOL)


def test_merge_states_allocates_and_returns():
    rng = np.random.default_rng(3)
    pre, suf = rng.standard_normal((2, 7, 3, 16)).astype(np.float32)
    plse, slse = rng.standard_normal((2, 3, 7)).astype(np.float32)
    want, want_lse = merge_ref(pre, plse, suf, slse)
    out = cupy_ops.merge_states(pre, plse, suf, slse)
    np.testing.assert_allclose(out, want, rtol=2**-23, atol=0)
    out, lse = cupy_ops.merge_states(pre, plse, suf, slse, return_lse=True)
    assert lse.shape == (3, 7) and lse.dtype == np.float32
    np.testing.assert_allclose(lse, want_lse, rtol=2**-23, atol=0)


def test_torch_cpu_inputs_return_torch_tensors():
    torch = pytest.importorskip("torch")
    q, keys, values = dense_inputs(seed=4)
    paged = cupy_ops.paged_kv_from_dense([torch.from_numpy(k) for k in keys],
                                         [torch.from_numpy(v) for v in values], 16)
    assert all(isinstance(a, torch.Tensor) for a in paged)
    out = cupy_ops.decode_attention(torch.from_numpy(q), *paged)
    assert isinstance(out, torch.Tensor)
    np.testing.assert_allclose(out.numpy(), dense_attention(q, keys, values), **TOL)


def test_argument_errors():
    q, keys, values = dense_inputs()
    paged = cupy_ops.paged_kv_from_dense(keys, values, 16)
    with pytest.raises(CupyOpsValueError, match="version"):
        cupy_ops.decode_attention(q, *paged, version="v3")
    with pytest.raises(CupyOpsValueError, match="query must have 3 dimensions"):
        cupy_ops.decode_attention(q[0], *paged)
    with pytest.raises(CupyOpsValueError, match="seq_lens must hold"):
        cupy_ops.paged_kv_from_dense(np.zeros((2, 4, 1, 16), np.float32),
                                     np.zeros((2, 4, 1, 16), np.float32), seq_lens=[1, 5])
    with pytest.raises(CupyOpsValueError, match="Unsupported data type of kv cache"):
        cupy_ops.paged_kv_from_dense(keys, values, kv_cache_dtype="int4")


# --------------------------------------------------------------------------------------------
# GPU

def _bf16_tol(ref, values_max):
    # bf16 output rounding (u = 2^-8 relative) plus P rounded to bf16 before P.V on the tensor
    # cores (at most u * sum p |v| <= u * max|v|), doubled for margin.
    return 2 * 2.0**-8 * (np.abs(ref) + values_max) + 1e-5


@requires_gpu
@pytest.mark.parametrize("kv,fmt", [("auto", None), ("fp8_e4m3", "e4m3"), ("fp8_e5m2", "e5m2")])
def test_torch_gpu_matches_host_path(kv, fmt):
    import torch
    q, keys, values = dense_inputs(Hq=8, Hkv=2, D=128, seed=5)
    q, keys, values = (torch.from_numpy(q).bfloat16(), [torch.from_numpy(k).bfloat16() for k in keys],
                       [torch.from_numpy(v).bfloat16() for v in values])
    # Power-of-two scales: dequantised fp8 values are exact in bf16, so the oracle needs no
    # model of the kernel's dequantisation rounding.
    scales = dict(k_scale=2.0**-6, v_scale=2.0**-4) if fmt else {}
    gpu = cupy_ops.paged_kv_from_dense([k.cuda() for k in keys], [v.cuda() for v in values], 16,
                                       kv_cache_dtype=kv, **scales)
    host = cupy_ops.paged_kv_from_dense(keys, values, 16, kv_cache_dtype=kv, **scales)
    for g, h in zip(gpu, host):
        assert g.is_cuda and torch.equal(g.cpu(), h)  # reshape_and_cache is exact
    out = cupy_ops.decode_attention(q.cuda(), *gpu, kv_cache_dtype=kv, **scales)
    assert out.is_cuda and out.dtype == torch.bfloat16

    def dense(arrays, scale):
        a = [x.float().numpy() for x in arrays]
        if fmt is None:
            return a
        return [fp8_to_float64(float_to_fp8(x / np.float32(scale), fmt), fmt) * scale for x in a]

    dk, dv = dense(keys, scales.get("k_scale")), dense(values, scales.get("v_scale"))
    ref = dense_attention(q.float().numpy(), dk, dv)
    assert (np.abs(out.float().cpu().numpy() - ref) <= _bf16_tol(ref, max(np.abs(v).max(initial=0) for v in dv))).all()


@requires_gpu
def test_cupy_only_inputs():
    cupy = pytest.importorskip("cupy")
    q, keys, values = dense_inputs(Hq=4, Hkv=4, D=64, seed=6, dtype=np.float16)
    paged = cupy_ops.paged_kv_from_dense([cupy.asarray(k) for k in keys],
                                         [cupy.asarray(v) for v in values], 16)
    assert all(isinstance(a, cupy.ndarray) for a in paged)
    host = cupy_ops.paged_kv_from_dense(keys, values, 16)
    for g, h in zip(paged, host):
        assert np.array_equal(cupy.asnumpy(g), h)
    out = cupy_ops.decode_attention(cupy.asarray(q), *paged)
    assert isinstance(out, cupy.ndarray) and out.dtype == np.float16
    ref = dense_attention(q, keys, values)
    # fp16: u = 2^-11 for the output and for P rounded before P.V, doubled.
    tol = 2 * 2.0**-11 * (np.abs(ref) + max(np.abs(v).max(initial=0) for v in values)) + 1e-5
    assert (np.abs(cupy.asnumpy(out).astype(np.float64) - ref) <= tol).all()
    pre = cupy.asarray(np.ones((5, 4, 64), np.float16))
    lse = cupy.zeros((4, 5), np.float32)
    merged, merged_lse = cupy_ops.merge_states(pre, lse, pre, lse, return_lse=True)
    assert isinstance(merged, cupy.ndarray)
    assert cupy.array_equal(merged, pre) and cupy.allclose(merged_lse, np.log(2.0))
