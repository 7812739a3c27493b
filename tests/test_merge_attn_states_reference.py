"""CPU: the merge_attn_states oracle against brute-force attention, the spec's special cases,
the NumPy/torch-CPU path of the public op, validation errors, and the pure dispatch helpers."""

import numpy as np
import pytest

import cupy_ops
from cupy_ops import CupyOpsTypeError, CupyOpsValueError
from cupy_ops.ops import merge_attn_states as op_module
from cupy_ops.reference.merge_attn_states import merge_attn_states as ref_merge

RNG = np.random.default_rng(20261125)


def partial_attention(q, k, v):
    """Attention of q [T,H,D] over keys k/v [N,H,D]: (output [T,H,D], lse [H,T]), float64."""
    scores = np.einsum("thd,nhd->thn", q, k)
    m = scores.max(axis=-1, keepdims=True)
    w = np.exp(scores - m)
    z = w.sum(axis=-1, keepdims=True)
    out = np.einsum("thn,nhd->thd", w / z, v)
    lse = (m + np.log(z))[..., 0].T
    return out, lse


@pytest.mark.parametrize("T,H,D,N1,N2", [(5, 3, 16, 7, 11), (1, 1, 1, 1, 1), (33, 4, 80, 50, 3)])
def test_reference_equals_attention_over_concatenated_keys(T, H, D, N1, N2):
    q = RNG.standard_normal((T, H, D))
    k1, v1 = RNG.standard_normal((N1, H, D)), RNG.standard_normal((N1, H, D))
    k2, v2 = RNG.standard_normal((N2, H, D)), RNG.standard_normal((N2, H, D))
    o1, l1 = partial_attention(q, k1, v1)
    o2, l2 = partial_attention(q, k2, v2)
    full, full_lse = partial_attention(q, np.concatenate([k1, k2]), np.concatenate([v1, v2]))
    merged, lse = ref_merge(o1, l1, o2, l2)
    np.testing.assert_allclose(merged, full, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(lse, full_lse, rtol=1e-12, atol=1e-12)
    # Merged LSE is never below either input's (adding keys only adds mass).
    assert np.all(lse >= np.maximum(l1, l2) - 1e-12)


def test_base2_lse_matches_natural():
    T, H, D = 9, 2, 8
    x, y = RNG.standard_normal((T, H, D)), RNG.standard_normal((T, H, D))
    p, s = RNG.standard_normal((H, T)), RNG.standard_normal((H, T))
    merged, lse = ref_merge(x, p, y, s)
    merged2, lse2 = ref_merge(x, p / np.log(2), y, s / np.log(2), lse_base2=True)
    np.testing.assert_allclose(merged2, merged, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(lse2 * np.log(2), lse, rtol=1e-12, atol=1e-12)


def special_case_inputs():
    """One token per case: (p, s) pairs from spec §4.1, with NaN data on each side's row 1."""
    inf, nan = np.inf, np.nan
    cases = [(0.3, -inf), (-inf, 0.3), (inf, 0.3), (0.3, inf), (-inf, -inf), (inf, inf),
             (inf, -inf), (nan, -inf), (-inf, nan), (nan, 0.3), (0.3, nan), (nan, nan),
             (1.0, -200.0), (-200.0, 1.0)]
    T, H, D = len(cases), 1, 4
    x = RNG.standard_normal((T, H, D))
    y = RNG.standard_normal((T, H, D))
    p = np.array([[c[0] for c in cases]])
    s = np.array([[c[1] for c in cases]])
    return cases, x, p, y, s


def test_reference_special_values_follow_spec():
    cases, x, p, y, s = special_case_inputs()
    merged, lse = ref_merge(x, p, y, s)
    for t, (pc, sc) in enumerate(cases):
        pe = -np.inf if np.isinf(pc) else pc
        se = -np.inf if np.isinf(sc) else sc
        if np.fmax(pe, se) == -np.inf:           # both empty (NaN with -inf too)
            np.testing.assert_array_equal(merged[t], x[t])
            assert lse[0, t] == -np.inf
        elif np.isnan(pe) or np.isnan(se):        # NaN with a finite LSE
            assert np.all(np.isnan(merged[t])) and np.isnan(lse[0, t])
        elif pe == -np.inf or pe - se < -150:     # prefix weight exactly 0 in fp32
            np.testing.assert_array_equal(merged[t], y[t])
            assert lse[0, t] == pytest.approx(se)
        elif se == -np.inf or se - pe < -150:
            np.testing.assert_array_equal(merged[t], x[t])
            assert lse[0, t] == pytest.approx(pe)
        else:
            raise AssertionError(f"case {pc, sc} not classified")


def test_reference_zero_weight_side_garbage_does_not_propagate():
    x = np.full((1, 1, 4), np.nan)
    y = RNG.standard_normal((1, 1, 4))
    merged, lse = ref_merge(x, np.array([[-np.inf]]), y, np.array([[0.5]]))
    np.testing.assert_array_equal(merged, y)
    assert lse[0, 0] == 0.5


# ---------------------------------------------------------------------------------------------
# The public op on host arrays (NumPy and torch CPU run the reference and round)

@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_public_op_numpy_writes_every_element(dtype):
    T, H, D = 13, 3, 24
    x = RNG.standard_normal((T, H, D)).astype(dtype)
    y = RNG.standard_normal((T, H, D)).astype(dtype)
    p = RNG.standard_normal((H, T)).astype(np.float32)
    s = RNG.standard_normal((H, T)).astype(np.float32)
    out = np.full((T, H, D), np.nan, dtype)
    out_lse = np.full((H, T), np.nan, np.float32)
    assert cupy_ops.merge_attn_states(out, x, p, y, s, out_lse) is None
    want, want_lse = ref_merge(x, p, y, s)
    np.testing.assert_array_equal(out, want.astype(dtype))
    np.testing.assert_array_equal(out_lse, want_lse.astype(np.float32))


def test_public_op_torch_cpu_bfloat16_in_place():
    torch = pytest.importorskip("torch")
    T, H, D = 6, 2, 16
    x = torch.randn(T, H, D, dtype=torch.bfloat16)
    y = torch.randn(T, H, D, dtype=torch.bfloat16)
    p, s = torch.randn(H, T), torch.randn(H, T)
    want, _ = ref_merge(x.float().numpy(), p.numpy(), y.float().numpy(), s.numpy())
    cupy_ops.merge_attn_states(x, x, p, y, s)  # output aliases prefix_output
    np.testing.assert_array_equal(x.float().numpy(), torch.from_numpy(want).bfloat16().float().numpy())


def test_public_op_without_output_lse_touches_no_lse():
    T, H, D = 4, 2, 8
    x, y = RNG.standard_normal((T, H, D)), RNG.standard_normal((T, H, D))
    x, y = x.astype(np.float32), y.astype(np.float32)
    p = RNG.standard_normal((H, T)).astype(np.float32)
    s = RNG.standard_normal((H, T)).astype(np.float32)
    p0, s0 = p.copy(), s.copy()
    cupy_ops.merge_attn_states(np.empty_like(x), x, p, y, s)
    np.testing.assert_array_equal(p, p0)
    np.testing.assert_array_equal(s, s0)


# ---------------------------------------------------------------------------------------------
# Validation: the same errors on every path, raised before any work

def _args(T=4, H=2, D=8, dtype=np.float32):
    x = RNG.standard_normal((T, H, D)).astype(dtype)
    y = RNG.standard_normal((T, H, D)).astype(dtype)
    p = RNG.standard_normal((H, T)).astype(np.float32)
    s = RNG.standard_normal((H, T)).astype(np.float32)
    return np.empty_like(x), x, p, y, s


@pytest.mark.parametrize("mutate,exc,needle", [
    (lambda a: a.__setitem__(0, a[0].astype(np.float64)), CupyOpsTypeError, "output.dtype"),
    (lambda a: a.__setitem__(1, a[1].astype(np.float16)), CupyOpsTypeError, "prefix_output.dtype"),
    (lambda a: a.__setitem__(2, a[2].astype(np.float64)), CupyOpsTypeError, "prefix_lse.dtype"),
    (lambda a: a.__setitem__(3, a[3][:, :1]), CupyOpsValueError, "suffix_output.shape"),
    (lambda a: a.__setitem__(4, a[4].T.copy()), CupyOpsValueError, "suffix_lse.shape"),
    (lambda a: a.__setitem__(0, a[0][0]), CupyOpsValueError, "output must have 3 dimensions"),
    (lambda a: a.__setitem__(1, np.ascontiguousarray(a[1][:, :, ::-1])[:, :, ::-1]),
     CupyOpsValueError, "negative stride"),
    (lambda a: a.__setitem__(1, np.repeat(a[1], 2, axis=2)[:, :, ::2]), CupyOpsValueError,
     "contiguous in its last dimension"),
    (lambda a: a.__setitem__(1, [[1.0]]), CupyOpsTypeError, "prefix_output must be"),
])
def test_bad_arguments_raise_named_errors(mutate, exc, needle):
    args = list(_args())
    mutate(args)
    with pytest.raises(exc, match=needle) as info:
        cupy_ops.merge_attn_states(*args)
    assert isinstance(info.value, RuntimeError)  # vLLM callers catch RuntimeError
    assert "merge_attn_states" in str(info.value)


def test_output_lse_aliasing_an_input_lse_is_rejected():
    out, x, p, y, s = _args()
    with pytest.raises(CupyOpsValueError, match="output_lse overlaps prefix_lse"):
        cupy_ops.merge_attn_states(out, x, p, y, s, p)


def test_output_partially_overlapping_an_input_is_rejected():
    T, H, D = 4, 2, 8
    buf = RNG.standard_normal((T + 1, H, D)).astype(np.float32)
    _, _, p, y, s = _args(T, H, D)
    with pytest.raises(CupyOpsValueError, match="output overlaps prefix_output"):
        cupy_ops.merge_attn_states(buf[1:], buf[:-1], p, y, s)


def test_empty_inputs_are_a_no_op():
    out, x, p, y, s = _args(T=0)
    cupy_ops.merge_attn_states(out, x, p, y, s)


# ---------------------------------------------------------------------------------------------
# Dispatch helpers: pure functions, testable without a GPU

class FakeArray:
    def __init__(self, dtype, shape, strides, ptr, itemsize):
        self.dtype, self.shape, self.strides, self.ptr, self.itemsize = dtype, shape, strides, ptr, itemsize
        self.device = 0


@pytest.mark.parametrize("dtype,itemsize,D,ptr_offset,head_stride,want", [
    ("bfloat16", 2, 128, 0, 128, 16),
    ("float16", 2, 80, 0, 80, 16),
    ("float16", 2, 100, 0, 100, 8),     # 100 halves = 200 bytes: 8-byte vectors
    ("float16", 2, 33, 0, 33, 2),       # odd head size: element accesses
    ("float32", 4, 33, 0, 33, 4),
    ("bfloat16", 2, 128, 2, 128, 2),    # pointer 2 bytes past alignment
    ("bfloat16", 2, 128, 0, 132, 8),    # head stride 264 bytes: 8-byte aligned only
    ("float32", 4, 128, 8, 128, 8),
])
def test_choose_variant_picks_widest_legal_vector(dtype, itemsize, D, ptr_offset, head_stride, want):
    H, T = 3, 5
    arrays = [FakeArray(dtype, (T, H, D), (H * head_stride, head_stride, 1), 1 << 20 + ptr_offset,
                        itemsize) for _ in range(3)]
    for a in arrays:
        a.ptr = (1 << 20) + ptr_offset
    v = op_module.choose_variant(*arrays, lse_base2=False)
    assert v.vec_bytes == want
    assert op_module.FAMILY.contains(v)


def test_chosen_variants_are_always_in_the_table():
    """Closure: for random valid calls, the dispatcher only picks table entries."""
    for _ in range(500):
        dtype, itemsize = [("float32", 4), ("float16", 2), ("bfloat16", 2)][RNG.integers(3)]
        D = int(RNG.integers(1, 300))
        off = int(RNG.integers(0, 8)) * itemsize
        hs = D + int(RNG.integers(0, 9))
        arrays = [FakeArray(dtype, (3, 2, D), (2 * hs, hs, 1), 4096 + off, itemsize) for _ in range(3)]
        v = op_module.choose_variant(*arrays, lse_base2=bool(RNG.integers(2)))
        assert op_module.FAMILY.contains(v), v
        assert D * itemsize % v.vec_bytes == 0


@pytest.mark.parametrize("T,H,vph", [(1, 1, 1), (256, 16, 32), (65536, 32, 16), (7, 128, 64),
                                     (100000, 1, 1), (3, 5, 7)])
def test_launch_geometry_covers_every_token_within_32_bit_work(T, H, vph):
    grid, tpb = op_module.launch_geometry(T, H, vph, sm_count=132)
    assert grid * tpb >= T > (grid - 1) * tpb
    assert tpb * H * vph < 2**31
