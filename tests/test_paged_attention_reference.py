"""CPU tests of the float64 paged-attention oracle (spec: paged_attention.md).

The oracle is checked against things written independently of it: a brute-force dense attention
(explicit loops over sequences and heads, one np.dot per head), caches written token by token
with the reshape_and_cache rule of spec §2.2, the block-sparse rule of §4.4 evaluated per token,
torch's own float8 decoding, and hand-computed worked examples.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from cupy_ops._checks import CupyOpsTypeError, CupyOpsValueError
from cupy_ops.reference.paged_attention import (
    blocksparse_attended_blocks, fp8_format_of, fp8_to_float64, gather_kv, num_partitions,
    paged_attention, paged_attention_v2, paged_attention_v2_partials, paged_attention_v2_reduce,
)

EPS = np.float32(1e-6).item()             # the kernel's 1e-6f softmax-denominator epsilon
NEG_FLT_MAX = -np.finfo(np.float32).max.item()
RTOL, ATOL = 1e-10, 1e-12                 # float64 vs float64, only summation order differs

try:
    import torch
except ImportError:  # pragma: no cover - torch is in the dev venv
    torch = None
TORCH_FP8 = {fmt: getattr(torch, name, None) if torch is not None else None
             for fmt, name in (("e4m3", "float8_e4m3fn"), ("e5m2", "float8_e5m2"))}


def needs_fp8(fmt):
    return pytest.mark.skipif(TORCH_FP8[fmt] is None, reason=f"torch lacks the float8 {fmt} dtype")


def f32(value):
    return np.float32(value).item()


# --------------------------------------------------------------------------------------------
# Builders, written from the spec text, independent of the oracle


def cdiv(a, b):
    return -(-a // b)


def fp8_bytes(rng, shape, fmt, scale):
    """Random values quantized by torch to fp8 (value / scale), returned as uint8 bytes."""
    vals = torch.from_numpy(rng.standard_normal(shape) / scale)
    return vals.to(TORCH_FP8[fmt]).view(torch.uint8).numpy()


def torch_decode(raw, fmt):
    return torch.from_numpy(np.ascontiguousarray(raw)).view(TORCH_FP8[fmt]).to(torch.float64).numpy()


def random_dense(rng, seq_lens, num_kv_heads, head_size, dtype):
    """Per-sequence keys and values [num_kv_heads, L, head_size], N(0, 1) in the cache dtype."""
    keys = [rng.standard_normal((num_kv_heads, L, head_size)).astype(dtype) for L in seq_lens]
    values = [rng.standard_normal((num_kv_heads, L, head_size)).astype(dtype) for L in seq_lens]
    return keys, values


def write_paged(keys, values, block_size, x, spare_blocks=3, extra_cols=2, rng=None, poison=None):
    """Paged caches holding ``keys``/``values``, written token by token like reshape_and_cache.

    Each sequence gets distinct physical blocks in random order. Everything not written (tail
    slots of a last block, spare blocks) holds ``poison``; table columns past a sequence's blocks
    hold garbage ids (-1 and 10**6), which the op must never read.
    """
    num_kv_heads, _, head_size = keys[0].shape
    dtype = keys[0].dtype
    if poison is None:
        poison = 0x7F if dtype == np.uint8 else np.nan  # 0x7f is NaN in both fp8 formats
    n_blocks = [cdiv(k.shape[1], block_size) for k in keys]
    num_blocks = sum(n_blocks) + spare_blocks
    ids = rng.permutation(num_blocks)
    key_cache = np.full((num_blocks, num_kv_heads, head_size // x, block_size, x), poison, dtype=dtype)
    value_cache = np.full((num_blocks, num_kv_heads, head_size, block_size), poison, dtype=dtype)
    table = np.where(np.arange(max(n_blocks + [0]) + extra_cols) % 2 == 0, -1, 10**6)
    block_tables = np.tile(table, (len(keys), 1)).astype(np.int32)
    start = 0
    for s, (k, v) in enumerate(zip(keys, values)):
        row = ids[start:start + n_blocks[s]]
        start += n_blocks[s]
        block_tables[s, :len(row)] = row
        for t in range(k.shape[1]):
            b, o = row[t // block_size], t % block_size
            # key element d of head g -> [b, g, d // x, o, d % x]; value element -> [b, g, d, o]
            key_cache[b, :, :, o, :] = k[:, t, :].reshape(num_kv_heads, head_size // x, x)
            value_cache[b, :, :, o] = v[:, t, :]
    return key_cache, value_cache, block_tables


def brute_force(query, keys, values, scale, slopes=None, attended=None):
    """out[s, h] = sum_t e_t v_t / (sum_t e_t + 1e-6), e_t = exp(logit_t - max), one head at a time.

    ``attended[s]`` (bool [num_heads, L]) restricts the tokens, as block-sparse does.
    """
    num_seqs, num_heads, head_size = query.shape
    out = np.zeros((num_seqs, num_heads, head_size))
    for s in range(num_seqs):
        K, V = keys[s].astype(np.float64), values[s].astype(np.float64)
        num_kv_heads, L, _ = K.shape
        for h in range(num_heads):
            g = h // (num_heads // num_kv_heads)
            logits = np.array([scale * np.dot(query[s, h].astype(np.float64), K[g, t]) for t in range(L)])
            if slopes is not None:
                logits = logits + slopes[h] * (np.arange(L) - (L - 1))
            keep = np.ones(L, dtype=bool) if attended is None else attended[s][h]
            if keep.any():
                e = np.exp(logits[keep] - logits[keep].max())
                out[s, h] = np.dot(e, V[g][keep]) / (e.sum() + EPS)
    return out


def make_case(seed, seq_lens, num_heads=4, num_kv_heads=2, head_size=32, block_size=16,
              dtype=np.float32, x=None):
    rng = np.random.default_rng(seed)
    # x = 16 bytes / element size; float64 (oracle-only) uses the fp32 layout, x = 4.
    x = x or {2: 8, 4: 4, 8: 4}[np.dtype(dtype).itemsize]
    keys, values = random_dense(rng, seq_lens, num_kv_heads, head_size, dtype)
    key_cache, value_cache, block_tables = write_paged(keys, values, block_size, x, rng=rng)
    query = rng.standard_normal((len(seq_lens), num_heads, head_size)).astype(dtype)
    kwargs = dict(query=query, key_cache=key_cache, value_cache=value_cache, num_kv_heads=num_kv_heads,
                  scale=head_size ** -0.5, block_tables=block_tables,
                  seq_lens=np.array(seq_lens, dtype=np.int32), block_size=block_size,
                  max_seq_len=max(seq_lens + [0]))
    return kwargs, keys, values, rng


def v2_atol(values):
    """Bound on |v2 - v1| per element. With W = sum_p w_p, S_p = tmp_out_p (Z_p + eps):
    v2 - v1 = -sum_p e^(m_p - M) S_p eps / (Z_p + eps) / (W + eps), and |S_p| <= Z_p max|v|,
    so |v2 - v1| < eps * max|v| (an absolute bound: small outputs can differ by more than eps
    relative). 1e-12 covers float64 rounding."""
    return EPS * max(np.abs(v).max() for v in values if v.size) + 1e-12


def alibi_slopes(num_heads):
    """vLLM/ALiBi-paper slopes 2^(-8 (i + 1) / n): realistic, all positive."""
    return (2.0 ** (-8.0 * np.arange(1, num_heads + 1) / num_heads)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# fp8 decoding and kv_cache_dtype strings (§2.3, §3.2)


@pytest.mark.parametrize("fmt", [pytest.param("e4m3", marks=needs_fp8("e4m3")),
                                 pytest.param("e5m2", marks=needs_fp8("e5m2"))])
def test_fp8_decode_all_256_patterns_match_torch(fmt):
    bits = np.arange(256, dtype=np.uint8)
    got = fp8_to_float64(bits, fmt)
    want = torch_decode(bits, fmt)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, want)           # NaN matches NaN
    np.testing.assert_array_equal(np.signbit(got), np.signbit(want))  # -0.0 for 0x80


def test_fp8_decode_known_values():
    e4m3 = fp8_to_float64(np.array([0x7E, 0xFE, 0x38, 0xB8, 0x08, 0x01, 0x80, 0x77], np.uint8), "e4m3")
    np.testing.assert_array_equal(e4m3, [448.0, -448.0, 1.0, -1.0, 2.0**-6, 2.0**-9, -0.0, 240.0])
    table = fp8_to_float64(np.arange(256, dtype=np.uint8), "e4m3")
    assert np.flatnonzero(np.isnan(table)).tolist() == [0x7F, 0xFF] and not np.isinf(table).any()
    e5m2 = fp8_to_float64(np.array([0x7B, 0x3C, 0x01, 0x04, 0x7C, 0xFC], np.uint8), "e5m2")
    np.testing.assert_array_equal(e5m2, [57344.0, 1.0, 2.0**-16, 2.0**-14, np.inf, -np.inf])
    table = fp8_to_float64(np.arange(256, dtype=np.uint8), "e5m2")
    assert np.flatnonzero(np.isnan(table)).tolist() == [0x7D, 0x7E, 0x7F, 0xFD, 0xFE, 0xFF]
    raw = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)[:, ::2]  # shape kept, strided input ok
    assert fp8_to_float64(raw, "e4m3").shape == (2, 2, 4)


def test_fp8_decode_bad_arguments():
    with pytest.raises(CupyOpsValueError, match="fmt"):
        fp8_to_float64(np.zeros(3, np.uint8), "e4m3fnuz")
    with pytest.raises(CupyOpsTypeError, match="raw_uint8.dtype"):
        fp8_to_float64(np.ones(3, np.float32), "e4m3")


def test_kv_cache_dtype_strings():
    want = {"auto": None, "float16": None, "bfloat16": None, "fp8": "e4m3", "fp8_e4m3": "e4m3",
            "fp8_ds_mla": "e4m3", "fp8_e5m2": "e5m2"}
    assert {s: fp8_format_of(s) for s in want} == want
    with pytest.raises(CupyOpsValueError, match="Unsupported data type of kv cache"):
        fp8_format_of("fp8_e4m3fnuz")
    with pytest.raises(CupyOpsTypeError, match="kv_cache_dtype"):
        fp8_format_of(None)


# --------------------------------------------------------------------------------------------
# Cache layout (§2.1, §2.2)


@pytest.mark.parametrize("dtype,x", [(np.float16, 8), (np.float32, 4), (np.float32, 8), (np.uint8, 16)])
@pytest.mark.parametrize("block_size", [8, 32])
def test_gather_round_trips_dense_kv(dtype, x, block_size):
    # Lengths: one token, block multiples -1/0/+1, several blocks with a ragged tail.
    rng = np.random.default_rng(1)
    seq_lens = [1, block_size - 1, block_size, block_size + 1, 3 * block_size + 5]
    if dtype == np.uint8:
        keys = [rng.integers(0, 256, (3, L, 32), dtype=np.uint8) for L in seq_lens]
        values = [rng.integers(0, 256, (3, L, 32), dtype=np.uint8) for L in seq_lens]
    else:
        keys, values = random_dense(rng, seq_lens, 3, 32, dtype)
    key_cache, value_cache, block_tables = write_paged(keys, values, block_size, x, rng=rng)
    for s, L in enumerate(seq_lens):
        k, v = gather_kv(key_cache, value_cache, block_tables[s], L)
        assert k.dtype == dtype and k.shape == v.shape == (3, L, 32)
        np.testing.assert_array_equal(k, keys[s])
        np.testing.assert_array_equal(v, values[s])


def test_gather_follows_address_formula_with_repeated_block_ids():
    # Random contents everywhere and a table drawn with replacement (ids repeat, as in vLLM's
    # test): every element must come from [b, g, d // x, t % BS, d % x] / [b, g, d, t % BS].
    rng = np.random.default_rng(2)
    num_blocks, Hkv, D, BS, x, L = 5, 2, 32, 8, 4, 37
    key_cache = rng.standard_normal((num_blocks, Hkv, D // x, BS, x))
    value_cache = rng.standard_normal((num_blocks, Hkv, D, BS))
    row = rng.integers(0, num_blocks, cdiv(L, BS) + 2).astype(np.int32)
    keys, values = gather_kv(key_cache, value_cache, row, L)
    for g in range(Hkv):
        for t in range(L):
            b, o = row[t // BS], t % BS
            for d in range(D):
                assert keys[g, t, d] == key_cache[b, g, d // x, o, d % x]
                assert values[g, t, d] == value_cache[b, g, d, o]


def test_gather_read_blocks_never_touches_unread_entries():
    rng = np.random.default_rng(3)
    key_cache = rng.standard_normal((4, 1, 8, 8, 4))
    value_cache = rng.standard_normal((4, 1, 32, 8))
    row = np.array([2, 10**6, 1], np.int32)  # entry 1 is garbage but not read
    k, v = gather_kv(key_cache, value_cache, row, 20, read_blocks=[True, False, True])
    np.testing.assert_array_equal(k[0, 8:16], 0.0)
    np.testing.assert_array_equal(v[0, 16:20], value_cache[1, 0, :, :4].T)
    with pytest.raises(CupyOpsValueError, match="block_tables entry 1"):
        gather_kv(key_cache, value_cache, row, 20)


# --------------------------------------------------------------------------------------------
# v1 against brute force (§4.1, §4.3, GQA/MQA, ALiBi)

V1_SWEEP = [
    # (num_heads, num_kv_heads, head_size, block_size, dtype, alibi, seq_lens): why
    (4, 4, 32, 16, np.float32, False, [1, 15, 16, 17, 100]),      # MHA, block multiples +-1
    (8, 2, 80, 8, np.float16, True, [7, 8, 9, 511, 513]),         # GQA, D not a power of two
    (6, 1, 128, 32, np.float64, True, [31, 32, 33, 600]),         # MQA, 6 heads on 1 kv head
    (4, 2, 32, 16, np.float32, False, [512, 1, 0, 97]),           # an empty sequence in the batch
    (12, 4, 64, 16, np.float16, False, [1000, 1024, 1023]),       # longer, several partitions
]


@pytest.mark.parametrize("num_heads,num_kv_heads,head_size,block_size,dtype,alibi,seq_lens", V1_SWEEP)
def test_v1_matches_brute_force(num_heads, num_kv_heads, head_size, block_size, dtype, alibi, seq_lens):
    kw, keys, values, rng = make_case(4, seq_lens, num_heads, num_kv_heads, head_size, block_size, dtype)
    if alibi:
        kw["alibi_slopes"] = alibi_slopes(num_heads)
    got = paged_attention(**kw)
    want = brute_force(kw["query"], keys, values, f32(kw["scale"]), kw.get("alibi_slopes"))
    assert got.dtype == np.float64 and got.shape == kw["query"].shape
    assert np.isfinite(got).all()  # NaN poison in unread slots and blocks stayed out
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def test_v1_peaked_softmax_and_random_slopes():
    # scale 1 with D = 64 gives logits of std 8: nearly one-hot softmax; slopes N(0, 1) as in
    # vLLM's test, including negative ones (oldest token favoured) and an exact 0.
    kw, keys, values, rng = make_case(5, [300, 45], 8, 2, 64, 16, np.float32)
    kw["scale"] = 1.0
    slopes = rng.standard_normal(8).astype(np.float32)
    slopes[3] = 0.0
    got = paged_attention(**kw, alibi_slopes=slopes)
    np.testing.assert_allclose(got, brute_force(kw["query"], keys, values, 1.0, slopes), rtol=RTOL, atol=ATOL)


def test_v1_eight_sequences_of_2000_tokens_is_fast():
    # The oracle must stay vectorised per sequence; a per-token Python loop takes > 10 s here.
    kw, keys, values, rng = make_case(6, [2000 + 7 * i for i in range(8)], 16, 4, 128, 16, np.float16)
    start = time.perf_counter()
    got = paged_attention(**kw)
    assert time.perf_counter() - start < 5.0
    want = brute_force(kw["query"][:2], keys[:2], values[:2], f32(kw["scale"]))
    np.testing.assert_allclose(got[:2], want, rtol=RTOL, atol=ATOL)


def test_single_token_worked_example_shows_epsilon():
    # L = 1: Z = exp(0) = 1, so out = v_0 / (1 + 1e-6) exactly, whatever q and k are.
    kw, keys, values, rng = make_case(7, [1, 1], 4, 2, 32, 8, np.float64)
    got = paged_attention(**kw)
    for s in range(2):
        for h in range(4):
            np.testing.assert_allclose(got[s, h], values[s][h // 2, 0] / (1.0 + EPS), rtol=1e-15)
    assert not np.allclose(got[0, 0], values[0][0, 0], rtol=1e-8, atol=0)


def test_gqa_head_mapping():
    # 8 query heads over 2 kv heads: heads 0-3 read kv head 0, 4-7 kv head 1 (h // 4, not h % 2).
    # Each kv head's values are one constant c_g, so out[h] = c_g * Z / (Z + 1e-6).
    rng = np.random.default_rng(8)
    c = rng.uniform(1.0, 2.0, 2) * np.array([1.0, -1.0])
    keys = [rng.standard_normal((2, 40, 32))]
    values = [np.broadcast_to(c[:, None, None], (2, 40, 32)).copy()]
    key_cache, value_cache, block_tables = write_paged(keys, values, 8, 4, rng=rng)
    query = rng.standard_normal((1, 8, 32))
    out = paged_attention(query, key_cache, value_cache, 2, 0.2, block_tables,
                          np.array([40], np.int32), 8, 40)
    for h in range(8):
        np.testing.assert_allclose(out[0, h], c[h // 4], rtol=2e-6)
    for num_kv_heads in (1, 8):  # MQA and MHA on the same data layout idea
        keys = [rng.standard_normal((num_kv_heads, 40, 32))]
        consts = np.arange(1.0, num_kv_heads + 1)[:, None, None]
        vals = [np.broadcast_to(consts, (num_kv_heads, 40, 32)).copy()]
        kc, vc, bt = write_paged(keys, vals, 8, 4, rng=rng)
        out = paged_attention(query, kc, vc, num_kv_heads, 0.2, bt, np.array([40], np.int32), 8, 40)
        group = 8 // num_kv_heads
        np.testing.assert_allclose(out[0, :, 0], [1.0 + h // group for h in range(8)], rtol=2e-6)


def test_alibi_worked_example():
    # All keys equal, so q.k is the same for every token and only ALiBi shapes the softmax.
    # L = 3, slope ln 2: biases -2 ln 2, -ln 2, 0 -> weights 1/4, 1/2, 1, Z = 7/4.
    # slope -ln 2: weights 1, 1/2, 1/4 (oldest favoured); slope 0: uniform, Z = 3.
    rng = np.random.default_rng(9)
    k_row = rng.standard_normal(32)
    keys = [np.tile(k_row, (1, 3, 1))]
    values = [rng.standard_normal((1, 3, 32))]
    key_cache, value_cache, block_tables = write_paged(keys, values, 8, 4, rng=rng)
    query = rng.standard_normal((1, 3, 32))
    slopes = np.array([math.log(2.0), -math.log(2.0), 0.0])
    out = paged_attention(query, key_cache, value_cache, 1, 0.3, block_tables, np.array([3], np.int32),
                          8, 3, alibi_slopes=slopes)
    v = values[0][0]
    np.testing.assert_allclose(out[0, 0], (v[0] / 4 + v[1] / 2 + v[2]) / (1.75 + EPS), rtol=1e-12)
    np.testing.assert_allclose(out[0, 1], (v[0] + v[1] / 2 + v[2] / 4) / (1.75 + EPS), rtol=1e-12)
    np.testing.assert_allclose(out[0, 2], (v[0] + v[1] + v[2]) / (3.0 + EPS), rtol=1e-12)


def test_zero_slopes_equal_no_alibi():
    kw, *_ = make_case(10, [50, 3], 4, 2, 32, 16)
    np.testing.assert_array_equal(paged_attention(**kw, alibi_slopes=np.zeros(4, np.float32)),
                                  paged_attention(**kw))


def test_query_may_be_a_strided_slice_of_qkv():
    kw, *_ = make_case(11, [70, 20], 4, 2, 32, 16)
    qkv = np.random.default_rng(0).standard_normal((2, 12, 32)).astype(np.float32)
    qkv[:, :4] = kw["query"]
    want = paged_attention(**kw)
    kw["query"] = qkv[:, :4]
    assert not kw["query"].flags.c_contiguous
    np.testing.assert_array_equal(paged_attention(**kw), want)


def test_scale_is_narrowed_to_float32():
    kw, *_ = make_case(12, [40], 4, 2, 32, 16)
    kw["scale"] = 0.1
    got = paged_attention(**kw)
    kw["scale"] = f32(0.1)
    np.testing.assert_array_equal(got, paged_attention(**kw))


# --------------------------------------------------------------------------------------------
# NaN / inf behaviour (§4.3, §6)


def test_poison_outside_the_sequence_never_reaches_output():
    # NaN (0x7f for fp8) in tail slots, spare blocks; garbage ids past each row's blocks.
    kw, keys, values, rng = make_case(13, [17, 33, 8], 4, 2, 32, 16, np.float32)
    assert np.isnan(kw["key_cache"]).any() and (kw["block_tables"] < 0).any()
    got = paged_attention(**kw)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, brute_force(kw["query"], keys, values, f32(kw["scale"])), rtol=RTOL)


def test_nan_in_an_attended_key_or_value():
    kw, keys, values, rng = make_case(14, [30, 30], 4, 2, 32, 16, np.float32)
    b = kw["block_tables"][0, 1]
    kw["key_cache"][b, 1, 2, 5, 1] = np.nan          # seq 0, kv head 1, token 21: whole heads 2, 3
    out = paged_attention(**kw)
    assert np.isnan(out[0, 2:]).all() and np.isfinite(out[0, :2]).all() and np.isfinite(out[1]).all()
    kw, keys, values, rng = make_case(14, [30, 30], 4, 2, 32, 16, np.float32)
    kw["value_cache"][kw["block_tables"][1, 0], 0, 3, 4] = np.nan  # seq 1, kv head 0, d = 3
    out = paged_attention(**kw)
    assert np.isnan(out[1, :2, 3]).all()
    assert np.isfinite(np.delete(out[1, :2], 3, axis=1)).all() and np.isfinite(out[0]).all()


def test_all_minus_inf_logits_give_zeros_and_plus_inf_gives_nan():
    # q > 0 and keys of -inf: every logit is -inf, the max stays -FLT_MAX, Z = 0 -> zeros.
    rng = np.random.default_rng(15)
    keys = [np.full((1, 20, 32), -np.inf)]
    values = [rng.standard_normal((1, 20, 32))]
    key_cache, value_cache, block_tables = write_paged(keys, values, 8, 4, rng=rng)
    query = rng.uniform(0.5, 1.5, (1, 2, 32))
    args = (query, key_cache, value_cache, 1, 0.2, block_tables, np.array([20], np.int32), 8, 20)
    np.testing.assert_array_equal(paged_attention(*args), 0.0)
    keys[0][0, 7] = np.inf                        # one +inf logit: inf - inf = NaN
    key_cache, value_cache, block_tables = write_paged(keys, values, 8, 4, rng=rng)
    args = (query, key_cache, value_cache, 1, 0.2, block_tables, np.array([20], np.int32), 8, 20)
    assert np.isnan(paged_attention(*args)).all()


# --------------------------------------------------------------------------------------------
# fp8 caches (§2.3, §3.2, §8.1's x = 8 mistake)


def fp8_case(seed, fmt, seq_lens, num_heads=8, num_kv_heads=2, head_size=64, block_size=16,
             k_scale=0.37, v_scale=1.9):
    rng = np.random.default_rng(seed)
    keys = [fp8_bytes(rng, (num_kv_heads, L, head_size), fmt, k_scale) for L in seq_lens]
    values = [fp8_bytes(rng, (num_kv_heads, L, head_size), fmt, v_scale) for L in seq_lens]
    key_cache, value_cache, block_tables = write_paged(keys, values, block_size, 16, rng=rng)
    query = rng.standard_normal((len(seq_lens), num_heads, head_size)).astype(np.float16)
    kw = dict(query=query, key_cache=key_cache, value_cache=value_cache, num_kv_heads=num_kv_heads,
              scale=head_size ** -0.5, block_tables=block_tables, seq_lens=np.array(seq_lens, np.int32),
              block_size=block_size, max_seq_len=max(seq_lens))
    dense_k = [torch_decode(k, fmt) * k_scale for k in keys]
    dense_v = [torch_decode(v, fmt) * v_scale for v in values]
    return kw, dense_k, dense_v


@pytest.mark.parametrize("kv_cache_dtype,fmt", [
    pytest.param("fp8", "e4m3", marks=needs_fp8("e4m3")),
    pytest.param("fp8_e4m3", "e4m3", marks=needs_fp8("e4m3")),
    pytest.param("fp8_ds_mla", "e4m3", marks=needs_fp8("e4m3")),
    pytest.param("fp8_e5m2", "e5m2", marks=needs_fp8("e5m2")),
])
def test_fp8_cache_matches_brute_force(kv_cache_dtype, fmt):
    # k_scale != v_scale, passed as a 0-d float32 array and a Python float.
    kw, dense_k, dense_v = fp8_case(16, fmt, [1, 17, 530], k_scale=f32(0.37), v_scale=1.9)
    slopes = alibi_slopes(8)
    got = paged_attention(**kw, alibi_slopes=slopes, kv_cache_dtype=kv_cache_dtype,
                          k_scale=np.array(0.37, np.float32), v_scale=1.9)
    want = brute_force(kw["query"], dense_k, dense_v, f32(kw["scale"]), slopes)
    assert np.isfinite(got).all()  # 0x7f (NaN) poison in unread slots stayed out
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


@needs_fp8("e5m2")
def test_fp8_formats_differ_and_scales_are_read_from_element_0():
    kw, _, _ = fp8_case(17, "e4m3", [40, 9])
    e4m3 = paged_attention(**kw, kv_cache_dtype="fp8", k_scale=0.5, v_scale=2.0)
    assert not np.allclose(e4m3, paged_attention(**kw, kv_cache_dtype="fp8_e5m2", k_scale=0.5, v_scale=2.0))
    for k_scale in (np.array([0.5, 9.0]), np.array([[0.5]], np.float32), np.float32(0.5)):
        np.testing.assert_array_equal(paged_attention(**kw, kv_cache_dtype="fp8", k_scale=k_scale,
                                                      v_scale=np.array([2.0])), e4m3)
    # v_scale multiplies values only: out scales linearly with it.
    np.testing.assert_allclose(paged_attention(**kw, kv_cache_dtype="fp8", k_scale=0.5, v_scale=6.0),
                               3.0 * e4m3, rtol=1e-13, atol=1e-14)


def test_auto_mode_ignores_scales():
    kw, *_ = make_case(18, [25], 4, 2, 32, 16)
    np.testing.assert_array_equal(paged_attention(**kw, k_scale=3.0, v_scale=np.array([0.1])),
                                  paged_attention(**kw))


def test_fp8_layout_must_use_x_16():
    # vLLM's own test re-views an fp8 cache with x = 8 (spec §8.1); that must be rejected.
    rng = np.random.default_rng(19)
    query = rng.standard_normal((1, 2, 64)).astype(np.float32)
    kc8 = rng.integers(0, 0x70, (3, 1, 8, 16, 8), dtype=np.uint8)
    vc = rng.integers(0, 0x70, (3, 1, 64, 16), dtype=np.uint8)
    args = (query, kc8, vc, 1, 0.125, np.array([[0]], np.int32), np.array([5], np.int32), 16, 5)
    with pytest.raises(CupyOpsValueError, match=r"key_cache.shape\[4\]"):
        paged_attention(*args, kv_cache_dtype="fp8")
    with pytest.raises(CupyOpsTypeError, match="key_cache.dtype must be uint8"):
        paged_attention(query, kc8.astype(np.float32), vc.astype(np.float32), *args[3:], kv_cache_dtype="fp8")
    q120 = rng.standard_normal((1, 2, 120)).astype(np.float32)  # §3.1: 120 % 16 != 0
    with pytest.raises(CupyOpsValueError, match="no fp8 cache layout"):
        paged_attention(q120, rng.integers(0, 9, (3, 1, 15, 16, 8), dtype=np.uint8),
                        rng.integers(0, 9, (3, 1, 120, 16), dtype=np.uint8), *args[3:], kv_cache_dtype="fp8")


# --------------------------------------------------------------------------------------------
# v2 partials and reduce (§5)


def brute_force_partials(query, keys, values, scale, partition_size, P, slopes):
    num_seqs, num_heads, head_size = query.shape
    m = np.full((num_seqs, num_heads, P), np.nan)
    z = np.full((num_seqs, num_heads, P), np.nan)
    tmp = np.full((num_seqs, num_heads, P, head_size), np.nan)
    for s in range(num_seqs):
        K, V = keys[s].astype(np.float64), values[s].astype(np.float64)
        num_kv_heads, L, _ = K.shape
        for h in range(num_heads):
            g = h // (num_heads // num_kv_heads)
            for p in range(cdiv(L, partition_size)):
                ts = range(p * partition_size, min((p + 1) * partition_size, L))
                logits = np.array([scale * np.dot(query[s, h].astype(np.float64), K[g, t])
                                   + slopes[h] * (t - (L - 1)) for t in ts])
                e = np.exp(logits - logits.max())
                m[s, h, p], z[s, h, p] = logits.max(), e.sum()
                tmp[s, h, p] = np.dot(e, V[g, ts.start:ts.stop]) / (e.sum() + EPS)
    return m, z, tmp


@pytest.mark.parametrize("partition_size,block_size", [(512, 16), (256, 32), (64, 8)])
def test_v2_partials_match_per_partition_brute_force(partition_size, block_size):
    # Lengths around partition boundaries, an empty sequence, and max_seq_len well above the
    # longest sequence so that trailing partitions exist that no sequence writes. ALiBi is on:
    # max_logits is the one output where its absolute offset (newest token 0) is visible.
    seq_lens = [1, partition_size - 1, partition_size, partition_size + 1, 0, 2 * partition_size + 75]
    kw, keys, values, rng = make_case(20, seq_lens, 4, 2, 32, block_size, np.float32)
    kw["max_seq_len"] = max(seq_lens) + 700
    kw["alibi_slopes"] = alibi_slopes(4)
    got = paged_attention_v2_partials(**kw, partition_size=partition_size)
    P = cdiv(kw["max_seq_len"], partition_size)
    assert got.exp_sums.shape == got.max_logits.shape == got.defined.shape == (6, 4, P)
    assert got.tmp_out.shape == (6, 4, P, 32)
    n_parts = np.array([cdiv(L, partition_size) for L in seq_lens])
    want_defined = np.arange(P)[None, None, :] < n_parts[:, None, None]
    np.testing.assert_array_equal(got.defined, np.broadcast_to(want_defined, (6, 4, P)))
    assert np.isnan(got.exp_sums[~got.defined]).all() and np.isnan(got.tmp_out[~got.defined]).all()
    m, z, tmp = brute_force_partials(kw["query"], keys, values, f32(kw["scale"]), partition_size, P,
                                     kw["alibi_slopes"])
    d = got.defined
    np.testing.assert_allclose(got.max_logits[d], m[d], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got.exp_sums[d], z[d], rtol=RTOL)
    np.testing.assert_allclose(got.tmp_out[d], tmp[d], rtol=RTOL, atol=ATOL)


def test_v2_partials_recombine_by_lse_to_v1():
    # Undo each partition's 1e-6, merge by log-sum-exp, and the result is exact softmax
    # attention; v1 with its 1e-6 removed (times (Z + eps) / Z) must equal it.
    seq_lens = [1300, 513, 1025]
    kw, keys, values, rng = make_case(21, seq_lens, 8, 2, 64, 16, np.float64)
    kw["alibi_slopes"] = alibi_slopes(8)
    v1 = paged_attention(**kw)
    parts = paged_attention_v2_partials(**kw)
    for s, L in enumerate(seq_lens):
        n = cdiv(L, 512)
        m, z, tmp = parts.max_logits[s, :, :n], parts.exp_sums[s, :, :n], parts.tmp_out[s, :, :n]
        exact_partials = tmp * ((z + EPS) / z)[:, :, None]
        lse = m + np.log(z)
        total_lse = np.logaddexp.reduce(lse, axis=1)
        merged = np.einsum("hp,hpd->hd", np.exp(lse - total_lse[:, None]), exact_partials)
        z_total = np.exp(total_lse - m.max(axis=1))   # v1's Z, relative to v1's max
        np.testing.assert_allclose(merged, v1[s] * ((z_total + EPS) / z_total)[:, None],
                                   rtol=1e-12, atol=1e-14)


def test_v2_out_equals_v1_bitwise_for_one_partition_and_closely_otherwise():
    seq_lens = [512, 100, 1, 513, 2000]
    kw, keys, values, rng = make_case(22, seq_lens, 4, 1, 32, 32, np.float32)
    v1 = paged_attention(**kw)
    v2 = paged_attention_v2(**kw)
    np.testing.assert_array_equal(v2[:3], v1[:3])     # n_s == 1: tmp_out copied verbatim
    # n_s > 1: the local and global 1e-6 move the result by less than 1e-6 * max|v|.
    np.testing.assert_allclose(v2[3:], v1[3:], rtol=0, atol=v2_atol(values))
    assert not np.array_equal(v2[3:], v1[3:])


def test_v2_reduce_worked_example():
    # One sequence, two heads, L = 700 -> 2 partitions of P = 3; partition 2 is undefined (NaN).
    m = np.array([[[1.0, 3.0, np.nan], [0.5, 0.5, np.nan]]])
    z = np.array([[[2.0, 4.0, np.nan], [1.0, 3.0, np.nan]]])
    tmp = np.random.default_rng(23).standard_normal((1, 2, 3, 32))
    tmp[:, :, 2] = np.nan
    out = paged_attention_v2_reduce(z, m, tmp, np.array([700]))
    w0 = np.array([2.0 * math.exp(-2.0), 4.0])      # head 0: M = 3
    np.testing.assert_allclose(out[0, 0], (w0[0] * tmp[0, 0, 0] + w0[1] * tmp[0, 0, 1]) / (w0.sum() + EPS),
                               rtol=1e-14)
    np.testing.assert_allclose(out[0, 1], (1.0 * tmp[0, 1, 0] + 3.0 * tmp[0, 1, 1]) / (4.0 + EPS), rtol=1e-14)
    # n_s = 1 copies partition 0 (its NaN scratch sums are not even read); n_s = 0 writes zeros.
    out = paged_attention_v2_reduce(np.full((2, 2, 3), np.nan), np.full((2, 2, 3), np.nan), tmp.repeat(2, 0),
                                    np.array([512, 0]))
    np.testing.assert_array_equal(out[0], tmp[0, :, 0])
    np.testing.assert_array_equal(out[1], 0.0)
    with pytest.raises(CupyOpsValueError, match="partitions"):
        paged_attention_v2_reduce(z, m, tmp, np.array([1537]))


def test_num_partitions_examples():
    # §8.2: the benchmark default (4096 tokens) has P = 8; §8.1: H100 MAX_SEQ_LEN 57600 -> 113.
    assert [num_partitions(n) for n in (0, 1, 512, 513, 4096, 57600)] == [0, 1, 1, 2, 8, 113]
    assert num_partitions(513, 256) == 3


# --------------------------------------------------------------------------------------------
# L = 0, S = 0, max_seq_len (§6)


def test_empty_sequence_gives_zeros_and_no_partials():
    kw, keys, values, rng = make_case(24, [0, 40, 0], 4, 2, 32, 16)
    out = paged_attention(**kw)
    np.testing.assert_array_equal(out[[0, 2]], 0.0)
    want = brute_force(kw["query"][1:2], keys[1:2], values[1:2], f32(kw["scale"]))
    np.testing.assert_allclose(out[1], want[0], rtol=RTOL)
    parts = paged_attention_v2_partials(**kw)
    assert not parts.defined[[0, 2]].any() and parts.defined[1].all()
    np.testing.assert_array_equal(paged_attention_v2(**kw)[[0, 2]], 0.0)


def test_no_sequences_and_max_seq_len_zero():
    rng = np.random.default_rng(25)
    kc, vc = rng.standard_normal((2, 2, 8, 16, 4)), rng.standard_normal((2, 2, 32, 16))
    empty = dict(query=np.ones((0, 4, 32)), key_cache=kc, value_cache=vc, num_kv_heads=2, scale=0.2,
                 block_tables=np.zeros((0, 3), np.int32), seq_lens=np.zeros(0, np.int32), block_size=16,
                 max_seq_len=1000)
    assert paged_attention(**empty).shape == (0, 4, 32)
    parts = paged_attention_v2_partials(**empty)
    assert parts.exp_sums.shape == (0, 4, 2) and parts.tmp_out.shape == (0, 4, 2, 32)
    assert paged_attention_v2(**empty).shape == (0, 4, 32)
    zero = dict(empty, query=rng.standard_normal((2, 4, 32)), block_tables=np.full((2, 1), -1, np.int32),
                seq_lens=np.zeros(2, np.int32), max_seq_len=0)
    np.testing.assert_array_equal(paged_attention(**zero), 0.0)
    parts = paged_attention_v2_partials(**zero)
    assert parts.exp_sums.shape == (2, 4, 0) and parts.tmp_out.shape == (2, 4, 0, 32)
    np.testing.assert_array_equal(paged_attention_v2(**zero), np.zeros((2, 4, 32)))


def test_larger_max_seq_len_changes_nothing():
    kw, *_ = make_case(26, [600, 30], 4, 2, 32, 16)
    v1, parts = paged_attention(**kw), paged_attention_v2_partials(**kw)
    kw["max_seq_len"] = 5000
    np.testing.assert_array_equal(paged_attention(**kw), v1)
    big = paged_attention_v2_partials(**kw)
    assert big.exp_sums.shape[2] == 10 and parts.exp_sums.shape[2] == 2
    np.testing.assert_array_equal(big.tmp_out[:, :, :2][parts.defined], parts.tmp_out[parts.defined])
    assert not big.defined[:, :, 2:].any()


# --------------------------------------------------------------------------------------------
# Block-sparse (§4.4)


def attended_blocks_by_hand(L, BS, B, vert, local, step, tp_rank, num_heads, num_kv_heads):
    """The §4.4 rule evaluated one head and one cache block at a time."""
    rows = []
    for h in range(num_heads):
        g = h // (num_heads // num_kv_heads)
        if step >= 0:
            off = (tp_rank * num_heads + h) * step + 1
        else:
            off = (tp_rank * num_kv_heads + g) * (-step) + 1
        q_blk = (L - 1) // B
        rows.append([((j * BS) // B + off) % vert == 0 or (j * BS) // B > q_blk - local
                     for j in range(cdiv(L, BS))])
    return np.array(rows, dtype=bool)


def test_blocksparse_attended_blocks_worked_examples():
    # L = 200, BS = 16, B = 32: 13 cache blocks, kb = j // 2 = 0 0 1 1 2 2 3 3 4 4 5 5 6, q_blk = 6.
    def blocks(mask):
        return [np.flatnonzero(r).tolist() for r in mask]
    # vert 3, local 2 (kb 5, 6), step 1, tp_rank 0: off = h + 1 -> remote kb {2,5} {1,4} {0,3,6} {2,5}
    got = blocksparse_attended_blocks(200, 16, 4, 2, 0, 2, 3, 32, 1)
    assert blocks(got) == [[4, 5, 10, 11, 12], [2, 3, 8, 9, 10, 11, 12],
                           [0, 1, 6, 7, 10, 11, 12], [4, 5, 10, 11, 12]]
    # step -1 slides over kv heads, tp_rank 1: off = (2 + g) + 1 = 3 (heads 0, 1) or 4 (heads 2, 3).
    got = blocksparse_attended_blocks(200, 16, 4, 2, 1, 2, 3, 32, -1)
    assert blocks(got) == [[0, 1, 6, 7, 10, 11, 12]] * 2 + [[4, 5, 10, 11, 12]] * 2
    # step 2, tp_rank 1, 2 heads: off = (2 + h) * 2 + 1 = 5, 7; vert 4, local 1 (kb 6 only).
    got = blocksparse_attended_blocks(200, 16, 2, 1, 1, 1, 4, 32, 2)
    assert blocks(got) == [[6, 7, 12], [2, 3, 10, 11, 12]]
    for vert in (0, 1):  # off unless vert_stride > 1
        assert blocksparse_attended_blocks(200, 16, 4, 2, 3, -5, vert, 24, 7).all()


def test_blocksparse_rule_matches_hand_evaluation_and_keeps_own_block():
    rng = np.random.default_rng(27)
    for _ in range(200):
        BS = int(rng.choice([8, 16, 32]))
        B, L = BS * int(rng.integers(1, 5)), int(rng.integers(1, 700))
        num_kv_heads = int(rng.choice([1, 2, 4]))
        num_heads = num_kv_heads * int(rng.integers(1, 4))
        vert, local = int(rng.integers(2, 6)), int(rng.integers(0, 4))
        step, tp_rank = int(rng.integers(-3, 4)), int(rng.integers(0, 3))
        got = blocksparse_attended_blocks(L, BS, num_heads, num_kv_heads, tp_rank, local, vert, B, step)
        want = attended_blocks_by_hand(L, BS, B, vert, local, step, tp_rank, num_heads, num_kv_heads)
        np.testing.assert_array_equal(got, want)
        if local >= 1:  # with local_blocks >= 1 the query's own block is always attended
            assert got[:, -1].all()


@pytest.mark.parametrize("step,tp_rank", [(1, 0), (-1, 2), (0, 1), (3, 1)])
def test_blocksparse_matches_brute_force_on_attended_tokens(step, tp_rank):
    seq_lens, BS, B = [700, 130, 1], 16, 32
    kw, keys, values, rng = make_case(28, seq_lens, 8, 2, 32, BS)
    sparse = dict(tp_rank=tp_rank, blocksparse_local_blocks=2, blocksparse_vert_stride=3,
                  blocksparse_block_size=B, blocksparse_head_sliding_step=step)
    attended = []
    for s, L in enumerate(seq_lens):
        blocks = attended_blocks_by_hand(L, BS, B, 3, 2, step, tp_rank, 8, 2)
        attended.append(np.repeat(blocks, BS, axis=1)[:, :L])
        # Poison what must not be read: blocks no head attends get NaN contents and a garbage id;
        # blocks only some heads attend keep real data (other heads must not mix it in).
        for j in np.flatnonzero(~blocks.any(axis=0)):
            kw["key_cache"][kw["block_tables"][s, j]] = np.nan
            kw["value_cache"][kw["block_tables"][s, j]] = np.nan
            kw["block_tables"][s, j] = 10**6
    # With step 1 the 8 heads' offsets cover every residue mod 3, so every block is someone's.
    assert step == 1 or (kw["block_tables"][0] == 10**6).any()
    kw["alibi_slopes"] = alibi_slopes(8)
    got = paged_attention(**kw, **sparse)
    want = brute_force(kw["query"], keys, values, f32(kw["scale"]), kw["alibi_slopes"], attended)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    v2 = paged_attention_v2(**kw, **sparse, partition_size=128)
    np.testing.assert_allclose(v2, want, rtol=0, atol=v2_atol(values))


def test_blocksparse_all_skipped_sequence_and_partition():
    # v1: L = 20, B = 32 -> one sparse block kb = 0 = q_blk; local 0 attends nothing local,
    # off = 1 with vert 2 misses kb 0 -> nothing attended -> zeros.
    kw, *_ = make_case(29, [20], 4, 2, 32, 16)
    sparse = dict(blocksparse_local_blocks=0, blocksparse_vert_stride=2, blocksparse_block_size=32,
                  blocksparse_head_sliding_step=0)
    np.testing.assert_array_equal(paged_attention(**kw, **sparse), 0.0)
    # v2: L = 1100, B = 512 = partition: kb = partition index, q_blk = 2. vert 2, off 1 attends
    # kb 1; local 1 attends kb 2; partition 0 is skipped whole: max -FLT_MAX, Z = 512 tokens,
    # tmp_out 0, and the reduce gives it weight 0.
    kw, keys, values, rng = make_case(30, [1100], 4, 2, 32, 16)
    sparse = dict(blocksparse_local_blocks=1, blocksparse_vert_stride=2, blocksparse_block_size=512,
                  blocksparse_head_sliding_step=0)
    parts = paged_attention_v2_partials(**kw, **sparse)
    np.testing.assert_array_equal(parts.max_logits[0, :, 0], NEG_FLT_MAX)
    np.testing.assert_array_equal(parts.exp_sums[0, :, 0], 512.0)
    np.testing.assert_array_equal(parts.tmp_out[0, :, 0], 0.0)
    assert (parts.max_logits[0, :, 1:] > NEG_FLT_MAX).all()
    attended = [np.broadcast_to(np.arange(1100) >= 512, (4, 1100))]
    want = brute_force(kw["query"], keys, values, f32(kw["scale"]), attended=attended)
    np.testing.assert_allclose(paged_attention(**kw, **sparse), want, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(paged_attention_v2(**kw, **sparse), want, rtol=0, atol=v2_atol(values))


def test_blocksparse_off_ignores_other_arguments():
    kw, *_ = make_case(31, [300], 4, 2, 32, 16)
    np.testing.assert_array_equal(
        paged_attention(**kw, tp_rank=3, blocksparse_local_blocks=-4, blocksparse_vert_stride=1,
                        blocksparse_block_size=24, blocksparse_head_sliding_step=-2),
        paged_attention(**kw))


def test_nan_logit_is_ignored_by_partition_max():
    # The kernel's max is fmaxf from -FLT_MAX: a NaN logit never becomes the max, while the
    # exp-sum (and output) of its partition turn NaN. The NaN key is token 643, partition 1.
    kw, keys, values, rng = make_case(32, [900], 4, 4, 32, 16)
    clean = paged_attention_v2_partials(**kw)
    kw["key_cache"][kw["block_tables"][0, 40], 0, 0, 3, 0] = np.nan  # token 40*16+3, kv head 0, d 0
    parts = paged_attention_v2_partials(**kw)
    q, k = kw["query"][0, 0].astype(np.float64), keys[0][0, 512:900].astype(np.float64)
    logits = f32(kw["scale"]) * (k @ q)
    np.testing.assert_allclose(parts.max_logits[0, 0, 1], np.delete(logits, 643 - 512).max(), rtol=1e-12)
    assert np.isnan(parts.exp_sums[0, 0, 1]) and np.isnan(parts.tmp_out[0, 0, 1]).all()
    np.testing.assert_array_equal(parts.tmp_out[0, 0, 0], clean.tmp_out[0, 0, 0])
    np.testing.assert_array_equal(parts.tmp_out[0, 1:], clean.tmp_out[0, 1:])


# --------------------------------------------------------------------------------------------
# Bad arguments (§3.3 order first, then our own checks)


def base_kwargs():
    kw, *_ = make_case(33, [20, 35], 4, 2, 32, 16)
    return kw


def _set(**changes):
    return lambda kw: kw.update(changes)


BAD_ARGUMENTS = [
    ("unknown kv dtype", _set(kv_cache_dtype="fp8_e4m3fnuz"), CupyOpsValueError,
     "Unsupported data type of kv cache"),
    ("int query", lambda kw: kw.update(query=kw["query"].astype(np.int32)), CupyOpsTypeError, "query.dtype"),
    ("block size 48", _set(block_size=48), CupyOpsValueError, "block_size must be one of"),
    ("int64 block_tables", lambda kw: kw.update(block_tables=kw["block_tables"].astype(np.int64)),
     CupyOpsTypeError, "block_tables.dtype must be int32"),
    ("int64 seq_lens", lambda kw: kw.update(seq_lens=kw["seq_lens"].astype(np.int64)),
     CupyOpsTypeError, "seq_lens.dtype must be int32"),
    ("head size 44", lambda kw: kw.update(query=np.ones((2, 4, 44), np.float32)), CupyOpsValueError,
     r"query.shape\[2\] \(head_size\)"),
    ("2-D query", lambda kw: kw.update(query=kw["query"][0]), CupyOpsValueError,
     "query must have 3 dimensions"),
    ("cache block size", _set(block_size=8), CupyOpsValueError, r"key_cache.shape\[3\] \(block_size\)"),
    ("x for fp16", lambda kw: kw.update(query=kw["query"].astype(np.float16),
                                        key_cache=kw["key_cache"].astype(np.float16),
                                        value_cache=kw["value_cache"].astype(np.float16)),
     CupyOpsValueError, r"key_cache.shape\[4\]"),
    ("4-D key_cache", lambda kw: kw.update(key_cache=kw["key_cache"][0]), CupyOpsValueError,
     "key_cache must have 5 dimensions"),
    ("kv heads not dividing", _set(num_kv_heads=3), CupyOpsValueError,
     "num_kv_heads must be >= 1 and divide"),
    ("kv heads vs cache", _set(num_kv_heads=4), CupyOpsValueError, r"key_cache.shape\[1\] \(num_kv_heads\)"),
    ("float num_kv_heads", _set(num_kv_heads=2.0), CupyOpsTypeError, "num_kv_heads must be an int"),
    ("value shape", lambda kw: kw.update(value_cache=kw["value_cache"][:, :, :16]), CupyOpsValueError,
     "value_cache.shape"),
    ("value dtype", lambda kw: kw.update(value_cache=kw["value_cache"].astype(np.float64)), CupyOpsTypeError,
     "value_cache.dtype"),
    ("cache vs query dtype", lambda kw: kw.update(query=kw["query"].astype(np.float64)), CupyOpsTypeError,
     "key_cache.dtype must equal query.dtype"),
    ("block id out of range", lambda kw: kw["block_tables"].__setitem__((1, 2), 99), CupyOpsValueError,
     "block_tables entry 2"),
    ("negative block id", lambda kw: kw["block_tables"].__setitem__((0, 0), -1), CupyOpsValueError,
     "block_tables entry 0"),
    ("short table", lambda kw: kw.update(block_tables=kw["block_tables"][:, :2]), CupyOpsValueError,
     r"block_tables.shape\[1\] \(max_num_blocks_per_seq\)"),
    ("table rows", lambda kw: kw.update(block_tables=kw["block_tables"][:1]), CupyOpsValueError,
     "block_tables.shape must be"),
    ("seq_lens shape", lambda kw: kw.update(seq_lens=kw["seq_lens"][:1]), CupyOpsValueError,
     "seq_lens.shape"),
    ("negative length", lambda kw: kw.update(seq_lens=np.array([-1, 35], np.int32)), CupyOpsValueError,
     "seq_lens must be >= 0"),
    ("max_seq_len too small", _set(max_seq_len=34), CupyOpsValueError,
     r"max_seq_len must be >= max\(seq_lens\)"),
    ("alibi shape", _set(alibi_slopes=np.ones(2, np.float32)), CupyOpsValueError, "alibi_slopes.shape"),
    ("int alibi", _set(alibi_slopes=np.ones(4, np.int32)), CupyOpsTypeError, "alibi_slopes.dtype"),
    ("empty k_scale", _set(k_scale=np.zeros(0, np.float32)), CupyOpsTypeError, "k_scale"),
    ("string v_scale", _set(v_scale="1.0"), CupyOpsTypeError, "v_scale"),
    ("string scale", _set(scale="x"), CupyOpsTypeError, "scale must be a float"),
    ("negative tp_rank", _set(tp_rank=-1), CupyOpsValueError, "tp_rank must be >= 0"),
    ("sparse block size", _set(blocksparse_vert_stride=2, blocksparse_block_size=24), CupyOpsValueError,
     "blocksparse_block_size must be a positive multiple"),
]


@pytest.mark.parametrize("fn", [paged_attention, paged_attention_v2_partials])
@pytest.mark.parametrize("name,mutate,error,message", BAD_ARGUMENTS, ids=[b[0] for b in BAD_ARGUMENTS])
def test_bad_arguments_raise(fn, name, mutate, error, message):
    kw = base_kwargs()
    fn(**kw)  # the unmutated case is valid
    mutate(kw)
    with pytest.raises(error, match=message) as info:
        fn(**kw)
    assert str(info.value).startswith(f"{fn.__name__}: ")
    assert isinstance(info.value, RuntimeError)  # vLLM callers catch RuntimeError


def test_error_order_follows_vllm():
    # §3.3: kv dtype string, query dtype, block size, int32 tables, head size.
    kw = base_kwargs()
    kw.update(kv_cache_dtype="nope", query=np.ones((2, 4, 48), np.int32), block_size=7,
              block_tables=kw["block_tables"].astype(np.int64))
    expected = ["Unsupported data type", "query.dtype", "block_size must be one of", "block_tables.dtype",
                "head_size"]
    fixes = [_set(kv_cache_dtype="auto"), lambda k: k.update(query=k["query"].astype(np.float32)),
             _set(block_size=16), lambda k: k.update(block_tables=k["block_tables"].astype(np.int32))]
    for i, message in enumerate(expected):
        with pytest.raises((CupyOpsValueError, CupyOpsTypeError), match=message):
            paged_attention(**kw)
        if i < len(fixes):
            fixes[i](kw)


def test_bad_partition_size():
    kw = base_kwargs()
    for bad in (100, 0, -16):
        with pytest.raises(CupyOpsValueError, match="partition_size must be a positive multiple"):
            paged_attention_v2_partials(**kw, partition_size=bad)


# ---------------------------------------------------------------------------------------------
# The GPU op's pure dispatch helpers (no GPU needed)

def test_v1_split_model_picks_whole_waves():
    from cupy_ops.ops import paged_attention as pa
    slots = 2 * 132
    # Enough CTAs already: no split.
    assert pa.v1_splits(64, 8, 4096, 64, slots) >= 4096
    # One sequence, 8 kv heads: one wave of <= 264 CTAs beats two waves of shorter splits.
    split = pa.v1_splits(1, 8, 32768, 64, slots)
    used = -(-32768 // split)
    assert 8 * used <= slots and used >= 16
    # Splits are tile multiples and never shorter than MIN_SPLIT_TOKENS.
    for L in (1, 63, 300, 5000, 100_000):
        s = pa.v1_splits(2, 4, L, 64, slots)
        assert s % 64 == 0 and (s >= min(pa.MIN_SPLIT_TOKENS, -(-L // 64) * 64))


def test_variant_choice_and_geometry():
    from cupy_ops.ops import paged_attention as pa
    v = pa.choose_variant("bfloat16", "auto", 128, 4, "bfloat16", False)
    assert isinstance(v, pa.GqaVariant) and pa.GQA_FAMILY.contains(v) and v.heads == 8
    assert pa.choose_variant("bfloat16", "auto", 128, 12, "bfloat16", False).heads == 16
    v = pa.choose_variant("bfloat16", "auto", 128, 4, "bfloat16", False, parts=True)
    assert type(v) is pa.MmaVariant and pa.MMA_PARTS_FAMILY.contains(v)
    assert isinstance(pa.choose_variant("float32", "auto", 128, 4, "float32", False), pa.Variant)
    assert isinstance(pa.choose_variant("bfloat16", "auto", 40, 4, "bfloat16", False), pa.Variant)
    assert isinstance(pa.choose_variant("bfloat16", "auto", 128, 4, "bfloat16", True), pa.Variant)
    for dtype in pa.DTYPES:
        for kv in ("auto", "e4m3", "e5m2"):
            for D in range(16 if kv != "auto" else 8, 257, 16 if kv != "auto" else 8):
                for group in (1, 3, 4, 7, 8, 16, 32):
                    for out in (dtype, "float32"):
                        for sparse in (False, True):
                            for parts, multi in ((False, False), (False, True), (True, False)):
                                if multi and out != dtype:
                                    continue  # multi is v2's, whose out is the query dtype
                                v = pa.choose_variant(dtype, kv, D, group, out, sparse, parts, multi)
                                fam = (pa.GQA_FAMILY if isinstance(v, pa.GqaVariant) else
                                       pa.MMA_FAMILY if isinstance(v, pa.MmaVariant) else pa.FAMILY)
                                assert fam.contains(v), v
                                assert pa.heads_per_cta(v, group) >= min(group, 16)
                                if isinstance(v, pa.GqaVariant):  # constant loop bounds only at dmax
                                    assert v.exact == (D == v.dmax), v
    # Every GQA variant fits the H100/H200 227 KB opt-in limit (the end-of-CTA merges reuse the
    # stages, whose bytes are the same over one or several v2 partitions).
    limit = 227 * 1024 - pa.GQA_STATIC_SMEM
    for v in pa.GQA_VARIANTS:
        elem = 1 if v.kv != "auto" else 2
        assert pa.smem_bytes(v, v.dmax, pa.MMA_TILE, elem) <= limit, v
    assert pa.merge_smem_bytes(pa.MAX_SPLITS) <= 20 * 1024
    for D, elem in ((8, 2), (128, 2), (256, 4), (128, 1), (256, 1)):
        t = pa.tile_tokens(D, elem)
        assert 512 % t == 0 and t * elem >= 16
        assert pa.smem_bytes(pa.choose_variant("float32", "auto", D, 4, "float32", False), D, t, elem) < 200 * 1024


def test_public_ops_run_the_reference_on_numpy_inputs():
    import cupy_ops
    rng = np.random.default_rng(7)
    S, Hq, Hkv, D, BS = 3, 4, 2, 32, 16
    lens = np.array([40, 0, 17], np.int32)
    nb = 8
    kc = rng.standard_normal((nb, Hkv, D // 4, BS, 4)).astype(np.float32)
    vc = rng.standard_normal((nb, Hkv, D, BS)).astype(np.float32)
    table = np.array([[0, 1, 2], [3, 4, 5], [6, 7, 0]], np.int32)
    q = rng.standard_normal((S, Hq, D)).astype(np.float32)
    out = np.full((S, Hq, D), np.nan, np.float32)
    cupy_ops.paged_attention_v1(out, q, kc, vc, Hkv, 0.2, table, lens, BS, 40)
    want = paged_attention(q, kc, vc, Hkv, 0.2, table, lens, BS, 40)
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)
    out2 = np.full_like(out, np.nan)
    P = 1
    es, ml = np.full((S, Hq, P), -7, np.float32), np.full((S, Hq, P), -7, np.float32)
    tmp = np.full((S, Hq, P, D), -7, np.float32)
    cupy_ops.paged_attention_v2(out2, es, ml, tmp, q, kc, vc, Hkv, 0.2, table, lens, BS, 40)
    np.testing.assert_allclose(out2, want, rtol=1e-5, atol=1e-6)
    assert np.all(es[1] == -7)  # the empty sequence's partition is left untouched


def _plan_routes(monkeypatch, op, B, L, Hq, Hkv, D, BS, dtype="bfloat16", kv="auto", resident=2):
    """Build a paged plan on CPU with the device queries mocked (132 SMs, ``resident`` CTAs per
    SM, 227 KB of opt-in shared memory): returns [(kernel family, variant, grid, smem)] per launch."""
    from cupy_ops import _device, _interop, _runtime
    from cupy_ops.ops import paged_attention as pa

    built = []

    class FakeKernel:
        def __init__(self, family, variant):
            self.ptr, self.family, self.variant = 1 + len(built), family.op, variant

    def get_kernel(family, variant, device):
        assert family.contains(variant), (family.op, variant)
        return FakeKernel(family, variant)

    class FakeBuffer:
        ptr = 4096

    monkeypatch.setattr(_runtime, "get_kernel", get_kernel)
    monkeypatch.setattr(_device, "sm_count", lambda device: 132)
    monkeypatch.setattr(_device, "resident_blocks", lambda kernel, threads, smem: resident)
    monkeypatch.setattr(_device, "max_dynamic_smem", lambda device: 227 * 1024)
    monkeypatch.setattr(_interop, "empty_like_framework", lambda like, shape, dtype, zero=False: FakeBuffer())

    def info(shape, dt="float32"):
        item = {**pa.ITEMSIZE, "int32": 4}[dt]
        return _interop.ArrayInfo(None, "torch", 1 << 20, dt, shape, pa._contiguous_strides(shape), item, 0)

    elem = 1 if kv != "auto" else pa.ITEMSIZE[dtype]
    x = 16 // elem
    nb = B * -(-L // BS)
    cache_dt = dtype if kv == "auto" else "uint8"
    P = -(-L // 512)
    v2 = op == pa.OP_V2
    a = pa._Args(op, info((B, Hq, D), dtype), info((B, Hq, P)) if v2 else None,
                 info((B, Hq, P)) if v2 else None, info((B, Hq, P, D), dtype) if v2 else None,
                 info((B, Hq, D), dtype), info((nb, Hkv, D // x, BS, x), cache_dt),
                 info((nb, Hkv, D, BS), cache_dt), info((B, -(-L // BS)), "int32"),
                 info((B,), "int32"), None, info((1,)), info((1,)), pa.KV_KINDS[kv], B, Hq, Hkv, D,
                 BS, L, D ** -0.5, (0, 0, 0, 64, 0), P if v2 else 0)
    monkeypatch.setattr(pa, "_validate", lambda arrays, scalars: a)
    plan = pa._plan(None, None, False)
    launches = getattr(plan, "launches", (plan,))
    return [(l.kernel.family, l.kernel.variant, l.dims[:3], l.shared_mem) for l in launches]


def test_plan_routes_every_path_without_a_gpu(monkeypatch):
    """The plan builder's routes (which kernel, how many launches, what shared memory), with the
    device mocked: v1 whole / split-in-one-launch / split-over-waves, v2 one partition /
    multi-partition CTAs with the merge in the CTA, in the launch or the reduce kernel / parts kernel for
    groups above 8, fp8 and fp32. Every kernel asked for is in its family's table and every
    shared-memory size within the opt-in limit."""
    from cupy_ops.ops import paged_attention as pa
    limit = 227 * 1024 - pa.GQA_STATIC_SMEM

    def route(*args, **kw):
        r = _plan_routes(monkeypatch, *args, **kw)
        assert all(smem <= limit for _, _, _, smem in r), r
        return [(fam, grid) for fam, _, grid, _ in r]

    gqa, reduce_, parts = "paged_attention_gqa", "paged_attention_reduce", "paged_attention_mma_parts"
    # v1: 512 CTAs over 264 slots -> no split, one launch.
    assert route(pa.OP_V1, 64, 4096, 32, 8, 128, 16) == [(gqa, (64, 8, 1))]
    # v1, one sequence: split into one wave, merged in the launch.
    (fam, grid), = route(pa.OP_V1, 1, 32768, 32, 8, 128, 16)
    assert fam == gqa and grid[2] > 1 and grid[1] * grid[2] <= 264
    # v2, one partition: the kernel writes out itself.
    assert route(pa.OP_V2, 64, 500, 32, 8, 128, 16) == [(gqa, (64, 8, 1))]
    # v2, several partitions, many waves: one CTA per (sequence, kv head) spans all partitions
    # and merges them itself; with that off, the reduce kernel merges them.
    r = route(pa.OP_V2, 64, 4096, 32, 8, 128, 16)
    assert r == [(gqa, (64, 8, 1))]
    monkeypatch.setattr(pa, "V2_OWN_MERGE", False)
    assert route(pa.OP_V2, 64, 4096, 32, 8, 128, 16) == [(gqa, (64, 8, 1)), (reduce_, (64, 32, 1))]
    monkeypatch.setattr(pa, "V2_OWN_MERGE", True)
    # Only v2's CTAs over several partitions run the instantiation with that code (MULTI); v1 and
    # one-partition v2 (bit-identical to v1, §9.7) run the other.
    variant_of = lambda *args: _plan_routes(monkeypatch, *args)[0][1]  # noqa: E731
    assert variant_of(pa.OP_V2, 64, 4096, 32, 8, 128, 16).multi
    assert not variant_of(pa.OP_V1, 64, 4096, 32, 8, 128, 16).multi
    assert not variant_of(pa.OP_V2, 64, 500, 32, 8, 128, 16).multi
    # v2, small batch: one wave, partitions merged in the launch.
    r = route(pa.OP_V2, 8, 4096, 32, 8, 128, 16)
    assert [f for f, _ in r] == [gqa]
    # v2 with the in-launch merge off: the reduce kernel.
    monkeypatch.setattr(pa, "V2_FUSED_MERGE", False)
    assert [f for f, _ in route(pa.OP_V2, 8, 4096, 32, 8, 128, 16)] == [gqa, reduce_]
    monkeypatch.setattr(pa, "V2_FUSED_MERGE", True)
    # v2, group 16: GQA CTAs of 16 heads over several partitions (head sizes <= 128, blocks <= 16
    # tokens); else the parts kernel and the reduce.
    assert [f for f, _ in route(pa.OP_V2, 8, 4096, 128, 8, 128, 16)] == [gqa]
    v = variant_of(pa.OP_V2, 8, 4096, 128, 8, 128, 16)
    assert v.multi and v.heads == 16 and pa.GQA_FAMILY.contains(v)
    assert [f for f, _ in route(pa.OP_V2, 8, 4096, 128, 8, 256, 16, resident=1)] == [parts, reduce_]
    assert [f for f, _ in route(pa.OP_V2, 8, 4096, 128, 8, 128, 32)] == [parts, reduce_]
    monkeypatch.setattr(pa, "V2_GQA16_MULTI", False)
    assert [f for f, _ in route(pa.OP_V2, 8, 4096, 128, 8, 128, 16)] == [parts, reduce_]
    monkeypatch.setattr(pa, "V2_GQA16_MULTI", True)
    # Blocks over 16 tokens: a warp's 16 tokens of a tile would not be whole blocks, so v2 runs
    # one CTA per partition, not CTAs over several (MULTI).
    assert not variant_of(pa.OP_V2, 64, 4096, 32, 8, 128, 32).multi
    assert route(pa.OP_V2, 64, 4096, 32, 8, 128, 32)[0] == (gqa, (64, 8, 8))
    # fp8 and d256 (3 x 64 KB stages, one CTA per SM).
    assert route(pa.OP_V1, 64, 4096, 32, 8, 128, 16, kv="fp8_e4m3", resident=4)[0][0] == gqa
    assert [f for f, _ in route(pa.OP_V2, 32, 4096, 32, 8, 256, 16, resident=1)][0] == gqa
    # fp32 queries: the CUDA-core kernel.
    assert route(pa.OP_V1, 4, 1000, 8, 2, 128, 16, dtype="float32")[0][0] == "paged_attention"
    # A caller's scratch with very many partitions: no in-launch merge whose weights would not fit.
    r = _plan_routes(monkeypatch, pa.OP_V2, 1, 4 * 1024 * 1024, 8, 8, 128, 16)
    assert [f for f, *_ in r] == [gqa, reduce_] and all(s <= limit for *_, s in r)
