"""CPU tests of the vertical/slash layout oracle (spec: vertical_slash.md §4-§7, §10).

Golden fixtures (§7) are compared bit-exactly; random cases check the §5 properties (bounds,
order, disjointness, capacity, coverage) through brute-force checks written independently of
the oracle's scan; mergehead is checked against the plain op on trimmed rows.
"""

import numpy as np
import pytest

from cupy_ops._checks import CupyOpsTypeError, CupyOpsValueError
from cupy_ops.reference.vertical_slash import (
    convert_vertical_slash_indexes,
    convert_vertical_slash_indexes_mergehead,
    defined_entries,
    layout_to_dense_mask,
    num_rows,
    vertical_slash_pattern_mask,
)

INT32_MAX = 2**31 - 1
INT32_MIN = -(2**31)


def i32(x):
    return np.array(x, dtype=np.int32)


# ------------------------------------------------------------------------------------ helpers

def tile_lists(outputs, b=0, h=0, rows=None):
    """(offsets, columns) lists per tile of one (b, h)."""
    bc, bo, cc, ci = outputs
    rows = bc.shape[2] if rows is None else rows
    return [(bo[b, h, r, :bc[b, h, r]].tolist(), ci[b, h, r, :cc[b, h, r]].tolist())
            for r in range(rows)]


def single(q, kv, V, S, causal, bm=64):
    return convert_vertical_slash_indexes(i32([q]), i32([kv]), i32([[V]]), i32([[S]]), q, bm, bm,
                                          causal)


def sorted_sample(rng, n, k, lo=0):
    """k sorted values in [lo, lo + n): unique when possible, else with repeats."""
    if k <= n:
        return lo + np.sort(rng.choice(n, size=k, replace=False))
    return lo + np.sort(rng.integers(0, n, size=k))


def random_case(rng, B, H, bm, causal, nnz_v, nnz_s, *, max_q=2000, force_zero=True):
    q = rng.integers(1, max_q + 1, size=B)
    if causal:
        kv = q + rng.integers(0, 2001, size=B)
    else:
        kv = rng.integers(1, 4001, size=B)
    V = np.empty((B, H, nnz_v), dtype=np.int64)
    S = np.empty((B, H, nnz_s), dtype=np.int64)
    for b in range(B):
        for h in range(H):
            V[b, h] = sorted_sample(rng, int(kv[b]), nnz_v)
            # slashes up to past the last frontier, so some are skipped as ">= F"
            S[b, h] = sorted_sample(rng, int(kv[b] + q[b] + 2 * bm), nnz_s)[::-1]
            if force_zero and causal:
                S[b, h, -1] = 0
    context = int(q.max()) + int(rng.integers(0, 200))
    return i32(q), i32(kv), i32(V), i32(S), context


def brute_layout_mask(offsets_per_tile, cols_per_tile, q, kv, bm, bn, causal):
    """Dense kept-pair mask built pair by pair from Python lists (independent of the helper)."""
    mask = np.zeros((q, kv), dtype=bool)
    for i in range(q):
        offs, cols = offsets_per_tile[i // bm], set(cols_per_tile[i // bm])
        for j in range(kv):
            if causal and j > kv - q + i:
                continue
            mask[i, j] = j in cols or any(o <= j < o + bn for o in offs)
    return mask


def check_properties(q, kv, V, S, outputs, bm, causal, *, counts=None, coverage=True,
                     zero_rows=True):
    """Spec §5 on every (b, h, tile); ``counts`` = (vertical, slash) per head for mergehead."""
    bc, bo, cc, ci = outputs
    B, H, n_rows = bc.shape
    assert bo.shape == (B, H, n_rows, S.shape[2]) and ci.shape == (B, H, n_rows, V.shape[2])
    for arr in outputs:
        assert arr.dtype == np.int32
    for b in range(B):
        q_b, kv_b = int(q[b]), int(kv[b])
        tiles = -(-q_b // bm)
        for h in range(H):
            nv = V.shape[2] if counts is None else int(counts[0][h])
            ns = S.shape[2] if counts is None else int(counts[1][h])
            v_row, s_row = V[b, h, :nv], S[b, h, :ns]
            v_unique = np.unique(v_row).size == nv
            for r in range(tiles):
                nb, nc = int(bc[b, h, r]), int(cc[b, h, r])
                assert 0 <= nb <= ns, (b, h, r, nb, ns)
                assert 0 <= nc <= nv, (b, h, r, nc, nv)
                offs = bo[b, h, r, :nb].astype(np.int64)
                cols = ci[b, h, r, :nc].astype(np.int64)
                assert np.all((offs >= 0) & (offs < kv_b)), (b, h, r, offs)
                assert np.all(np.diff(offs) >= bm), (b, h, r, offs)  # ascending, disjoint
                assert np.all((cols >= 0) & (cols < kv_b)), (b, h, r, cols)
                steps = np.diff(cols)
                assert np.all(steps > 0 if v_unique else steps >= 0), (b, h, r, cols)
                inside = (cols[:, None] >= offs[None, :]) & (cols[:, None] < offs[None, :] + bm)
                assert not inside.any(), (b, h, r, cols, offs)
                assert np.isin(cols, v_row).all()
            if zero_rows:
                for arr in (bc[b, h, tiles:], bo[b, h, tiles:], cc[b, h, tiles:], ci[b, h, tiles:]):
                    assert not arr.any()
            if coverage and (not causal or 0 in s_row):
                need = vertical_slash_pattern_mask(q_b, kv_b, v_row, s_row, causal)
                kept = layout_to_dense_mask(bc[b, h], bo[b, h], cc[b, h], ci[b, h], q_b, kv_b,
                                            bm, bm, causal)
                missing = np.argwhere(need & ~kept)
                assert missing.size == 0, (b, h, missing[:5])


# ---------------------------------------------------------------------------- golden fixtures

FIXTURE_A = dict(q=256, kv=256, V=[0, 5, 70, 200], S=[130, 64, 0], causal=True,
                 expected=[([0], []), ([0, 64], []), ([0, 64, 128], []),
                           ([62, 128, 192], [0, 5])])
FIXTURE_B = dict(q=128, kv=256, V=[3, 100, 180, 250], S=[100, 0], causal=True,
                 expected=[([28, 128], [3, 100]), ([92, 192], [3, 180])])
FIXTURE_C = dict(q=128, kv=256, V=[3, 100, 180, 250], S=[300, 250, 200, 10], causal=False,
                 expected=[([0, 64, 246], [180]), ([20, 84, 148], [3, 250])])
FIXTURE_Q1 = dict(q=64, kv=64, V=[10], S=[64], causal=True, expected=[([0], [])])
FIXTURE_Q3 = dict(q=192, kv=192, V=[3, 10], S=[500, 400], causal=True,
                  expected=[([64], [3, 10]), ([128], [3, 10]), ([], [3, 10])])
FIXTURES = {"A": FIXTURE_A, "B": FIXTURE_B, "C": FIXTURE_C, "Q1": FIXTURE_Q1, "Q3": FIXTURE_Q3}


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_golden_fixture(name):
    fx = FIXTURES[name]
    out = single(fx["q"], fx["kv"], fx["V"], fx["S"], fx["causal"])
    assert tile_lists(out) == fx["expected"]
    n = len(fx["expected"])
    assert out[0].shape == (1, 1, n) and out[1].shape == (1, 1, n, len(fx["S"]))
    assert out[2].shape == (1, 1, n) and out[3].shape == (1, 1, n, len(fx["V"]))
    # zero fill past the counts
    for r, (offs, cols) in enumerate(fx["expected"]):
        assert not out[1][0, 0, r, len(offs):].any() and not out[3][0, 0, r, len(cols):].any()


def test_golden_q2_drops_vertical_without_main_diagonal():
    out = single(256, 256, [3, 150, 170], [100], True)
    assert tile_lists(out)[3] == ([92], [3])
    # column 170 is visible to tile 3 but neither a column nor inside [92, 156): coverage is lost
    kept = layout_to_dense_mask(out[0][0, 0], out[1][0, 0], out[2][0, 0], out[3][0, 0],
                                256, 256, 64, 64, True)
    assert not kept[192:, 170].any()
    need = vertical_slash_pattern_mask(256, 256, [3, 150, 170], [100], True)
    assert need[192:, 170].all()


def test_slash_equal_to_frontier_is_skipped_unless_last():
    """§4.1: values >= F are skipped while another slash exists (only a last s0 == F stays)."""
    # tile 3 of q = kv = 256 has F = 256: s = 256 is skipped, s0 = 0 gives R = [192, 256)
    assert tile_lists(single(256, 256, [10], [256, 0], True))[3] == ([192], [10])
    # Q1 variant: s0 == F is the last slash -> R = [0, BM)
    assert tile_lists(single(256, 256, [10], [256], True))[3] == ([0], [])


@pytest.mark.parametrize("name", ["A", "C"])
@pytest.mark.parametrize("pad", [0, 1, 5])
def test_golden_fixture_d_mergehead_padding(name, pad):
    fx = FIXTURES[name]
    V = fx["V"] + [INT32_MAX] * pad
    S = fx["S"] + [INT32_MIN] * pad
    counts = (i32([len(fx["V"])]), i32([len(fx["S"])]))
    out, defined = convert_vertical_slash_indexes_mergehead(
        i32([fx["q"]]), i32([fx["kv"]]), i32([[V]]), i32([[S]]), *counts, fx["q"], 64, 64,
        fx["causal"], fill=-99, return_defined=True)
    assert tile_lists(out) == fx["expected"]
    for arr, mask in zip(out, defined):
        assert mask.shape == arr.shape and np.all(arr[~mask] == -99)
    plain = single(fx["q"], fx["kv"], fx["V"], fx["S"], fx["causal"])
    assert np.array_equal(out[0], plain[0]) and np.array_equal(out[2], plain[2])


# --------------------------------------------------------------------------- random properties

@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("bm", [32, 64, 128])
def test_random_properties_small_nnz(causal, B, bm):
    rng = np.random.default_rng([B, bm, int(causal)])
    for _ in range(2):
        nnz_v, nnz_s = (int(x) for x in rng.integers(1, 65, size=2))
        q, kv, V, S, ctx = random_case(rng, B, 2, bm, causal, nnz_v, nnz_s)
        out = convert_vertical_slash_indexes(q, kv, V, S, ctx, bm, bm, causal)
        assert out[0].shape == (B, 2, num_rows(ctx, bm))
        check_properties(q, kv, V, S, out, bm, causal)


@pytest.mark.parametrize("causal", [True, False])
def test_random_properties_tiny_lengths(causal):
    """q, kv below one tile, NNZ of 1, repeated verticals (kv < NNZ_V)."""
    rng = np.random.default_rng(7 + int(causal))
    for _ in range(30):
        bm = int(rng.choice([32, 64, 128]))
        nnz_v, nnz_s = (int(x) for x in rng.integers(1, 9, size=2))
        q, kv, V, S, ctx = random_case(rng, 3, 1, bm, causal, nnz_v, nnz_s, max_q=5)
        out = convert_vertical_slash_indexes(q, kv, V, S, ctx, bm, bm, causal)
        check_properties(q, kv, V, S, out, bm, causal)


@pytest.mark.parametrize("causal", [True, False])
def test_random_properties_large_nnz(causal):
    rng = np.random.default_rng(11 + int(causal))
    q, kv, V, S, ctx = random_case(rng, 1, 1, 64, causal, 2500, 3000)
    out = convert_vertical_slash_indexes(q, kv, V, S, ctx, 64, 64, causal)
    check_properties(q, kv, V, S, out, 64, causal)


def test_random_properties_causal_without_main_diagonal():
    """Without s = 0 everything but coverage still holds (spec §5, Q2)."""
    rng = np.random.default_rng(3)
    for bm in (32, 64, 128):
        q, kv, V, S, ctx = random_case(rng, 3, 2, bm, True, 40, 20, force_zero=False)
        S = np.where(S == 0, 1, S).astype(np.int32)  # keeps the rows non-increasing
        out = convert_vertical_slash_indexes(q, kv, V, S, ctx, bm, bm, True)
        check_properties(q, kv, V, S, out, bm, True, coverage=False)


def test_q_zero_items_not_written_and_not_read():
    """q_seqlens[b] == 0: no rows written; its index rows (garbage here) are not checked."""
    q, kv = i32([0, 100, 0]), i32([0, 200, 5])
    V = i32([[[-5, 9]], [[3, 150]], [[7, 1]]])
    S = i32([[[INT32_MIN, 3]], [[120, 0]], [[0, 9]]])
    out = convert_vertical_slash_indexes(q, kv, V, S, 130, 64, 64, True)
    for arr in out:
        assert not arr[0].any() and not arr[2].any()
    assert out[0].shape == (3, 1, 3)
    ref = single(100, 200, [3, 150], [120, 0], True)
    assert tile_lists(out, b=1, rows=2) == tile_lists(ref)
    assert out[0][1, 0, 2] == 0 and out[2][1, 0, 2] == 0  # row 2 starts past q = 100


def test_dca_style_call_batch_one():
    """Like the DCA caller: B = 1, context_size = q_len, BM = BN = 64, both modes."""
    rng = np.random.default_rng(5)
    for causal in (True, False):
        q_len = 1500
        kv_len = q_len if causal else 3000
        V = np.sort(rng.choice(kv_len, size=(1, 4, 300), replace=True), axis=-1)
        S = -np.sort(-rng.choice(kv_len + q_len, size=(1, 4, 500), replace=True), axis=-1)
        S[..., -1] = 0
        out = convert_vertical_slash_indexes(i32([q_len]), i32([kv_len]), i32(V), i32(S), q_len,
                                             64, 64, causal)
        check_properties(i32([q_len]), i32([kv_len]), i32(V), i32(S), out, 64, causal)


# ---------------------------------------------------------------------- mergehead vs plain op

@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("B", [1, 3])
def test_mergehead_matches_plain_on_trimmed_rows(causal, B):
    rng = np.random.default_rng([17, B, int(causal)])
    H, bm = 3, int(rng.choice([32, 64, 128]))
    nnz_v, nnz_s = 48, 40
    q, kv, V, S, ctx = random_case(rng, B, H, bm, causal, nnz_v, nnz_s)
    v_cnt = rng.integers(1, nnz_v + 1, size=H)
    s_cnt = rng.integers(1, nnz_s + 1, size=H)
    Vp, Sp = V.copy(), S.copy()
    for h in range(H):
        # re-sample the valid prefixes so they are sorted, then pad like the DCA caller
        for b in range(B):
            Vp[b, h, :v_cnt[h]] = sorted_sample(rng, int(kv[b]), int(v_cnt[h]))
            Sp[b, h, :s_cnt[h]] = sorted_sample(rng, int(kv[b] + q[b]), int(s_cnt[h]))[::-1]
            if causal:
                Sp[b, h, s_cnt[h] - 1] = 0
        Vp[:, h, v_cnt[h]:] = INT32_MAX
        Sp[:, h, s_cnt[h]:] = INT32_MIN
    fill = -12345
    out, defined = convert_vertical_slash_indexes_mergehead(
        q, kv, Vp, Sp, i32(v_cnt), i32(s_cnt), ctx, bm, bm, causal, fill=fill,
        return_defined=True)
    for h in range(H):
        ref = convert_vertical_slash_indexes(q, kv, Vp[:, h:h + 1, :v_cnt[h]].copy(),
                                             Sp[:, h:h + 1, :s_cnt[h]].copy(), ctx, bm, bm,
                                             causal)
        mask = defined_entries(q, *ref, bm)
        # the masks the op returns agree with the helper applied to the plain op
        assert np.array_equal(defined[0][:, h], mask[0][:, 0])
        assert np.array_equal(defined[2][:, h], mask[2][:, 0])
        assert np.array_equal(defined[1][:, h, :, :s_cnt[h]], mask[1][:, 0])
        assert np.array_equal(defined[3][:, h, :, :v_cnt[h]], mask[3][:, 0])
        assert not defined[1][:, h, :, s_cnt[h]:].any()
        assert not defined[3][:, h, :, v_cnt[h]:].any()
        # defined entries are equal; the rest hold the fill value
        assert np.array_equal(out[0][:, h][mask[0][:, 0]], ref[0][:, 0][mask[0][:, 0]])
        assert np.array_equal(out[2][:, h][mask[2][:, 0]], ref[2][:, 0][mask[2][:, 0]])
        m1, m3 = mask[1][:, 0], mask[3][:, 0]
        assert np.array_equal(out[1][:, h, :, :s_cnt[h]][m1], ref[1][:, 0][m1])
        assert np.array_equal(out[3][:, h, :, :v_cnt[h]][m3], ref[3][:, 0][m3])
    for arr, m in zip(out, defined):
        assert np.all(arr[~m] == fill)
    check_properties(q, kv, Vp, Sp, out, bm, causal, counts=(v_cnt, s_cnt), zero_rows=False)


def test_mergehead_full_counts_default_fill_equals_plain():
    rng = np.random.default_rng(23)
    for causal in (True, False):
        q, kv, V, S, ctx = random_case(rng, 3, 2, 64, causal, 30, 25)
        plain = convert_vertical_slash_indexes(q, kv, V, S, ctx, 64, 64, causal)
        merged = convert_vertical_slash_indexes_mergehead(q, kv, V, S, i32([30, 30]),
                                                          i32([25, 25]), ctx, 64, 64, causal)
        assert len(merged) == 4
        for a, b in zip(plain, merged):
            assert a.dtype == b.dtype == np.int32 and np.array_equal(a, b)


# -------------------------------------------------------------------------- dense-mask helper

@pytest.mark.parametrize("causal", [True, False])
def test_layout_to_dense_mask_matches_brute_force(causal):
    rng = np.random.default_rng(31 + int(causal))
    for bm in (32, 64):
        q, kv, V, S, ctx = random_case(rng, 2, 1, bm, causal, 12, 6, max_q=150)
        kv = np.minimum(kv, 320).astype(np.int32)
        kv = np.maximum(kv, q).astype(np.int32) if causal else kv
        V = np.minimum(V, kv[:, None, None] - 1).astype(np.int32)
        V.sort(axis=-1)
        out = convert_vertical_slash_indexes(q, kv, V, S, ctx, bm, bm, causal)
        for b in range(2):
            q_b, kv_b = int(q[b]), int(kv[b])
            lists = tile_lists(out, b=b, rows=-(-q_b // bm))
            want = brute_layout_mask([o for o, _ in lists], [c for _, c in lists], q_b, kv_b,
                                     bm, bm, causal)
            got = layout_to_dense_mask(out[0][b, 0], out[1][b, 0], out[2][b, 0], out[3][b, 0],
                                       q_b, kv_b, bm, bm, causal)
            assert got.dtype == bool and got.shape == (q_b, kv_b)
            assert np.array_equal(got, want)


def test_layout_to_dense_mask_hand_case():
    # one tile of 4 queries, kv = 10, block [2, 6) and column 8
    got = layout_to_dense_mask(i32([1]), i32([[2, 0]]), i32([1]), i32([[8]]), 4, 10, 4, 4, False)
    row = np.zeros(10, dtype=bool)
    row[2:6] = True
    row[8] = True
    assert np.array_equal(got, np.tile(row, (4, 1)))
    causal = layout_to_dense_mask(i32([1]), i32([[2, 0]]), i32([1]), i32([[8]]), 4, 10, 4, 4,
                                  True)
    # queries sit at keys 6..9
    assert np.array_equal(causal, got & (np.arange(10)[None, :] <= 6 + np.arange(4)[:, None]))
    # window clipped at kv
    clipped = layout_to_dense_mask(i32([1]), i32([[8]]), i32([0]), i32([[0]]), 1, 10, 4, 4, False)
    assert clipped[0].tolist() == [False] * 8 + [True, True]


def test_pattern_mask_matches_brute_force():
    rng = np.random.default_rng(41)
    for causal in (True, False):
        q_len, kv_len = 37, 90 if causal else 50
        V = np.sort(rng.choice(kv_len, 6, replace=False))
        S = np.sort(rng.choice(kv_len + q_len, 8, replace=False))[::-1]
        got = vertical_slash_pattern_mask(q_len, kv_len, V, S, causal)
        base = kv_len - q_len if causal else kv_len
        want = np.zeros((q_len, kv_len), dtype=bool)
        for i in range(q_len):
            for j in range(kv_len):
                if causal and j > base + i:
                    continue
                want[i, j] = j in V.tolist() or (base + i - j) in S.tolist()
        assert np.array_equal(got, want)


@pytest.mark.parametrize("args, match", [
    ((i32([1]), i32([[-1, 0]]), i32([0]), i32([[0]]), 4, 10), "block_offset"),
    ((i32([1]), i32([[10, 0]]), i32([0]), i32([[0]]), 4, 10), "block_offset"),
    ((i32([0]), i32([[0]]), i32([1]), i32([[10]]), 4, 10), "column_index"),
    ((i32([3]), i32([[0, 4]]), i32([0]), i32([[0]]), 4, 10), "block_count"),
    ((i32([0]), i32([[0]]), i32([0]), i32([[0]]), 5, 10), "q_len"),
    ((i32([[0]]), i32([[0]]), i32([0]), i32([[0]]), 4, 10), "block_count"),
])
def test_layout_to_dense_mask_rejects_bad_layouts(args, match):
    with pytest.raises(CupyOpsValueError, match=match):
        layout_to_dense_mask(*args, 4, 4, False)


# ------------------------------------------------------------------------------ empty inputs

def test_empty_batch_heads_rows():
    out = convert_vertical_slash_indexes(i32([]), i32([]), np.zeros((0, 2, 3), np.int32),
                                         np.zeros((0, 2, 4), np.int32), 100, 64, 64)
    assert [a.shape for a in out] == [(0, 2, 2), (0, 2, 2, 4), (0, 2, 2), (0, 2, 2, 3)]
    out = convert_vertical_slash_indexes(i32([5]), i32([5]), np.zeros((1, 0, 3), np.int32),
                                         np.zeros((1, 0, 4), np.int32), 5, 64, 64)
    assert [a.shape for a in out] == [(1, 0, 1), (1, 0, 1, 4), (1, 0, 1), (1, 0, 1, 3)]
    out = convert_vertical_slash_indexes(i32([0]), i32([0]), i32([[[1]]]), i32([[[0]]]), 0, 64,
                                         64, False)
    assert [a.shape for a in out] == [(1, 1, 0), (1, 1, 0, 1), (1, 1, 0), (1, 1, 0, 1)]
    assert all(a.dtype == np.int32 for a in out)


# ---------------------------------------------------------------------------- bad arguments

def _good():
    return dict(q_seqlens=i32([128, 64]), kv_seqlens=i32([256, 64]),
                vertical_indexes=i32([[[3, 100]], [[1, 2]]]),
                slash_indexes=i32([[[100, 0]], [[5, 0]]]),
                context_size=128, block_size_M=64, block_size_N=64, causal=True)


def _set(**changes):
    def mutate(kw):
        kw.update(changes)
    return mutate


def _put(name, index, value):
    def mutate(kw):
        arr = kw[name].copy()
        arr[index] = value
        kw[name] = arr
    return mutate


BAD_PLAIN = [
    ("q int64", _set(q_seqlens=np.array([128, 64])), CupyOpsTypeError, "q_seqlens.dtype"),
    ("kv list", _set(kv_seqlens=[256, 64]), CupyOpsTypeError, "kv_seqlens"),
    ("vertical float", _set(vertical_indexes=np.zeros((2, 1, 2), np.float32)), CupyOpsTypeError,
     "vertical_indexes.dtype"),
    ("slash int16", _set(slash_indexes=np.zeros((2, 1, 2), np.int16)), CupyOpsTypeError,
     "slash_indexes.dtype"),
    ("slash rank", _set(slash_indexes=i32([[100, 0], [5, 0]])), CupyOpsValueError,
     "slash_indexes must have 3"),
    ("vertical heads", _set(vertical_indexes=i32([[[3], [4]], [[1], [2]]])), CupyOpsValueError,
     "vertical_indexes must have shape"),
    ("vertical rank", _set(vertical_indexes=i32([[3, 100], [1, 2]])), CupyOpsValueError,
     "vertical_indexes must have shape"),
    ("q shape", _set(q_seqlens=i32([128, 64, 1])), CupyOpsValueError, "q_seqlens must have shape"),
    ("kv rank", _set(kv_seqlens=i32([[256, 64]])), CupyOpsValueError, "kv_seqlens must have shape"),
    ("NNZ_V 0", _set(vertical_indexes=np.zeros((2, 1, 0), np.int32)), CupyOpsValueError, "NNZ_V"),
    ("NNZ_S 0", _set(slash_indexes=np.zeros((2, 1, 0), np.int32)), CupyOpsValueError, "NNZ_S"),
    ("BM != BN", _set(block_size_N=32), CupyOpsValueError, "block_size_M .64. must equal"),
    ("BM not pow2", _set(block_size_M=48, block_size_N=48), CupyOpsValueError,
     "block_size_M must be a power of two"),
    ("BN zero", _set(block_size_N=0), CupyOpsValueError, "block_size_N"),
    ("BM float", _set(block_size_M=64.0), CupyOpsTypeError, "block_size_M must be an int"),
    ("context small", _set(context_size=127), CupyOpsValueError, "context_size"),
    ("context str", _set(context_size="128"), CupyOpsTypeError, "context_size"),
    ("causal int", _set(causal=1), CupyOpsTypeError, "causal must be a bool"),
    ("q negative", _put("q_seqlens", 1, -1), CupyOpsValueError, r"q_seqlens\[1\]"),
    ("kv < q causal", _put("kv_seqlens", 1, 63), CupyOpsValueError, r"kv_seqlens\[1\]=63"),
    ("kv zero", _put("kv_seqlens", 1, 0), CupyOpsValueError, r"kv_seqlens\[1\]=0"),
    ("vertical >= kv", _put("vertical_indexes", (1, 0, 1), 64), CupyOpsValueError,
     r"vertical_indexes\[1, 0, 1\]=64 must be < kv_seqlens"),
    ("vertical negative", _put("vertical_indexes", (0, 0, 0), -1), CupyOpsValueError,
     r"vertical_indexes\[0, 0, 0\]=-1"),
    ("vertical unsorted", _put("vertical_indexes", (0, 0, 0), 101), CupyOpsValueError,
     "sorted ascending"),
    ("slash negative", _put("slash_indexes", (1, 0, 1), -64), CupyOpsValueError,
     r"slash_indexes\[1, 0, 1\]=-64 must be >= 0"),
    ("slash int32 min", _put("slash_indexes", (0, 0, 1), INT32_MIN), CupyOpsValueError,
     "slash_indexes"),
    ("slash ascending", _put("slash_indexes", (0, 0, 1), 200), CupyOpsValueError,
     "sorted descending"),
]


@pytest.mark.parametrize("mutate, exc, match", [c[1:] for c in BAD_PLAIN],
                         ids=[c[0] for c in BAD_PLAIN])
def test_plain_rejects_bad_arguments(mutate, exc, match):
    kw = _good()
    convert_vertical_slash_indexes(**kw)  # the unmodified call is fine
    mutate(kw)
    with pytest.raises(exc, match=match) as info:
        convert_vertical_slash_indexes(**kw)
    assert "convert_vertical_slash_indexes:" in str(info.value)


def test_non_causal_accepts_kv_shorter_than_q():
    out = single(200, 50, [0, 49], [120, 60], False)
    check_properties(i32([200]), i32([50]), i32([[[0, 49]]]), i32([[[120, 60]]]), out, 64, False)


def _good_merge():
    kw = _good()
    kw["vertical_indexes"] = i32([[[3, 100, INT32_MAX]], [[1, 2, INT32_MAX]]])
    kw["slash_indexes"] = i32([[[100, 0, INT32_MIN]], [[5, 0, INT32_MIN]]])
    kw["vertical_indices_count"] = i32([2])
    kw["slash_indices_count"] = i32([2])
    return kw


BAD_MERGE = [
    ("v count 0", _set(vertical_indices_count=i32([0])), CupyOpsValueError,
     r"vertical_indices_count\[0\]=0 must be in \[1, 3\]"),
    ("s count big", _set(slash_indices_count=i32([4])), CupyOpsValueError,
     r"slash_indices_count\[0\]=4 must be in \[1, 3\]"),
    ("s count covers padding", _set(slash_indices_count=i32([3])), CupyOpsValueError,
     r"slash_indexes\[0, 0, 2\]"),
    ("v count covers padding", _set(vertical_indices_count=i32([3])), CupyOpsValueError,
     r"vertical_indexes\[0, 0, 2\]"),
    ("count int64", _set(slash_indices_count=np.array([2])), CupyOpsTypeError,
     "slash_indices_count.dtype"),
    ("count shape", _set(vertical_indices_count=i32([2, 2])), CupyOpsValueError,
     "vertical_indices_count must have shape"),
    ("count missing", _set(vertical_indices_count=None), CupyOpsTypeError,
     "vertical_indices_count"),
    ("fill float", _set(fill=0.5), CupyOpsTypeError, "fill"),
]


@pytest.mark.parametrize("mutate, exc, match", [c[1:] for c in BAD_MERGE],
                         ids=[c[0] for c in BAD_MERGE])
def test_mergehead_rejects_bad_arguments(mutate, exc, match):
    kw = _good_merge()
    convert_vertical_slash_indexes_mergehead(**kw)  # padding beyond the counts is accepted
    mutate(kw)
    with pytest.raises(exc, match=match) as info:
        convert_vertical_slash_indexes_mergehead(**kw)
    assert "convert_vertical_slash_indexes_mergehead:" in str(info.value)


# --------------------------------------------------------- the reference's scan vs. the spec's

def literal_tile(V, S, q, kv, r, bm, bn, causal):
    """Spec §4 for one query tile, one step at a time, exactly as the spec words it: the
    transcription the reference's _tile (which takes runs of steps at once) is checked against."""
    nv, ns = len(V), len(S)
    start = r * bm
    end = start + bm
    base = kv - q if causal else kv
    frontier = base + end                      # F
    sentinel = frontier + bn                   # vertical value once V is exhausted
    blocks, cols = [], []

    def flush(lo, hi):                          # §4.3
        if lo < kv:
            blocks.extend(range(lo, min(hi, kv), bn))

    # §4.1 initial slash: skip values >= F while another slash exists.
    si = 0
    s = S[si]
    si += 1
    while s >= frontier and si < ns:
        s = S[si]
        si += 1
    if s > frontier:                           # "no slash" (only possible when S is exhausted)
        lo, hi = (frontier, frontier + bn) if causal else (kv, kv + bn)
    else:                                      # includes the Q1 quirk s0 == F -> [0, BM)
        e = max(frontier - s, bm)
        lo, hi = e - bm, e

    # §4.2 scan. Each step consumes a vertical or a slash, or ends the tile; a non-causal range
    # reset is always followed by consuming a vertical (all are < kv), hence the step bound.
    vi = 0
    v = V[vi]
    vi += 1
    for _ in range(2 * (nv + ns) + 4):
        if v < hi:                                             # a.
            if v < lo:
                cols.append(v)
            if vi < nv:
                v = V[vi]
                vi += 1
            else:
                v = sentinel
        elif si < ns and (causal or S[si] >= start):           # b. next slash available
            e = max(frontier - S[si], bm)
            si += 1
            if e > hi + bm:
                flush(lo, hi)
                lo, hi = e - bm, e
            elif e > hi:
                hi += bm                                       # grows by BM, not to e
        elif causal:                                           # no slash left, causal
            flush(lo, hi)
            break
        elif vi == nv:                                         # non-causal, V fully fetched
            if v < kv:
                cols.append(v)
            flush(lo, hi)
            break
        else:                                                  # non-causal, verticals remain
            flush(lo, hi)
            lo, hi = kv, kv + bn
    else:  # pragma: no cover - impossible on validated input
        raise AssertionError("literal scan did not terminate")
    return blocks, cols



@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("block", [32, 64, 128])
def test_reference_scan_equals_the_literal_scan(causal, block):
    # _tile takes runs of no-op steps at once (binary search); it must emit exactly what the
    # step-by-step transcription emits: slash gaps around the block size, duplicates, zeros,
    # slashes far above the frontier, few and many entries, kv shorter than q (non-causal).
    from cupy_ops.reference.vertical_slash import _tile
    rng = np.random.default_rng(1000 * block + causal)
    tiles = 0
    for case in range(300):
        q = int(rng.integers(1, 700))
        kv = q + int(rng.integers(0, 700)) if causal else int(rng.integers(1, 1400))
        V = sorted(rng.integers(0, kv, int(rng.integers(1, [8, 80, 600][case % 3]))).tolist())
        ns = int(rng.integers(1, [8, 80, 1500][case % 3]))
        kind = case % 4
        if kind == 0:   # gaps near block..2*block: new ranges depend on the anchor's phase
            gaps = rng.integers(block - 3, 2 * block + 3, ns)
        elif kind == 1:
            gaps = rng.integers(0, 3 * block, ns)
        elif kind == 2:  # dense slashes (uniform at large NNZ)
            gaps = rng.integers(0, 8, ns)
        else:
            gaps = rng.integers(0, 2, ns) * rng.integers(0, 5 * block, ns)
        top = int(rng.integers(0, kv + q + 3 * block))
        S = np.maximum(top - np.concatenate([[0], np.cumsum(gaps[1:])]), 0).tolist()
        for r in range(-(-q // block)):
            want = literal_tile(V, S, q, kv, r, block, block, causal)
            got = _tile(V, S, q, kv, r, block, block, causal)
            assert (list(got[0]), list(got[1])) == (list(want[0]), list(want[1])), (case, r)
            tiles += 1
    assert tiles > 50000 // block
