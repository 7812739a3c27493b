"""CPU: the reshape_and_cache oracle against brute force, the fp8 encoder against its definition,
and the op's host path and argument checks."""

import numpy as np
import pytest

import cupy_ops
from cupy_ops import CupyOpsTypeError, CupyOpsValueError
from cupy_ops.ops import reshape_and_cache as op_module
from cupy_ops.reference.paged_attention import fp8_to_float64
from cupy_ops.reference.reshape_and_cache import float_to_fp8, reshape_and_cache

FMTS = ("e4m3", "e5m2")
MAX_FINITE = {"e4m3": (0x7E, 448.0), "e5m2": (0x7B, 57344.0)}


# --------------------------------------------------------------------------------------------
# fp8 encoder

@pytest.mark.parametrize("fmt", FMTS)
def test_every_finite_code_round_trips(fmt):
    codes = np.arange(256, dtype=np.uint8)
    values = fp8_to_float64(codes, fmt)
    finite = np.isfinite(values)
    assert np.array_equal(float_to_fp8(values[finite], fmt), codes[finite])


@pytest.mark.parametrize("fmt", FMTS)
def test_midpoints_round_to_the_even_code(fmt):
    codes = np.arange(MAX_FINITE[fmt][0], dtype=np.uint8)  # each code and its successor
    lo, hi = fp8_to_float64(codes, fmt), fp8_to_float64(codes + 1, fmt)
    mid = (lo + hi) / 2  # exact in float32: fp8 values have at most 4 significant bits
    assert np.array_equal(mid.astype(np.float32).astype(np.float64), mid)
    got = float_to_fp8(mid, fmt)
    want = np.where(codes % 2 == 0, codes, codes + 1)
    assert np.array_equal(got, want)
    # Just off the midpoint, the nearer neighbour wins.
    assert np.array_equal(float_to_fp8(np.nextafter(mid.astype(np.float32), -np.inf), fmt)[1:], codes[1:])
    assert np.array_equal(float_to_fp8(np.nextafter(mid.astype(np.float32), np.inf), fmt), codes + 1)


@pytest.mark.parametrize("fmt", FMTS)
def test_saturation_sign_and_nan(fmt):
    code, top = MAX_FINITE[fmt]
    x = np.array([top * 1.5, np.inf, -np.inf, -1e30, -0.0, 0.0, np.nan, 1e-30, -1e-30], np.float32)
    got = float_to_fp8(x, fmt)
    assert list(got) == [code, code, 0x80 | code, 0x80 | code, 0x80, 0x00, 0x7F, 0x00, 0x80]


@pytest.mark.parametrize("fmt,torch_name", [("e4m3", "float8_e4m3fn"), ("e5m2", "float8_e5m2")])
def test_encoder_agrees_with_torch_in_range(fmt, torch_name):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    top = MAX_FINITE[fmt][1]
    # Log-uniform magnitudes from deep subnormal to the largest finite value: every binade.
    x = (np.exp(rng.uniform(np.log(1e-9), np.log(top), 20000)) * rng.choice([-1, 1], 20000)).astype(np.float32)
    want = torch.from_numpy(x).to(getattr(torch, torch_name)).view(torch.uint8).numpy()
    assert np.array_equal(float_to_fp8(x, fmt), want)


# --------------------------------------------------------------------------------------------
# Oracle against brute force

def _brute(key, value, key_cache, value_cache, slots, encode):
    kc, vc = key_cache.copy(), value_cache.copy()
    bs, x = kc.shape[3], kc.shape[4]
    for t, s in enumerate(slots):
        if s < 0:
            continue
        for h in range(key.shape[1]):
            for d in range(key.shape[2]):
                kc[s // bs, h, d // x, s % bs, d % x] = encode(key[t, h, d], "k")
                vc[s // bs, h, d, s % bs] = encode(value[t, h, d], "v")
    return kc, vc


def _case(rng, tokens=7, heads=3, head_size=32, blocks=5, bs=4, x=4, dtype=np.float32, cache_dtype=None):
    key = rng.standard_normal((tokens + 2, heads, head_size)).astype(dtype)  # 2 padding rows
    value = rng.standard_normal((tokens + 2, heads, head_size)).astype(dtype)
    cd = cache_dtype or dtype
    kc = rng.integers(0, 100, (blocks, heads, head_size // x, bs, x)).astype(cd)
    vc = rng.integers(0, 100, (blocks, heads, head_size, bs)).astype(cd)
    slots = rng.permutation(blocks * bs)[:tokens].astype(np.int64)
    slots[[1, 4]] = -1  # padding tokens
    return key, value, kc, vc, slots


def test_auto_matches_brute_force():
    rng = np.random.default_rng(1)
    key, value, kc, vc, slots = _case(rng)
    got = reshape_and_cache(key, value, kc, vc, slots, "auto")
    want = _brute(key, value, kc, vc, slots, lambda a, which: a)
    assert all(np.array_equal(g, w) for g, w in zip(got, want))
    assert not np.array_equal(got[0], kc)  # something was written; inputs untouched
    assert np.array_equal(kc, _case(np.random.default_rng(1))[2])


@pytest.mark.parametrize("kv,fmt", [("fp8", "e4m3"), ("fp8_e5m2", "e5m2")])
def test_fp8_matches_brute_force(kv, fmt):
    rng = np.random.default_rng(2)
    key, value, kc, vc, slots = _case(rng, head_size=32, x=16, cache_dtype=np.uint8)
    key[0, 0, :4] = [1e6, -np.inf, 0.3, -0.0]
    ks, vs = 0.37, 2.5
    got = reshape_and_cache(key, value, kc, vc, slots, kv, ks, vs)
    scale = {"k": np.float32(ks), "v": np.float32(vs)}
    want = _brute(key, value, kc, vc, slots,
                  lambda a, which: float_to_fp8(np.float32(a) / scale[which], fmt))
    assert all(np.array_equal(g, w) for g, w in zip(got, want))


def test_reference_rejects_slots_outside_the_cache():
    key, value, kc, vc, slots = _case(np.random.default_rng(3))
    slots[0] = kc.shape[0] * kc.shape[3]
    with pytest.raises(CupyOpsValueError, match=r"slot_mapping\[0\]"):
        reshape_and_cache(key, value, kc, vc, slots, "auto")


# --------------------------------------------------------------------------------------------
# The op on host arrays (reference path, in place)

def test_op_writes_numpy_caches_in_place():
    key, value, kc, vc, slots = _case(np.random.default_rng(4))
    want = reshape_and_cache(key, value, kc, vc, slots, "auto")
    cupy_ops.reshape_and_cache(key, value, kc, vc, slots, "auto", None, None)
    assert np.array_equal(kc, want[0]) and np.array_equal(vc, want[1])


def test_op_on_torch_cpu_bf16_and_float8_caches():
    torch = pytest.importorskip("torch")
    key, value, kc, vc, slots = _case(np.random.default_rng(5), x=8)
    k = torch.from_numpy(key).bfloat16()
    v = torch.from_numpy(value).bfloat16()
    kct, vct = torch.from_numpy(kc).bfloat16(), torch.from_numpy(vc).bfloat16()
    want = reshape_and_cache(k.float().numpy(), v.float().numpy(), kct.float().numpy(),
                             vct.float().numpy(), slots, "auto")
    cupy_ops.reshape_and_cache(k, v, kct, vct, torch.from_numpy(slots), "auto", None, None)
    assert np.array_equal(kct.float().numpy(), want[0]) and np.array_equal(vct.float().numpy(), want[1])

    kc8 = torch.zeros(kc.shape[0], 3, 2, 4, 16, dtype=torch.float8_e4m3fn)
    vc8 = torch.zeros(vc.shape, dtype=torch.float8_e4m3fn)
    scale = torch.tensor(0.5)
    cupy_ops.reshape_and_cache(k, v, kc8, vc8, torch.from_numpy(slots), "fp8_e4m3", scale, scale)
    want8 = reshape_and_cache(k.float().numpy(), v.float().numpy(), np.zeros(kc8.shape, np.uint8),
                              np.zeros(vc8.shape, np.uint8), slots, "fp8_e4m3", 0.5, 0.5)
    assert np.array_equal(kc8.view(torch.uint8).numpy(), want8[0])
    assert np.array_equal(vc8.view(torch.uint8).numpy(), want8[1])


@pytest.mark.parametrize("change,exc,match", [
    (lambda a: a.update(slot_mapping=a["slot_mapping"].astype(np.int32)), CupyOpsTypeError, "slot_mapping.dtype"),
    (lambda a: a.update(kv_cache_dtype="int8"), CupyOpsValueError, "Unsupported data type of kv cache"),
    (lambda a: a.update(key_cache=a["key_cache"].reshape(5, 3, 16, 4, 2)), CupyOpsValueError, "key_cache.shape"),
    (lambda a: a.update(value=a["value"][:, :2]), CupyOpsValueError, "value.shape"),
    (lambda a: a.update(slot_mapping=np.zeros(20, np.int64)), CupyOpsValueError, "num_tokens"),
    (lambda a: a.update(key_cache=a["key_cache"].astype(np.float16)), CupyOpsTypeError, "key_cache.dtype"),
    (lambda a: a.update(key_cache=np.zeros((5, 3, 2, 4, 16), np.uint8),
                        value_cache=np.zeros((5, 3, 32, 4), np.uint8), kv_cache_dtype="fp8"),
     CupyOpsValueError, "k_scale is required"),
])
def test_op_argument_errors(change, exc, match):
    key, value, kc, vc, slots = _case(np.random.default_rng(6))
    args = dict(key=key, value=value, key_cache=kc, value_cache=vc, slot_mapping=slots,
                kv_cache_dtype="auto", k_scale=None, v_scale=None)
    change(args)
    with pytest.raises(exc, match=match):
        cupy_ops.reshape_and_cache(**args)


def test_variants_cover_every_valid_call():
    for dtype in op_module.DTYPES:
        for kv in op_module.KV_KINDS.values():
            assert op_module.FAMILY.contains(op_module.Variant(dtype, kv))
