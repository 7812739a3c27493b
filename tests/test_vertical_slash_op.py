"""CPU: the public convert_vertical_slash_indexes(_mergehead) ops (no GPU needed).

Covers argument validation (every check here runs before any launch, so the NumPy path exercises
the same code a GPU call runs first), the NumPy / torch-CPU reference path with and without
``out=``, variant choice and geometry, and the closed form of the serial merge that the CUDA
kernel implements (checked against the reference's literal transcription of spec §4).
"""

import bisect

import numpy as np
import pytest

import cupy_ops
from cupy_ops import CupyOpsTypeError, CupyOpsValueError
from cupy_ops.ops import vertical_slash as op_module
from cupy_ops.reference import vertical_slash as ref

INT32_MAX, INT32_MIN = 2**31 - 1, -(2**31)
plain = cupy_ops.convert_vertical_slash_indexes
mergehead = cupy_ops.convert_vertical_slash_indexes_mergehead


def i32(x):
    return np.asarray(x, dtype=np.int32)


def fixture_a():
    """Spec §7 fixture A (causal)."""
    return i32([256]), i32([256]), i32([[[0, 5, 70, 200]]]), i32([[[130, 64, 0]]])


def random_case(rng, B, H, causal, nnz_max=64, q_max=300, kv_extra=300, counts=False, block=64):
    q = rng.integers(1, q_max + 1, B)
    kv = q + rng.integers(0, kv_extra + 1, B) if causal else rng.integers(1, q_max + kv_extra + 1, B)
    nv_buf, ns_buf = int(rng.integers(1, nnz_max + 1)), int(rng.integers(1, nnz_max + 1))
    vc = rng.integers(1, nv_buf + 1, H) if counts else np.full(H, nv_buf)
    sc = rng.integers(1, ns_buf + 1, H) if counts else np.full(H, ns_buf)
    V = np.full((B, H, nv_buf), INT32_MAX, np.int64)
    S = np.full((B, H, ns_buf), INT32_MIN, np.int64)
    for b in range(B):
        for h in range(H):
            V[b, h, :vc[h]] = np.sort(rng.integers(0, kv[b], vc[h]))
            span = [int(kv[b] + q[b] + block), 3 * int(sc[h]) + 1, 6 * block][rng.integers(3)]
            s = np.sort(rng.integers(0, span, sc[h]))[::-1]
            if rng.random() < 0.5:
                s[-1] = 0
            S[b, h, :sc[h]] = s
    ctx = int(q.max()) + int(rng.integers(0, block))
    return i32(q), i32(kv), i32(V), i32(S), i32(vc), i32(sc), ctx


# ------------------------------------------------------------------------------ reference path

def test_numpy_path_equals_reference_on_fixture_a():
    q, kv, V, S = fixture_a()
    got = plain(q, kv, V, S, 256, 64, 64)
    want = ref.convert_vertical_slash_indexes(q, kv, V, S, 256, 64, 64)
    assert len(got) == 4
    for g, w in zip(got, want):
        assert isinstance(g, np.ndarray) and g.dtype == np.int32
        np.testing.assert_array_equal(g, w)
    assert got[1][0, 0, 3, :3].tolist() == [62, 128, 192]


@pytest.mark.parametrize("causal", [True, False])
def test_numpy_path_equals_reference_random(causal):
    rng = np.random.default_rng(3)
    for _ in range(5):
        q, kv, V, S, vc, sc, ctx = random_case(rng, 3, 2, causal, counts=True)
        got = mergehead(q, kv, V, S, vc, sc, ctx, 64, 64, causal)
        want = ref.convert_vertical_slash_indexes_mergehead(q, kv, V, S, vc, sc, ctx, 64, 64, causal)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)


def test_torch_cpu_tensors_take_the_reference_path_and_stay_torch():
    torch = pytest.importorskip("torch")
    q, kv, V, S = (torch.from_numpy(x) for x in fixture_a())
    got = plain(q, kv, V, S, 256, 64, 64, True)
    assert all(isinstance(g, torch.Tensor) and g.dtype == torch.int32 for g in got)
    assert got[1][0, 0, 3, :3].tolist() == [62, 128, 192]


def test_out_on_the_host_path():
    q, kv, V, S = fixture_a()
    shapes = [(1, 1, 4), (1, 1, 4, 3), (1, 1, 4), (1, 1, 4, 4)]
    outs = tuple(np.full(s, -7, np.int32) for s in shapes)
    ret = plain(q, kv, V, S, 256, 64, 64, out=outs)
    assert all(r is o for r, o in zip(ret, outs))
    want = ref.convert_vertical_slash_indexes(q, kv, V, S, 256, 64, 64)
    for o, w in zip(outs, want):
        np.testing.assert_array_equal(o, w)        # the plain op overwrites every element
    outs = tuple(np.full(s, -7, np.int32) for s in shapes)
    mergehead(q, kv, V, S, i32([4]), i32([3]), 256, 64, 64, out=outs)
    _, defined = ref.convert_vertical_slash_indexes_mergehead(q, kv, V, S, i32([4]), i32([3]), 256, 64,
                                                              64, return_defined=True)
    for o, w, d in zip(outs, want, defined):
        np.testing.assert_array_equal(o[d], w[d])
        assert np.all(o[~d] == -7)                 # undefined entries are left alone


def test_public_names_and_defaults():
    import inspect
    for fn, n in ((plain, 8), (mergehead, 10)):
        params = list(inspect.signature(fn).parameters.values())
        assert params[n - 1].name == "causal" and params[n - 1].default is True
        assert [p.name for p in params[n:]] == ["out", "validate"]
        assert all(p.kind is p.KEYWORD_ONLY for p in params[n:])
        assert "Deliberate differences from vLLM" in fn.__doc__
    assert "convert_vertical_slash_indexes" in cupy_ops.__all__


# ------------------------------------------------------------------------------ validation

def _bad(call, kind, *fragments):
    with pytest.raises(kind) as info:
        call()
    msg = str(info.value)
    assert isinstance(info.value, RuntimeError)    # vLLM callers catch RuntimeError
    for fragment in fragments:
        assert fragment in msg, msg


def test_validation_errors_before_launch():
    q, kv, V, S = fixture_a()
    op = "convert_vertical_slash_indexes"
    _bad(lambda: plain(q.astype(np.int64), kv, V, S, 256, 64, 64), CupyOpsTypeError, op, "q_seqlens.dtype")
    _bad(lambda: plain(q, kv, V, S[0], 256, 64, 64), CupyOpsValueError, "slash_indexes", "3 dimensions")
    _bad(lambda: plain(q, kv, V[:, :, :0], S, 256, 64, 64), CupyOpsValueError, "NNZ_V")
    _bad(lambda: plain(q, kv, V, S[:, :, :0], 256, 64, 64), CupyOpsValueError, "NNZ_S")
    _bad(lambda: plain(q, kv, np.zeros((1, 2, 4), np.int32), S, 256, 64, 64), CupyOpsValueError,
         "vertical_indexes.shape")
    _bad(lambda: plain(i32([1, 2]), kv, V, S, 256, 64, 64), CupyOpsValueError, "q_seqlens.shape")
    _bad(lambda: plain(q, kv, V, S, 256, 64, 32), CupyOpsValueError, "block_size_M (64) must equal")
    _bad(lambda: plain(q, kv, V, S, 256, 16, 16), CupyOpsValueError, "32, 64, 128")
    _bad(lambda: plain(q, kv, V, S, 256.0, 64, 64), CupyOpsTypeError, "context_size")
    _bad(lambda: plain(q, kv, V, S, -1, 64, 64), CupyOpsValueError, "context_size")
    _bad(lambda: plain(q, kv, V, S, 256, 64, 64, 1), CupyOpsTypeError, "causal must be a bool")
    _bad(lambda: plain(q, kv, V, S, 256, 64, 64, validate="yes"), CupyOpsTypeError, "validate")
    strided = np.zeros((1, 1, 8), np.int32)[:, :, ::2]
    _bad(lambda: plain(q, kv, strided, S, 256, 64, 64), CupyOpsValueError, "vertical_indexes must be contiguous")
    _bad(lambda: plain(q, kv, V, S, 256, 64, 64, out=(1, 2)), CupyOpsTypeError, "out must be a tuple")
    mh = "convert_vertical_slash_indexes_mergehead"
    _bad(lambda: mergehead(q, kv, V, S, i32([1, 1]), i32([1]), 256, 64, 64), CupyOpsValueError, mh,
         "vertical_indices_count.shape")
    _bad(lambda: mergehead(q, kv, V, S, i32([1]), np.ones(1, np.int64), 256, 64, 64), CupyOpsTypeError,
         "slash_indices_count.dtype")


def test_out_is_checked():
    q, kv, V, S = fixture_a()
    good = [(1, 1, 4), (1, 1, 4, 3), (1, 1, 4), (1, 1, 4, 4)]
    for i, bad in enumerate([(1, 1, 5), (1, 1, 4, 4), (1, 4), (1, 1, 4, 3)]):
        outs = [np.zeros(s, np.int32) for s in good]
        outs[i] = np.zeros(bad, np.int32)
        _bad(lambda: plain(q, kv, V, S, 256, 64, 64, out=tuple(outs)), CupyOpsValueError, f"out[{i}]")
    outs = [np.zeros(s, np.int32) for s in good]
    outs[1] = outs[1].astype(np.int64)
    _bad(lambda: plain(q, kv, V, S, 256, 64, 64, out=tuple(outs)), CupyOpsTypeError, "out[1] (block_offset).dtype")
    shared = np.zeros(16, np.int32)
    outs = (shared[:4].reshape(good[0]), np.zeros(good[1], np.int32), shared[2:6].reshape(good[2]),
            np.zeros(good[3], np.int32))
    _bad(lambda: plain(q, kv, V, S, 256, 64, 64, out=outs), CupyOpsValueError, "overlaps")


def test_value_errors_on_the_host_path():
    q, kv, V, S = fixture_a()
    _bad(lambda: plain(q, kv, V, S, 100, 64, 64), CupyOpsValueError, "context_size (100)")
    _bad(lambda: plain(q, kv, V, i32([[[0, 64, 130]]]), 256, 64, 64), CupyOpsValueError, "descending")
    _bad(lambda: plain(q, kv, V, i32([[[130, 64, -1]]]), 256, 64, 64), CupyOpsValueError, ">= 0")
    _bad(lambda: mergehead(q, kv, V, S, i32([5]), i32([3]), 256, 64, 64), CupyOpsValueError, "[1, 4]")


# ------------------------------------------------------------------------------ variants, geometry

def test_chosen_variants_are_in_the_table():
    rng = np.random.default_rng(0)
    for _ in range(200):
        v = op_module.choose_variant(int(rng.choice(op_module.BLOCK_SIZES)), bool(rng.integers(2)),
                                     bool(rng.integers(2)), int(rng.integers(1, 40000)),
                                     int(rng.integers(1, 40000)), 227 * 1024)
        assert op_module.FAMILY.contains(v)
    assert op_module.choose_variant(64, True, True, 1000, 6000, 227 * 1024).staged
    assert not op_module.choose_variant(64, True, True, 1000, 60000, 227 * 1024).staged
    # 16-bit slash indices in the staged kernel
    assert not op_module.choose_variant(64, True, True, 1, 65536, 1 << 30).staged
    assert op_module.choose_variant(64, True, True, 1, 65535, 1 << 30).staged


@pytest.mark.parametrize("B,H,rows", [(1, 32, 512), (1, 32, 2048), (1, 32, 64), (3, 1, 1), (64, 64, 7)])
def test_launch_geometry(B, H, rows):
    chunks, grid = op_module.launch_geometry(B, H, rows, 132)
    assert grid == B * H * chunks and 1 <= chunks <= max(1, -(-rows // (op_module.THREADS // 32)))
    if (B, H, rows) == (1, 32, 512):
        assert chunks == 16     # 512 blocks: one wave of 4 per SM (528 slots), not 544
    slots = op_module.BLOCKS_PER_SM * 132
    assert grid <= max(slots, B * H)
    assert op_module.launch_geometry(1, 32, 2048, 132, blocks_per_sm=2) == (8, 256)


# ------------------------------------------------------------------------------ the kernel's closed form

def _tile_geometry(S, q, kv, r, block, causal):
    """What both tile models below start from: the tile's frontier, segment and range ends, the
    jump indices (raw slash gap > block), the first slash below the frontier (k0) and the end of
    the slashes that matter (k_end)."""
    ns = len(S)
    start = r * block
    frontier = (kv - q if causal else kv) + start + block
    seg_end = lambda k: max(frontier - S[k], block)                        # noqa: E731
    range_end = lambda a, e: a + -(-max(e - a, 0) // block) * block        # noqa: E731
    jumps = [k for k in range(1, ns) if S[k - 1] - S[k] > block]
    k0 = next((k for k in range(ns) if S[k] < frontier), ns - 1)
    k_end = ns if causal else next((k for k in range(k0 + 1, ns) if S[k] < start), ns)
    return ns, frontier, seg_end, range_end, jumps, k0, k_end


def closed_form_tile(V, S, q, kv, r, block, causal):
    """The per-tile computation of cuda_src/vertical_slash.cu, written serially: ranges from
    the jump indices only, columns as slices of V between ranges."""
    ns, frontier, seg_end, range_end, jumps, k0, k_end = _tile_geometry(S, q, kv, r, block, causal)
    blocks, cols, v_next = [], [], 0

    def emit(lo, hi):
        nonlocal v_next
        gap_end = max(v_next, bisect.bisect_left(V, lo, v_next))
        cols.extend(V[v_next:gap_end])
        v_next = max(gap_end, bisect.bisect_left(V, hi, gap_end))
        if lo < kv:
            blocks.extend(range(lo, min(hi, kv), block))

    if S[k0] > frontier:
        lo = frontier if causal else kv
        emit(lo, lo + block)
    else:
        anchor = seg_end(k0)
        for k in jumps:
            if k0 < k < k_end and seg_end(k) > range_end(anchor, seg_end(k - 1)) + block:
                emit(anchor - block, range_end(anchor, seg_end(k - 1)))
                anchor = seg_end(k)
        emit(anchor - block, range_end(anchor, seg_end(k_end - 1)))
    if not causal:
        end = max(v_next, bisect.bisect_left(V, kv, v_next))
        cols.extend(V[v_next:end])
    return blocks, cols


def chained_tile(V, S, q, kv, r, block, causal, next_scan=32):
    """The staged kernel's per-tile computation, written serially: the tile's first range ends at
    the first candidate that starts a new range (segment ends clamped at block); later anchors
    follow a frontier-independent chain linked once per head (``next_scan`` candidates tested
    per anchor while staging, a scan of the remaining candidates for links left unknown)."""
    ns, frontier, seg_end, range_end, jumps, k0, k_end = _tile_geometry(S, q, kv, r, block, causal)

    def starts_range(s_anchor, s_before, s_here):                          # slash coordinates
        d = s_anchor - s_before
        return s_anchor - s_here > (-(-d // block) * block if d > 0 else 0) + block

    def link(j, stop):
        return next((c for c in range(j + 1, stop)
                     if starts_range(S[jumps[j]], S[jumps[c] - 1], S[jumps[c]])), None)

    staged = []
    for j in range(len(jumps)):
        stop = min(j + 1 + next_scan, len(jumps))
        found = link(j, stop)
        staged.append(found if found is not None else (None if stop < len(jumps) else len(jumps)))
    ranges = []
    if S[k0] > frontier:
        lo = frontier if causal else kv
        ranges.append((lo, lo + block))
    else:
        anchor = seg_end(k0)
        cands = [j for j, k in enumerate(jumps) if k0 < k < k_end]
        j_end = cands[-1] + 1 if cands else 0
        hit = next((j for j in cands
                    if seg_end(jumps[j]) > range_end(anchor, seg_end(jumps[j] - 1)) + block), None)
        if hit is None:
            ranges.append((anchor - block, range_end(anchor, seg_end(k_end - 1))))
        else:
            ranges.append((anchor - block, range_end(anchor, seg_end(jumps[hit] - 1))))
            j = hit
            while j is not None:
                nxt = staged[j] if staged[j] is not None else link(j, j_end)
                nxt = nxt if nxt is not None and nxt < j_end else None
                k_next = jumps[nxt] if nxt is not None else k_end
                a = seg_end(jumps[j])
                ranges.append((a - block, range_end(a, seg_end(k_next - 1))))
                j = nxt
    blocks, cols, v_next = [], [], 0
    for lo, hi in ranges:
        gap_end = max(v_next, bisect.bisect_left(V, lo))
        cols.extend(V[v_next:gap_end])
        v_next = max(gap_end, bisect.bisect_left(V, hi))
        if lo < kv:
            blocks.extend(range(lo, min(hi, kv), block))
    if not causal:
        end = max(v_next, bisect.bisect_left(V, kv, v_next))
        cols.extend(V[v_next:end])
    return blocks, cols


@pytest.mark.parametrize("block", [32, 64, 128])
def test_closed_form_equals_the_serial_merge(block):
    rng = np.random.default_rng(block)
    tiles = 0
    for _ in range(150):
        causal = bool(rng.integers(2))
        q = int(rng.integers(1, 500))
        kv = q + int(rng.integers(0, 500)) if causal else int(rng.integers(1, 1000))
        V = sorted(rng.integers(0, kv, int(rng.integers(1, 60))).tolist())   # duplicates too
        ns = int(rng.integers(1, 60))
        # Gaps near block..2*block are where a new range depends on the current anchor's phase.
        gaps = rng.integers(block - 3, 2 * block + 3, ns) if rng.random() < 0.5 else rng.integers(0, 3 * block, ns)
        S = np.maximum(int(rng.integers(0, kv + q + 100)) - np.concatenate([[0], np.cumsum(gaps[1:])]), 0).tolist()
        for r in range(-(-q // block)):
            want = ref._tile(V, S, q, kv, r, block, block, causal)
            assert closed_form_tile(V, S, q, kv, r, block, causal) == (list(want[0]), list(want[1]))
            assert chained_tile(V, S, q, kv, r, block, causal) == (list(want[0]), list(want[1]))
            assert chained_tile(V, S, q, kv, r, block, causal, next_scan=1) == (list(want[0]), list(want[1]))
            tiles += 1
    assert tiles > 300
