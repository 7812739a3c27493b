"""CPU tests of the top_k_per_row oracle and checker (spec: top_k_per_row.md §2, §6, §7).

The brute force below is written independently of the oracle: it sorts with ``np.lexsort`` on
(NaN flag, value, sign of zero, index) instead of the oracle's float-bit keys.
"""

import numpy as np
import pytest
import torch

from cupy_ops._checks import CupyOpsTypeError, CupyOpsValueError
from cupy_ops.reference.top_k_per_row import (
    check_top_k_per_row,
    check_top_k_result,
    decode_row_scores,
    order_keys,
    prefill_row_scores,
    top_k_per_row_decode,
    top_k_per_row_prefill,
)

# K values: 1 and 7 (tiny, odd), 512/1024 (DSv4), 2048 (production), 3000 (vLLM tests, not a
# power of two), 4096 (our upper bound).
TOP_KS = [1, 7, 512, 1024, 2048, 3000, 4096]


# ------------------------------------------------------------------------------------- helpers

def brute_force_top_k(scores, k, nan_lowest=True):
    """Canonical answer by full sort: descending value, +0 before -0, NaN last (or first),
    equal scores by ascending index. Short rows: identity then -1."""
    v = np.asarray(scores, dtype=np.float32)
    n = v.size
    out = np.full(k, -1, dtype=np.int64)
    if n <= k:
        out[:n] = np.arange(n)
        return out
    nan = np.isnan(v)
    value = np.where(nan, 0.0, v).astype(np.float64)
    negative_zero = (v == 0) & np.signbit(v)
    nan_order = nan if nan_lowest else ~nan
    out[:] = np.lexsort((np.arange(n), negative_zero, -value, nan_order))[:k]
    return out


def random_scores(rng, shape):
    """randn scores scaled by a random factor: never zeros, plenty of distinct values."""
    return (rng.standard_normal(shape) * rng.uniform(0.5, 4.0)).astype(np.float32)


def prefill_case(rng, lengths, starts, poison=np.nan):
    """One row per (length, start); columns outside each row's range hold ``poison``."""
    width = max(s + n for s, n in zip(starts, lengths)) + 3
    logits = np.full((len(lengths), width), poison, dtype=np.float32)
    for r, (s, n) in enumerate(zip(starts, lengths)):
        logits[r, s:s + n] = random_scores(rng, n)
    row_starts = np.array(starts, dtype=np.int32)
    row_ends = np.array([s + n for s, n in zip(starts, lengths)], dtype=np.int32)
    return logits, row_starts, row_ends


def expected_prefill(logits, row_starts, row_ends, k, nan_lowest=True):
    return np.stack([brute_force_top_k(logits[r, row_starts[r]:row_ends[r]], k, nan_lowest)
                     for r in range(len(row_starts))]) if len(row_starts) else np.empty((0, k))


def prefill_one_row(scores, k, **kw):
    scores = np.asarray(scores, dtype=np.float32)[None, :]
    return top_k_per_row_prefill(scores, np.array([0], np.int32),
                                 np.array([scores.shape[1]], np.int32), 1, scores.shape[1], 1,
                                 k, **kw)[0]


def assert_valid_and_canonical(scores, k, **kw):
    """Oracle equals the brute force and passes the checker; returns the oracle's row."""
    got = prefill_one_row(scores, k, **kw)
    nan_lowest = kw.get("nan_rank", "lowest") == "lowest"
    np.testing.assert_array_equal(got, brute_force_top_k(scores, k, nan_lowest))
    check_top_k_result(scores, got, k, **kw)
    return got


def random_valid_answer(rng, scores, k):
    """Any valid answer: a random choice among the tied k-th scores, in random order."""
    keys = order_keys(scores)
    kth = np.sort(keys)[::-1][k - 1]
    above = np.flatnonzero(keys > kth)
    tied = np.flatnonzero(keys == kth)
    chosen = np.concatenate([above, rng.choice(tied, k - above.size, replace=False)])
    return rng.permutation(chosen)


# ----------------------------------------------------------------- oracle vs. brute force

@pytest.mark.parametrize("k", TOP_KS)
def test_prefill_lengths_around_k_and_misaligned_starts(k):
    # Lengths at the L <= K / L > K boundary (spec §6 "L around K"); starts 0, 1, 3, 4097 are
    # the spec's misaligned offsets; poison NaN outside each range must never be selected.
    rng = np.random.default_rng(1000 + k)
    lengths = [0, 1, max(k - 1, 0), k, k + 1, 2 * k, k + 37]
    starts = [0, 1, 3, 4097, 5, 0, 2]
    logits, row_starts, row_ends = prefill_case(rng, lengths, starts)
    got = top_k_per_row_prefill(logits, row_starts, row_ends, len(lengths),
                                logits.shape[1], 1, k)
    assert got.dtype == np.int32 and got.shape == (len(lengths), k)
    np.testing.assert_array_equal(got, expected_prefill(logits, row_starts, row_ends, k))
    scores = prefill_row_scores(logits, row_starts, row_ends, len(lengths), logits.shape[1], 1)
    check_top_k_per_row(scores, got, k)
    # Spec §6 check 5: the selected multiset equals torch.topk's values exactly.
    for r, row in enumerate(scores):
        if row.size > k:
            want = torch.topk(torch.from_numpy(row), k).values.numpy()
            np.testing.assert_array_equal(np.sort(row[got[r]]), np.sort(want))


@pytest.mark.parametrize("poison", [np.nan, 1e30, np.inf, -np.inf])
def test_values_outside_the_range_are_never_read(poison):
    rng = np.random.default_rng(7)
    lengths, starts = [50, 9, 30, 0], [4, 0, 17, 3]
    logits, row_starts, row_ends = prefill_case(rng, lengths, starts, poison=poison)
    got = top_k_per_row_prefill(logits, row_starts, row_ends, 4, logits.shape[1], 1, 10)
    clean = np.full_like(logits, -7.0)
    for r in range(4):
        clean[r, row_starts[r]:row_ends[r]] = logits[r, row_starts[r]:row_ends[r]]
    np.testing.assert_array_equal(
        got, top_k_per_row_prefill(clean, row_starts, row_ends, 4, clean.shape[1], 1, 10))
    for r, n in enumerate(lengths):
        assert np.all(got[r][got[r] >= 0] < n)


def test_prefill_vllm_test_layout_and_many_rows():
    # vLLM T1: rowStarts=0, rowEnds=1..numRows, width numRows, K=2048: only the last two rows
    # reach the selection. Then numRows > 12288 (vLLM switches kernel variant there) with
    # short rows around K=2.
    rng = np.random.default_rng(11)
    n = 2050
    logits = random_scores(rng, (n, n))
    starts = np.zeros(n, np.int32)
    ends = np.arange(1, n + 1, dtype=np.int32)
    got = top_k_per_row_prefill(logits, starts, ends, n, n, 1, 2048)
    np.testing.assert_array_equal(got[:2048], expected_prefill(logits[:2048], starts[:2048],
                                                                ends[:2048], 2048))
    np.testing.assert_array_equal(got[2048:], expected_prefill(logits[2048:], starts[2048:],
                                                                ends[2048:], 2048))
    n = 12300
    logits = random_scores(rng, (n, 8))
    starts = rng.integers(0, 3, n).astype(np.int32)
    ends = (starts + rng.integers(0, 5, n)).astype(np.int32)
    got = top_k_per_row_prefill(logits, starts, ends, n, 8, 1, 2)
    np.testing.assert_array_equal(got, expected_prefill(logits, starts, ends, 2))
    check_top_k_per_row(prefill_row_scores(logits, starts, ends, n, 8, 1), got, 2)


def test_num_rows_below_the_tensor_sizes_and_zero():
    rng = np.random.default_rng(12)
    logits = random_scores(rng, (5, 40))
    starts = np.array([0, 2, 4, 6, 8], np.int32)
    ends = np.array([40, 30, 20, 10, 9], np.int32)
    got = top_k_per_row_prefill(logits, starts, ends, 3, 40, 1, 7)
    np.testing.assert_array_equal(got, expected_prefill(logits[:3], starts[:3], ends[:3], 7))
    # numRows == 0 is a no-op (spec §2): an empty result, not an error.
    assert top_k_per_row_prefill(logits, starts, ends, 0, 40, 1, 7).shape == (0, 7)
    assert top_k_per_row_decode(logits, 1, ends, 0, 40, 1, 7).shape == (0, 7)


def decode_expected_ends(next_n, seq_lens):
    ends = []
    for b in range(len(seq_lens)):
        for j in range(next_n):
            ends.append(max(0, int(seq_lens[b]) - next_n + j + 1))
    return ends


@pytest.mark.parametrize("next_n", [1, 2, 4, 8])
@pytest.mark.parametrize("k", [1, 7, 512])
def test_decode_causal_ends(next_n, k):
    # seq_lens include values below next_n (spec §7b: ends clamp at 0, all -1 rows), values
    # around k + next_n (boundary rows inside one sequence) and longer rows.
    rng = np.random.default_rng(100 * next_n + k)
    seq_lens = np.array([0, 1, next_n - 1, next_n, k, k + next_n - 1, k + next_n, 3 * k + 5,
                         rng.integers(1, 4 * k + 10)], dtype=np.int32)
    seq_lens = np.maximum(seq_lens, 0)
    num_rows = seq_lens.size * next_n
    width = int(seq_lens.max()) + 2
    logits = random_scores(rng, (num_rows, width))
    got = top_k_per_row_decode(logits, next_n, seq_lens, num_rows, width, 1, k)
    ends = decode_expected_ends(next_n, seq_lens)
    want = np.stack([brute_force_top_k(logits[r, :ends[r]], k) for r in range(num_rows)])
    np.testing.assert_array_equal(got, want)
    check_top_k_per_row(decode_row_scores(logits, next_n, seq_lens, num_rows, width, 1), got, k)


def test_decode_seq_len_below_next_n_example():
    # next_n=4, seq_len=2: ends 2-4+j+1 = -1, 0, 1, 2 -> clamped 0, 0, 1, 2.
    logits = np.full((4, 6), 3.5, np.float32)
    got = top_k_per_row_decode(logits, 4, np.array([2], np.int32), 4, 6, 1, 3)
    np.testing.assert_array_equal(got, [[-1, -1, -1], [-1, -1, -1], [0, -1, -1], [0, 1, -1]])


@pytest.mark.parametrize("next_n", [1, 2, 4])
def test_decode_2d_seq_lens(next_n):
    # K2's 2-D seq_lens [batch, next_n]: row r uses its own length max(0, seq_lens.flat[r]).
    rng = np.random.default_rng(21 + next_n)
    batch, k = 5, 7
    seq_lens = rng.integers(0, 30, (batch, next_n)).astype(np.int32)
    seq_lens[0, 0] = 0
    seq_lens[-1, -1] = 29
    num_rows = batch * next_n
    logits = random_scores(rng, (num_rows, 31))
    got = top_k_per_row_decode(logits, next_n, seq_lens, num_rows, 31, 1, k)
    flat = seq_lens.reshape(-1)
    want = np.stack([brute_force_top_k(logits[r, :flat[r]], k) for r in range(num_rows)])
    np.testing.assert_array_equal(got, want)
    check_top_k_per_row(decode_row_scores(logits, next_n, seq_lens, num_rows, 31, 1), got, k)


@pytest.mark.parametrize("width", [12287, 12288, 199999, 200000])
def test_decode_vllm_width_thresholds(width):
    # vLLM switches decode kernels at C = 12288 and 200000 (spec §3.1); the answer must not.
    rng = np.random.default_rng(width)
    logits = random_scores(rng, (2, width))
    seq_lens = np.array([width, width - 1], np.int32)
    got = top_k_per_row_decode(logits, 1, seq_lens, 2, width, 1, 2048)
    want = np.stack([brute_force_top_k(logits[r, :seq_lens[r]], 2048) for r in range(2)])
    np.testing.assert_array_equal(got, want)


# --------------------------------------------------------------------------- strided logits

def test_transposed_padded_and_raw_strides():
    rng = np.random.default_rng(31)
    rows, cols, k = 6, 45, 7
    dense = random_scores(rng, (rows, cols))
    starts = np.array([0, 1, 3, 10, 0, 44], np.int32)
    ends = np.array([45, 40, 9, 12, 0, 45], np.int32)
    want = top_k_per_row_prefill(dense, starts, ends, rows, cols, 1, k)
    np.testing.assert_array_equal(want, expected_prefill(dense, starts, ends, k))

    # A transposed view: stride0 = 1, stride1 = rows (spec §6 "stride1 != 1").
    transposed = np.ascontiguousarray(dense.T).T
    assert transposed.strides == (4, 4 * rows)
    got = top_k_per_row_prefill(transposed, starts, ends, rows, 1, rows, k)
    np.testing.assert_array_equal(got, want)

    # A padded row stride: a slice of a wider buffer whose padding holds NaN.
    wide = np.full((rows, cols + 19), np.nan, np.float32)
    wide[:, :cols] = dense
    padded = wide[:, :cols]
    got = top_k_per_row_prefill(padded, starts, ends, rows, cols + 19, 1, k)
    np.testing.assert_array_equal(got, want)

    # Strides that differ from the array's own: the [cols, rows] buffer addressed as rows.
    buffer = np.ascontiguousarray(dense.T)
    got = top_k_per_row_prefill(buffer, starts, ends, rows, 1, rows, k)
    np.testing.assert_array_equal(got, want)
    scores = prefill_row_scores(buffer, starts, ends, rows, 1, rows)
    np.testing.assert_array_equal(scores[1], dense[1, 1:40])
    check_top_k_per_row(scores, got, k)

    # Decode through a transposed view.
    seq_lens = np.array([45, 3, 20, 8, 0, 44], np.int32)
    got = top_k_per_row_decode(transposed, 1, seq_lens, rows, 1, rows, k)
    np.testing.assert_array_equal(
        got, top_k_per_row_decode(dense, 1, seq_lens, rows, cols, 1, k))


def test_low_precision_logits():
    rng = np.random.default_rng(41)
    half = random_scores(rng, (3, 300)).astype(np.float16)  # fp16 rounding makes ties
    starts = np.array([0, 5, 299], np.int32)
    ends = np.array([300, 205, 300], np.int32)
    got = top_k_per_row_prefill(half, starts, ends, 3, 300, 1, 50)
    np.testing.assert_array_equal(
        got, top_k_per_row_prefill(half.astype(np.float32), starts, ends, 3, 300, 1, 50))
    # bfloat16 values carried as float32 (low 16 bits zero): heavy exact ties.
    bf16 = (random_scores(rng, 4000).view(np.uint32) & 0xFFFF0000).view(np.float32)
    assert np.unique(bf16).size < bf16.size
    assert_valid_and_canonical(bf16, 512)


# ----------------------------------------------------------------------- spec's tricky data

def test_short_rows_are_identity_then_padding_and_never_read():
    # L <= K: [0..L-1] then -1, scores not read, so NaN and inf do not matter (spec §2).
    scores = np.array([np.nan, np.inf, -np.inf, 1.0, -np.nan], np.float32)
    np.testing.assert_array_equal(prefill_one_row(scores, 8), [0, 1, 2, 3, 4, -1, -1, -1])
    np.testing.assert_array_equal(prefill_one_row(scores, 5), [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(prefill_one_row(scores[:0], 3), [-1, -1, -1])


def test_ten_low_bits_ties():
    # vLLM's 10LSBits data: fixed top 22 bits 0x3F900000, random low 10 bits -> at most 1024
    # distinct values in 5000 scores, so the k-th value is heavily tied.
    rng = np.random.default_rng(51)
    scores = (0x3F900000 | rng.integers(0, 1024, 5000)).astype(np.uint32).view(np.float32)
    for k in (2048, 3000):
        assert_valid_and_canonical(scores, k)
        for _ in range(3):
            check_top_k_result(scores, random_valid_answer(rng, scores, k), k)


def test_pass0_overflow_has_no_duplicates():
    # Spec §7a: 100 values of 100.0 above 5000 distinct values in [1.0, 1.001) (one fp16 bin).
    rng = np.random.default_rng(52)
    scores = np.concatenate([np.full(100, 100.0), 1.0 + rng.permutation(5000) * 2e-7])
    scores = rng.permutation(scores.astype(np.float32))
    assert np.unique(scores[scores < 2]).size == 5000
    got = assert_valid_and_canonical(scores, 2048)
    assert np.unique(got).size == 2048
    assert set(np.flatnonzero(scores == 100.0)) <= set(got)


def test_all_equal_and_coarse_ties():
    rng = np.random.default_rng(53)
    equal = np.full(3000, 0.75, np.float32)
    np.testing.assert_array_equal(assert_valid_and_canonical(equal, 2048), np.arange(2048))
    check_top_k_result(equal, rng.choice(3000, 2048, replace=False), 2048)
    coarse = (rng.integers(1, 11, 5000) / 10).astype(np.float32)  # randint/10, never zero
    assert_valid_and_canonical(coarse, 1024)
    check_top_k_result(coarse, random_valid_answer(rng, coarse, 1024), 1024)
    # A k-th value shared by more than 2048 elements, with 100 elements above it.
    shared = np.concatenate([np.full(100, 9.0), np.full(3000, 0.5), -random_scores(rng, 900)**2])
    shared = rng.permutation(shared.astype(np.float32))
    assert_valid_and_canonical(shared, 2048)
    check_top_k_result(shared, random_valid_answer(rng, shared, 2048), 2048)


def test_minus_inf_rows():
    rng = np.random.default_rng(54)
    # Spec §7d: K=2048, L=3000, 1500 finite and 1500 -inf: -inf positions fill the rest.
    scores = np.concatenate([random_scores(rng, 1500), np.full(1500, -np.inf, np.float32)])
    scores = rng.permutation(scores)
    got = assert_valid_and_canonical(scores, 2048)
    assert np.isfinite(scores[got]).sum() == 1500 and (got >= 0).all()
    check_top_k_result(scores, random_valid_answer(rng, scores, 2048), 2048)
    # All -inf with L > K: any K distinct indices.
    ninf = np.full(3000, -np.inf, np.float32)
    np.testing.assert_array_equal(assert_valid_and_canonical(ninf, 2048), np.arange(2048))
    check_top_k_result(ninf, rng.choice(3000, 2048, replace=False), 2048)


def test_signed_zeros():
    # +0 ranks just above -0 (spec §2, float-bit order).
    scores = np.array([-0.0, 0.0, -1.0, -0.0, 0.0, -2.0], np.float32)
    np.testing.assert_array_equal(assert_valid_and_canonical(scores, 2), [1, 4])
    np.testing.assert_array_equal(assert_valid_and_canonical(scores, 3), [1, 4, 0])
    with pytest.raises(AssertionError, match=r"slot 1 selects index 3 with score -0\.0"):
        check_top_k_result(scores, [1, 3], 2)
    check_top_k_result(scores, [1, 3], 2, signed_zeros=False)  # torch.topk's view


def test_fp16_range_edges_denormals_and_huge_values():
    # Above 65504 fp16 overflows (vLLM's pass 0 bins them as inf); denormals flush in some
    # hardware paths; both must still be ordered exactly.
    rng = np.random.default_rng(55)
    tiny = np.array([1e-45, 2e-45, 1e-40, 1.1754942e-38, 1.17549435e-38, -1e-45, -1e-40],
                    np.float32)
    huge = np.array([65504.0, 65520.0, 7e4, 1e5, 3.4e38, np.float32(3.4028235e38), np.inf,
                     -3.4e38, -7e4], np.float32)
    scores = rng.permutation(np.concatenate([tiny, huge, random_scores(rng, 40),
                                             np.array([0.0, -0.0], np.float32)]))
    for k in (1, 7, 15, 20, 57):
        assert_valid_and_canonical(scores, k)
    got = prefill_one_row(scores, 7)
    np.testing.assert_array_equal(
        np.sort(scores[got])[::-1],
        np.float32([np.inf, 3.4028235e38, 3.4e38, 1e5, 7e4, 65520.0, 65504.0]))
    denormal_only = rng.permutation(tiny)
    got = assert_valid_and_canonical(denormal_only, 3)
    np.testing.assert_array_equal(denormal_only[got], tiny[[4, 3, 2]])


def test_nan_ranks_below_minus_inf():
    rng = np.random.default_rng(56)
    nan_neg = np.array([0xFFC00000], np.uint32).view(np.float32)[0]
    nan_payload = np.array([0x7F800123], np.uint32).view(np.float32)[0]
    scores = np.array([np.nan, -np.inf, nan_neg, 1.0, nan_payload, -np.inf, np.nan], np.float32)
    # Enough non-NaN candidates: no NaN is selected, -inf wins over NaN.
    got = assert_valid_and_canonical(scores, 3)
    np.testing.assert_array_equal(got, [3, 1, 5])
    # Not enough: NaN positions fill the remaining slots, still distinct and in range.
    got = assert_valid_and_canonical(scores, 5)
    assert np.isnan(scores[got]).sum() == 2 and np.unique(got).size == 5
    check_top_k_result(scores, [5, 4, 1, 0, 3], 5)  # any NaN may fill them
    with pytest.raises(AssertionError, match="below the top_k-th largest"):
        check_top_k_result(scores, [3, 1, 0], 3)  # NaN instead of the second -inf
    all_nan = np.full(100, np.nan, np.float32)
    np.testing.assert_array_equal(assert_valid_and_canonical(all_nan, 7), np.arange(7))
    check_top_k_result(all_nan, rng.choice(100, 7, replace=False), 7)
    # Random rows with sprinkled NaN: oracle == brute force; NaN never beats a number.
    row = random_scores(rng, 3000)
    row[rng.choice(3000, 700, replace=False)] = np.nan
    got = assert_valid_and_canonical(row, 2048)
    assert not np.isnan(row[got]).any()  # 2300 numbers >= K


def test_nan_rank_highest_option():
    scores = np.array([1.0, np.nan, 3.0, -np.inf, np.nan], np.float32)
    got = assert_valid_and_canonical(scores, 3, nan_rank="highest")
    np.testing.assert_array_equal(got, [1, 4, 2])
    with pytest.raises(AssertionError, match=r"slot 1 selects index 0 with score 1\.0 .*, below "
                                             r"the top_k-th largest score 3\.0 .*; unselected "
                                             r"index 1 has score nan"):
        check_top_k_result(scores, [2, 0, 4], 3, nan_rank="highest")


def test_order_keys_follow_float_order():
    rng = np.random.default_rng(57)
    values = np.concatenate([random_scores(rng, 500) * 1e30, random_scores(rng, 500) * 1e-39,
                             np.array([np.inf, -np.inf, 0.0], np.float32)]).astype(np.float32)
    values = np.unique(values)  # sorted, distinct (treats -0 == +0, so only +0 stays)
    keys = order_keys(values)
    assert np.all(np.diff(keys) > 0)
    assert order_keys(np.float32([-0.0]))[0] + 1 == order_keys(np.float32([0.0]))[0]
    assert order_keys(np.float32([np.nan]))[0] < order_keys(np.float32([-np.inf]))[0]


def test_oracle_is_deterministic():
    rng = np.random.default_rng(58)
    scores = (rng.integers(1, 5, 4000) / 4).astype(np.float32)
    first = prefill_one_row(scores, 2048)
    np.testing.assert_array_equal(first, prefill_one_row(scores.copy(), 2048))


# ------------------------------------------------------------------------------- the checker

def test_checker_accepts_any_order_and_tie_choice():
    rng = np.random.default_rng(61)
    scores = (rng.integers(1, 20, 600) / 8).astype(np.float32)
    for _ in range(10):
        check_top_k_result(scores, random_valid_answer(rng, scores, 100), 100)
    check_top_k_result(scores, random_valid_answer(rng, scores, 100).astype(np.int32), 100)


def test_checker_rejects_wrong_answers():
    rng = np.random.default_rng(62)
    scores = random_scores(rng, 50)
    good = brute_force_top_k(scores, 10)
    check_top_k_result(scores, good, 10, row=4)

    dup = good.copy()
    dup[7] = dup[2]
    with pytest.raises(AssertionError, match=rf"row 4: index {dup[2]} is selected twice "
                                             r"\(slots 2 and 7\)"):
        check_top_k_result(scores, dup, 10, row=4)

    for bad_index in (50, 51, -2, 10**6):
        out = good.copy()
        out[3] = bad_index
        with pytest.raises(AssertionError, match=rf"slot 3 holds index {bad_index}, outside "
                                                 r"\[0, L=50\)"):
            check_top_k_result(scores, out, 10)

    pad = good.copy()
    pad[9] = -1
    with pytest.raises(AssertionError, match="slot 9 holds -1 padding"):
        check_top_k_result(scores, pad, 10)

    smaller = good.copy()
    eleventh = brute_force_top_k(scores, 11)[10]
    smaller[5] = eleventh  # the 11th largest swapped in for the 6th
    with pytest.raises(AssertionError, match=rf"slot 5 selects index {eleventh} with score .*, "
                                             rf"below the top_k-th largest score .*; unselected "
                                             rf"index {good[5]} has score"):
        check_top_k_result(scores, smaller, 10)

    with pytest.raises(AssertionError, match=r"indices must have shape \(10,\)"):
        check_top_k_result(scores, good[:9], 10)
    with pytest.raises(AssertionError, match="must be integers"):
        check_top_k_result(scores, good.astype(np.float32), 10)


def test_checker_rejects_a_tied_pick_that_misses_a_larger_score():
    # [3, 1, 1], K=2: {1, 2} are all >= the k-th score 1 but miss 3.
    scores = np.array([3.0, 1.0, 1.0], np.float32)
    with pytest.raises(AssertionError, match=r"index 0 with score 3\.0 .* is above the top_k-th "
                                             r"largest score 1\.0 .* but not selected"):
        check_top_k_result(scores, [1, 2], 2)


def test_checker_short_rows_must_be_exact():
    scores = np.float32([5.0, 4.0, 3.0])
    check_top_k_result(scores, [0, 1, 2, -1], 4)
    with pytest.raises(AssertionError, match=r"L=3 <= top_k=4.*slot 0 holds 2, expected 0"):
        check_top_k_result(scores, [2, 1, 0, -1], 4)  # sorted by score: not identity order
    with pytest.raises(AssertionError, match="slot 3 holds 0, expected -1"):
        check_top_k_result(scores, [0, 1, 2, 0], 4)
    with pytest.raises(AssertionError, match="slot 0 holds 0, expected -1"):
        check_top_k_result(scores[:0], [0, -1], 2)


def test_checker_over_rows_names_each_bad_row():
    rng = np.random.default_rng(63)
    logits, starts, ends = prefill_case(rng, [30, 4, 30, 30], [0, 2, 5, 1])
    got = top_k_per_row_prefill(logits, starts, ends, 4, logits.shape[1], 1, 6)
    scores = prefill_row_scores(logits, starts, ends, 4, logits.shape[1], 1)
    check_top_k_per_row(scores, got, 6)
    broken = got.copy()
    broken[1, 4] = 3
    broken[3, 0] = broken[3, 1]
    with pytest.raises(AssertionError, match=r"(?s)2 of 4 rows are wrong:.*row 1: .*row 3: index"):
        check_top_k_per_row(scores, broken, 6)
    with pytest.raises(AssertionError, match=r"indices must have shape \(4, 6\)"):
        check_top_k_per_row(scores, got[:3], 6)


# ----------------------------------------------------------------------------- bad arguments

def _prefill_args(**changes):
    rng = np.random.default_rng(71)
    args = dict(logits=random_scores(rng, (3, 20)), row_starts=np.array([0, 1, 2], np.int32),
                row_ends=np.array([20, 15, 2], np.int32), num_rows=3, stride0=20, stride1=1,
                top_k=4)
    args.update(changes)
    return args


def _decode_args(**changes):
    rng = np.random.default_rng(72)
    args = dict(logits=random_scores(rng, (4, 20)), next_n=2,
                seq_lens=np.array([20, 5], np.int32), num_rows=4, stride0=20, stride1=1, top_k=4)
    args.update(changes)
    return args


@pytest.mark.parametrize("changes, error, pattern", [
    (dict(logits=np.ones((3, 20), np.float64)), CupyOpsTypeError, "logits.dtype .* got float64"),
    (dict(logits=np.ones((3, 20), np.int32)), CupyOpsTypeError, "logits.dtype"),
    (dict(logits=[[1.0] * 20] * 3), CupyOpsTypeError, "logits must be a NumPy array"),
    (dict(logits=np.ones((3, 20, 1), np.float32)), CupyOpsValueError, "logits must have 2 dim"),
    (dict(row_starts=np.array([0, 1, 2], np.int64)), CupyOpsTypeError,
     "row_starts.dtype must be int32; got int64"),
    (dict(row_ends=[20, 15, 2]), CupyOpsTypeError, "row_ends must be a NumPy int32 array"),
    (dict(row_ends=np.array([[20, 15, 2]], np.int32)), CupyOpsValueError, "row_ends must have 1"),
    (dict(top_k=0), CupyOpsValueError, "top_k must be in 1..4096; got 0"),
    (dict(top_k=4097), CupyOpsValueError, "top_k must be in 1..4096; got 4097"),
    (dict(top_k=4.0), CupyOpsTypeError, "top_k must be an int; got float"),
    (dict(top_k=True), CupyOpsTypeError, "top_k must be an int; got bool"),
    (dict(num_rows=4), CupyOpsValueError, r"num_rows \(4\) exceeds row_starts.shape\[0\] \(3\)"),
    (dict(num_rows=-1), CupyOpsValueError, r"num_rows must be in 0\.\.2147483647; got -1"),
    (dict(stride0=-20), CupyOpsValueError, r"stride0 must be in 0\.\.2147483647; got -20"),
    (dict(stride1=-1), CupyOpsValueError, r"stride1 must be in 0\.\.2147483647; got -1"),
    (dict(stride1=2**31), CupyOpsValueError, "stride1 must be in 0..2147483647"),
    (dict(row_starts=np.array([0, -1, 2], np.int32)), CupyOpsValueError,
     r"row_starts\[1\] must be >= 0; got -1"),
    (dict(row_ends=np.array([20, 0, 2], np.int32)), CupyOpsValueError,
     r"row_ends\[1\] \(0\) must be >= row_starts\[1\] \(1\)"),
    (dict(row_ends=np.array([21, 15, 2], np.int32)), CupyOpsValueError,
     r"row 0's candidate range \[0, 21\) passes logits.shape\[1\] \(20\)"),
    (dict(logits=np.ones((2, 20), np.float32)), CupyOpsValueError,
     r"num_rows \(3\) exceeds logits.shape\[0\] \(2\)"),
    (dict(stride0=25, row_ends=np.array([20, 15, 12], np.int32)), CupyOpsValueError,
     "row 2's candidates .* outside logits' memory"),
    (dict(nan_rank="first"), CupyOpsValueError, "nan_rank must be one of lowest, highest"),
])
def test_prefill_bad_arguments(changes, error, pattern):
    with pytest.raises(error, match="top_k_per_row_prefill: " + pattern):
        top_k_per_row_prefill(**_prefill_args(**changes))


@pytest.mark.parametrize("changes, error, pattern", [
    (dict(next_n=0), CupyOpsValueError, r"next_n must be in 1\.\.2147483647; got 0"),
    (dict(next_n=2.0), CupyOpsTypeError, "next_n must be an int"),
    (dict(seq_lens=np.array([20, 5], np.int64)), CupyOpsTypeError, "seq_lens.dtype must be int32"),
    (dict(seq_lens=np.array([20, -5], np.int32)), CupyOpsValueError,
     r"seq_lens\[1\] must be >= 0; got -5"),
    (dict(seq_lens=np.array([20], np.int32)), CupyOpsValueError,
     r"seq_lens.shape\[0\] \(batch=1\) must be >= ceil\(num_rows / next_n\) = 2"),
    (dict(seq_lens=np.array([[20, 5, 1], [1, 1, 1]], np.int32)), CupyOpsValueError,
     r"2-D seq_lens must have shape \[batch, next_n=2\]"),
    (dict(seq_lens=np.array([[20, 5]], np.int32)), CupyOpsValueError,
     r"num_rows \(4\) exceeds seq_lens.size \(2\)"),
    (dict(seq_lens=np.ones((1, 2, 2), np.int32)), CupyOpsValueError, "seq_lens must have 1 dim"),
    (dict(seq_lens=np.array([21, 5], np.int32)), CupyOpsValueError,
     r"row 1's candidate range \[0, 21\) passes logits.shape\[1\] \(20\)"),
    (dict(num_rows=5), CupyOpsValueError,
     r"seq_lens.shape\[0\] \(batch=2\) must be >= ceil\(num_rows / next_n\) = 3"),
    (dict(top_k=5000), CupyOpsValueError, "top_k must be in 1..4096; got 5000"),
    (dict(logits=np.ones((4, 20), np.float64)), CupyOpsTypeError, "logits.dtype"),
])
def test_decode_bad_arguments(changes, error, pattern):
    with pytest.raises(error, match="top_k_per_row_decode: " + pattern):
        top_k_per_row_decode(**_decode_args(**changes))


def test_errors_are_also_runtime_errors_like_vllm():
    with pytest.raises(RuntimeError):
        top_k_per_row_prefill(**_prefill_args(top_k=0))
    with pytest.raises(RuntimeError):
        top_k_per_row_decode(**_decode_args(seq_lens=np.array([20, 5], np.int64)))


def test_raw_strides_are_bounded_by_the_buffer():
    # Strides that are not logits' own are checked against the memory logits spans.
    buffer = np.arange(1, 61, dtype=np.float32).reshape(20, 3)  # [cols, rows]
    starts = np.zeros(3, np.int32)
    ok = top_k_per_row_prefill(buffer, starts, np.full(3, 20, np.int32), 3, 1, 3, 2)
    np.testing.assert_array_equal(ok, [[19, 18]] * 3)
    with pytest.raises(CupyOpsValueError, match=r"row 0's candidates \[0, 21\) .* spans "
                                                r"element offsets \[0, 60\)"):
        top_k_per_row_prefill(buffer, starts, np.full(3, 21, np.int32), 3, 1, 3, 2)


def test_partial_selection_equals_the_full_stable_sort():
    # The oracle selects by partition (reference._ranked_top_k) instead of sorting whole rows;
    # it must give exactly the full sort's first K: heavy ties, NaN, +-inf, +-0, denormals.
    from cupy_ops.reference.top_k_per_row import _ranked_top_k
    rng = np.random.default_rng(77)
    pool = np.array([np.nan, -np.inf, np.inf, 0.0, -0.0, 1.0, -1.0, 1e-45, -1e-45, 3.4e38], np.float32)
    for case in range(3000):
        n = int(rng.integers(2, 300))
        k = int(rng.integers(1, n))
        kind = case % 3
        scores = (random_scores(rng, n) if kind == 0 else
                  rng.integers(-3, 3, n).astype(np.float32) if kind == 1 else pool[rng.integers(0, pool.size, n)])
        keys = order_keys(scores, nan_rank=("lowest", "highest")[case % 2], signed_zeros=bool(case % 5))
        np.testing.assert_array_equal(_ranked_top_k(keys, k), np.argsort(-keys, kind="stable")[:k],
                                      err_msg=f"case {case}: n={n} k={k}")
