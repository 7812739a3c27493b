"""GPU: convert_vertical_slash_indexes(_mergehead) kernels against the NumPy reference (skips
without a GPU). Integer outputs, so every comparison is exact.

Outputs given through ``out=`` start poisoned: the plain op must overwrite every element, the
mergehead op every defined element and nothing else. Large cases (NNZ 1000 / 6000, long
contexts) compare sampled tiles against the reference's per-tile loop, since the full Python
reference would take minutes; every tile of those cases is also compared between the
shared-memory and the global-memory kernels and between the plain and the mergehead op.
"""

import numpy as np
import pytest

import cupy_ops
from cupy_ops.ops import vertical_slash as op_module
from cupy_ops.reference import vertical_slash as ref

from .conftest import precompile, requires_gpu

pytestmark = requires_gpu

INT32_MAX, INT32_MIN = 2**31 - 1, -(2**31)
POISON = -123456789
plain = cupy_ops.convert_vertical_slash_indexes
mergehead = cupy_ops.convert_vertical_slash_indexes_mergehead


@pytest.fixture(scope="module", autouse=True)
def prebuilt():
    precompile(op_module.FAMILY, jobs=8)


@pytest.fixture
def unstaged(monkeypatch):
    """Force the global-memory kernel (rows too long for shared memory) for one test."""
    op_module._PLANS.clear()
    monkeypatch.setattr(op_module, "_smem_limit", lambda device: 0)
    yield
    op_module._PLANS.clear()


def i32(x):
    return np.asarray(x, dtype=np.int32)


def dev(torch, *arrays):
    return tuple(None if a is None else torch.from_numpy(np.ascontiguousarray(a)).cuda() for a in arrays)


def host(t):
    return t.cpu().numpy()


def poisoned_outs(torch, B, H, rows, nnz_v, nnz_s):
    shapes = ((B, H, rows), (B, H, rows, nnz_s), (B, H, rows), (B, H, rows, nnz_v))
    return tuple(torch.full(s, POISON, dtype=torch.int32, device="cuda") for s in shapes)


def run_and_compare(torch, q, kv, V, S, vc, sc, ctx, block, causal, use_out=True):
    """Both ops on the GPU (mergehead only when counts are given) vs the reference, exactly."""
    B, H, nnz_s = S.shape
    nnz_v = V.shape[2]
    rows = -(-ctx // block)
    args = dev(torch, q, kv, V, S)
    if vc is None:
        want = ref.convert_vertical_slash_indexes(q, kv, V, S, ctx, block, block, causal)
        outs = poisoned_outs(torch, B, H, rows, nnz_v, nnz_s) if use_out else None
        got = plain(*args, ctx, block, block, causal, out=outs)
        for g, w, name in zip(got, want, op_module.OUT_NAMES):
            assert g.dtype == torch.int32 and g.is_cuda
            np.testing.assert_array_equal(host(g), w, err_msg=name)
        return want
    want, defined = ref.convert_vertical_slash_indexes_mergehead(q, kv, V, S, vc, sc, ctx, block,
                                                                 block, causal, return_defined=True)
    outs = poisoned_outs(torch, B, H, rows, nnz_v, nnz_s) if use_out else None
    got = mergehead(*args, *dev(torch, vc, sc), ctx, block, block, causal, out=outs)
    for g, w, d, name in zip(got, want, defined, op_module.OUT_NAMES):
        g = host(g)
        np.testing.assert_array_equal(g[d], w[d], err_msg=name)
        if use_out:
            assert np.all(g[~d] == POISON), f"{name}: mergehead wrote an undefined entry"
    return want


# ------------------------------------------------------------------------------ golden fixtures

# Spec §7: (name, causal, q, kv, V, S, {tile: (block_offset[:count], column_index[:count])})
FIXTURES = [
    ("A", True, 256, 256, [0, 5, 70, 200], [130, 64, 0],
     {0: ([0], []), 1: ([0, 64], []), 2: ([0, 64, 128], []), 3: ([62, 128, 192], [0, 5])}),
    ("B", True, 128, 256, [3, 100, 180, 250], [100, 0], {0: ([28, 128], [3, 100]), 1: ([92, 192], [3, 180])}),
    ("C", False, 128, 256, [3, 100, 180, 250], [300, 250, 200, 10],
     {0: ([0, 64, 246], [180]), 1: ([20, 84, 148], [3, 250])}),
    ("Q1", True, 64, 64, [10], [64], {0: ([0], [])}),
    ("Q2", True, 256, 256, [3, 150, 170], [100], {3: ([92], [3])}),
    ("Q3", True, 192, 192, [3, 10], [500, 400], {0: ([64], [3, 10]), 1: ([128], [3, 10]), 2: ([], [3, 10])}),
]


@pytest.mark.parametrize("fixture", FIXTURES, ids=[f[0] for f in FIXTURES])
@pytest.mark.parametrize("padded", [False, True], ids=["plain", "mergehead_padded"])
def test_golden_fixtures(torch, fixture, padded):
    name, causal, q, kv, V, S, tiles = fixture
    qs, kvs = i32([q]), i32([kv])
    if padded:   # fixture D: INT32_MAX / INT32_MIN padding excluded by the counts
        Vb, Sb = i32([[V + [INT32_MAX] * 3]]), i32([[S + [INT32_MIN] * 2]])
        # Poisoned out= buffers: mergehead leaves entries past the counts undefined (vLLM's
        # torch.empty), and copying undefined memory to the host trips compute-sanitizer initcheck.
        outs = poisoned_outs(torch, 1, 1, -(-q // 64), len(V) + 3, len(S) + 2)
        got = mergehead(*dev(torch, qs, kvs, Vb, Sb, i32([len(V)]), i32([len(S)])), q, 64, 64, causal,
                        out=outs)
    else:
        got = plain(*dev(torch, qs, kvs, i32([[V]]), i32([[S]])), q, 64, 64, causal)
    bc, bo, cc, ci = (host(g)[0, 0] for g in got)
    for r, (blocks, cols) in tiles.items():
        assert (bo[r, :bc[r]].tolist(), ci[r, :cc[r]].tolist()) == (blocks, cols), (name, r)


# ------------------------------------------------------------------------------ randomised sweep

def random_case(rng, B, causal, block, q_max, kv_extra, nnz_max, counts, H=None, nnz=None):
    """Spec §10.3: different q/kv per item, sorted in-range indices (verticals unique), mixed
    slash styles; mergehead rows padded with INT32_MAX / INT32_MIN past random counts.
    ``nnz=(NNZ_V, NNZ_S)`` fixes the buffer widths."""
    H = H or int(rng.integers(1, 4))
    q = rng.integers(1, q_max + 1, B)
    kv = q + rng.integers(0, kv_extra + 1, B) if causal else rng.integers(1, q_max + kv_extra + 1, B)
    if nnz is None:
        nnz = (int(rng.integers(1, min(nnz_max, kv.min()) + 1)), int(rng.integers(1, nnz_max + 1)))
    nv_buf, ns_buf = nnz
    kv = np.maximum(kv, nv_buf)          # room for nv_buf distinct verticals
    vc = rng.integers(1, nv_buf + 1, H) if counts else np.full(H, nv_buf)
    sc = rng.integers(1, ns_buf + 1, H) if counts else np.full(H, ns_buf)
    V = np.full((B, H, nv_buf), INT32_MAX, np.int64)
    S = np.full((B, H, ns_buf), INT32_MIN, np.int64)
    for b in range(B):
        for h in range(H):
            nv, ns = int(vc[h]), int(sc[h])
            V[b, h, :nv] = np.sort(rng.choice(int(kv[b]), nv, replace=False))
            style = rng.integers(4)
            if style == 0:      # spread over every diagonal of the chunk (and past it: skipped)
                s = rng.choice(max(int(kv[b] + q[b]) + block, ns), ns, replace=False)
            elif style == 1:    # near the main diagonal
                s = rng.choice(2 * ns + 1, ns, replace=False)
            elif style == 2:    # gaps around block..2*block: range breaks depend on the phase
                s = np.maximum(np.cumsum(rng.integers(block - 3, 2 * block + 3, ns))
                               - int(rng.integers(0, 4 * block)), 0)
            else:
                s = rng.choice(max(6 * block, ns), ns, replace=False)
            s = np.sort(s)[::-1]
            if rng.random() < 0.5:
                s[-1] = 0       # the DCA caller always includes the main diagonal
            S[b, h, :ns] = s
    ctx = int(q.max()) + int(rng.integers(0, block))   # >= max q, not a tile multiple
    counts_or_none = (i32(vc), i32(sc)) if counts else (None, None)
    return (i32(q), i32(kv), i32(V), i32(S), *counts_or_none, ctx)


# (block, B) pairs x causal x op: q up to 2100 and kv up to 4200 (past 2000/4000, spec §10.3).
SWEEP = [(bs, B, causal, mh) for bs in (32, 64, 128) for B in (1, 3) for causal in (True, False)
         for mh in (False, True)]


@pytest.mark.parametrize("block,B,causal,mh", SWEEP)
def test_random_sweep(torch, block, B, causal, mh):
    rng = np.random.default_rng(1000 * block + 10 * B + 2 * causal + mh)
    for i in range(4):
        small = i < 3
        case = random_case(rng, B, causal, block, q_max=300 if small else 2100,
                           kv_extra=300 if small else 2100, nnz_max=64, counts=mh)
        run_and_compare(torch, *case, block, causal, use_out=i % 2 == 0)


def test_random_sweep_global_memory_kernel(torch, unstaged):
    rng = np.random.default_rng(7)
    for i in range(8):
        block = (32, 64, 128)[i % 3]
        causal, mh = bool(i & 1), bool(i & 2)
        case = random_case(rng, 3, causal, block, 700, 700, 64, mh)
        run_and_compare(torch, *case, block, causal)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("mh", [False, True])
def test_large_nnz(torch, causal, mh):
    """NNZ_V 1000 / NNZ_S 6000 as in the benchmark, q up to 2100, kv up to 4200."""
    rng = np.random.default_rng(11 + 2 * causal + mh)
    case = random_case(rng, 1, causal, 64, 2100, 2100, None, counts=mh, H=2, nnz=(1000, 6000))
    run_and_compare(torch, *case, 64, causal)


def _bench_like_inputs(rng, H, ctx, nnz_v, nnz_s, near_diagonal):
    V = np.stack([np.sort(rng.choice(ctx, nnz_v, replace=False)) for _ in range(H)])[None]
    if near_diagonal:
        S = np.stack([np.sort(rng.choice(2 * nnz_s, nnz_s, replace=False))[::-1] for _ in range(H)])[None]
    else:
        S = np.stack([np.sort(rng.choice(ctx, nnz_s, replace=False))[::-1] for _ in range(H)])[None]
    S[..., -1] = 0
    return i32([ctx]), i32([ctx]), i32(V), i32(S)


@pytest.mark.parametrize("near_diagonal", [False, True])
def test_long_context_sampled_tiles(torch, near_diagonal):
    """ctx 32768 with the benchmark's NNZ: sampled tiles vs the reference loop; all tiles equal
    between plain / mergehead and between the shared- and global-memory kernels."""
    rng = np.random.default_rng(21 + near_diagonal)
    H, ctx = 4, 32768
    q, kv, V, S = _bench_like_inputs(rng, H, ctx, 1000, 6000, near_diagonal)
    args = dev(torch, q, kv, V, S)
    got = [host(g) for g in plain(*args, ctx, 64, 64)]
    counts = dev(torch, i32([1000] * H), i32([6000] * H))
    got_mh = [host(g) for g in mergehead(*args, *counts, ctx, 64, 64)]
    np.testing.assert_array_equal(got_mh[0], got[0])
    np.testing.assert_array_equal(got_mh[2], got[2])
    op_module._PLANS.clear()
    saved = op_module._smem_limit
    op_module._smem_limit = lambda device: 0
    try:
        got_global = [host(g) for g in plain(*args, ctx, 64, 64)]
    finally:
        op_module._smem_limit = saved
        op_module._PLANS.clear()
    for g, w in zip(got_global, got):
        np.testing.assert_array_equal(g, w)
    for h, r in [(0, 0), (0, 511), (1, 255), (2, 1), (3, 400)] + [
            (int(rng.integers(H)), int(rng.integers(512))) for _ in range(5)]:
        blocks, cols = ref._tile(V[0, h].tolist(), S[0, h].tolist(), ctx, ctx, r, 64, 64, True)
        bc, cc = got[0][0, h, r], got[2][0, h, r]
        assert got[1][0, h, r, :bc].tolist() == list(blocks), (h, r)
        assert got[3][0, h, r, :cc].tolist() == list(cols), (h, r)
        assert np.all(got[1][0, h, r, bc:] == 0) and np.all(got[3][0, h, r, cc:] == 0)
        nb, nc = len(blocks), len(cols)
        assert np.array_equal(got_mh[1][0, h, r, :nb], got[1][0, h, r, :nb])
        assert np.array_equal(got_mh[3][0, h, r, :nc], got[3][0, h, r, :nc])


def test_many_ranges_per_tile_sampled(torch):
    """ctx 131072 with uniform slashes (mean gap 22): late tiles have ~90 ranges, so the range
    chain (staged links, unresolved-link scans) and the 32-range batches are exercised; sampled
    tiles vs the reference loop, staged vs global-memory kernel on every count and sampled row."""
    rng = np.random.default_rng(131)
    H, ctx = 2, 131072
    q, kv, V, S = _bench_like_inputs(rng, H, ctx, 1000, 6000, False)
    args = dev(torch, q, kv, V, S)
    counts = dev(torch, i32([1000, 700]), i32([6000, 5000]))
    got = [host(g) for g in mergehead(*args, *counts, ctx, 64, 64)]
    op_module._PLANS.clear()
    saved = op_module._smem_limit
    op_module._smem_limit = lambda device: 0
    try:
        got_global = [host(g) for g in mergehead(*args, *counts, ctx, 64, 64)]
    finally:
        op_module._smem_limit = saved
        op_module._PLANS.clear()
    np.testing.assert_array_equal(got_global[0], got[0])
    np.testing.assert_array_equal(got_global[2], got[2])
    nv, ns = (1000, 700), (6000, 5000)
    for h, r in [(0, 2047), (1, 2047), (0, 1024), (1, 0)] + [
            (int(rng.integers(H)), int(rng.integers(2048))) for _ in range(6)]:
        blocks, cols = ref._tile(V[0, h, :nv[h]].tolist(), S[0, h, :ns[h]].tolist(), ctx, ctx, r,
                                 64, 64, True)
        bc, cc = got[0][0, h, r], got[2][0, h, r]
        assert got[1][0, h, r, :bc].tolist() == list(blocks), (h, r)
        assert got[3][0, h, r, :cc].tolist() == list(cols), (h, r)
        assert got_global[1][0, h, r, :bc].tolist() == list(blocks), (h, r)
        assert got_global[3][0, h, r, :cc].tolist() == list(cols), (h, r)


# ------------------------------------------------------------------------------ frameworks, streams, graphs

def test_allocates_outputs_with_the_inputs_framework_and_device(torch):
    q, kv, V, S = i32([256]), i32([256]), i32([[[0, 5, 70, 200]]]), i32([[[130, 64, 0]]])
    got = plain(*dev(torch, q, kv, V, S), 300, 64, 64)
    assert [tuple(g.shape) for g in got] == [(1, 1, 5), (1, 1, 5, 3), (1, 1, 5), (1, 1, 5, 4)]
    assert all(isinstance(g, torch.Tensor) and g.device == torch.device("cuda", 0) for g in got)
    assert host(got[0]).tolist() == [[[1, 2, 3, 3, 0]]]   # row 4 (past q) is zero-filled


def test_cupy_inputs_give_cupy_outputs_on_cupy_current_stream(torch):
    cupy = pytest.importorskip("cupy")
    rng = np.random.default_rng(5)
    q, kv, V, S, vc, sc, ctx = random_case(rng, 3, True, 64, 500, 500, 64, counts=True)
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        args = [cupy.asarray(x) for x in (q, kv, V, S, vc, sc)]
        got = mergehead(*args, ctx, 64, 64, True)
        stream.synchronize()
    assert all(isinstance(g, cupy.ndarray) and g.dtype == cupy.int32 for g in got)
    want, defined = ref.convert_vertical_slash_indexes_mergehead(q, kv, V, S, vc, sc, ctx, 64, 64,
                                                                 return_defined=True)
    for g, w, d in zip(got, want, defined):
        np.testing.assert_array_equal(cupy.asnumpy(g)[d], w[d])


def test_runs_on_torch_current_stream(torch):
    """Inputs written on a busy side stream and consumed there: a wrong stream would race."""
    rng = np.random.default_rng(9)
    q, kv, V, S, _, _, ctx = random_case(rng, 3, True, 64, 1500, 1500, 64, counts=False)
    want = ref.convert_vertical_slash_indexes(q, kv, V, S, ctx, 64, 64)
    src = dev(torch, q, kv, V, S)
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        bufs = [torch.zeros_like(x) for x in src]
        torch.cuda._sleep(5_000_000)
        for b, x in zip(bufs, src):
            b.copy_(x)
        got = plain(*bufs, ctx, 64, 64)
    side.synchronize()
    for g, w in zip(got, want):
        np.testing.assert_array_equal(host(g), w)


@pytest.mark.parametrize("mh", [False, True])
def test_cuda_graph_capture_with_out_and_replay_with_new_values(torch, mh):
    rng = np.random.default_rng(31 + mh)
    B, H, nnz_v, nnz_s, ctx, block = 3, 2, 40, 50, 900, 64

    def fresh():
        return random_case(rng, B, True, block, 900, 600, 64, counts=mh, H=H, nnz=(nnz_v, nnz_s))[:6]

    inputs = fresh()
    dinputs = dev(torch, *inputs)
    outs = poisoned_outs(torch, B, H, -(-ctx // block), nnz_v, nnz_s)
    call = (lambda: mergehead(*dinputs, ctx, block, block, True, out=outs)) if mh else \
        (lambda: plain(*dinputs[:4], ctx, block, block, True, out=outs))
    call()   # warm: compiled, loaded, plan cached
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        call()
    for _ in range(2):
        new = fresh()
        for d, x in zip(dinputs, new):
            if d is not None:
                d.copy_(torch.from_numpy(x))
        for o in outs:
            o.fill_(POISON)
        graph.replay()
        torch.cuda.synchronize()
        q, kv, V, S, vc, sc = new
        if mh:
            want, defined = ref.convert_vertical_slash_indexes_mergehead(q, kv, V, S, vc, sc, ctx, block,
                                                                         block, return_defined=True)
        else:
            want = ref.convert_vertical_slash_indexes(q, kv, V, S, ctx, block, block)
            defined = [np.ones(w.shape, bool) for w in want]
        for o, w, d in zip(outs, want, defined):
            g = host(o)
            np.testing.assert_array_equal(g[d], w[d])
            assert np.all(g[~d] == POISON)


def test_cuda_graph_capture_of_the_allocating_call(torch):
    q, kv, V, S = dev(torch, i32([256]), i32([256]), i32([[[0, 5, 70, 200]]]), i32([[[130, 64, 0]]]))
    plain(q, kv, V, S, 256, 64, 64)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        got = plain(q, kv, V, S, 256, 64, 64)
    S.copy_(torch.tensor([[[100, 64, 0]]], dtype=torch.int32))
    graph.replay()
    torch.cuda.synchronize()
    want = ref.convert_vertical_slash_indexes(i32([256]), i32([256]), i32([[[0, 5, 70, 200]]]),
                                              i32([[[100, 64, 0]]]), 256, 64, 64)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(host(g), w)


# ------------------------------------------------------------------------------ validation, robustness

def test_validate_checks_device_values(torch, monkeypatch):
    q, kv, V, S = dev(torch, i32([256]), i32([256]), i32([[[0, 5, 70, 200]]]), i32([[[130, 64, -5]]]))
    with pytest.raises(cupy_ops.CupyOpsValueError, match="slash_indexes.*>= 0"):
        plain(q, kv, V, S, 256, 64, 64, validate=True)
    with pytest.raises(cupy_ops.CupyOpsValueError, match="context_size"):
        plain(q, kv, V, S, 100, 64, 64, validate=True)
    counts = dev(torch, i32([0]), i32([3]))
    with pytest.raises(cupy_ops.CupyOpsValueError, match="vertical_indices_count"):
        mergehead(q, kv, V, S, *counts, 256, 64, 64, validate=True)
    monkeypatch.setenv("CUPY_OPS_VALIDATE", "1")
    with pytest.raises(cupy_ops.CupyOpsValueError, match="slash_indexes"):
        plain(q, kv, V, S, 256, 64, 64)
    monkeypatch.setenv("CUPY_OPS_VALIDATE", "0")
    plain(q, kv, V, S, 256, 64, 64)          # trusted: runs, bounded (below)


@pytest.mark.parametrize("mh", [False, True])
@pytest.mark.parametrize("causal", [True, False])
def test_invalid_values_without_validation_stay_in_bounds(torch, mh, causal):
    """Garbage that makes vLLM hang or overflow (negative / unsorted slashes, out-of-range
    verticals, counts 0 or too big, context_size < q, kv < q): the kernel finishes, never writes
    outside the outputs (guard zones around them stay poisoned) and counts stay in [0, NNZ]."""
    rng = np.random.default_rng(41 + 2 * mh + causal)
    specials = np.array([INT32_MAX, INT32_MIN, -1, -65, -200, 0, 1, 64, 5000], np.int64)
    for _ in range(6):
        B, H, nv, ns = 2, 3, int(rng.integers(1, 50)), int(rng.integers(1, 50))
        ctx, block = int(rng.integers(0, 600)), int(rng.choice([32, 64, 128]))
        rows = -(-ctx // block)

        def garbage(shape):
            x = rng.integers(-300, 3000, shape)
            pick = rng.random(shape) < 0.3
            x[pick] = rng.choice(specials, int(pick.sum()))
            return x.astype(np.int32)

        q, kv = garbage(B), garbage(B)
        V, S, vc, sc = garbage((B, H, nv)), garbage((B, H, ns)), garbage(H), garbage(H)
        if rng.random() < 0.5:
            V.sort(axis=-1)
            S = -np.sort(-S.astype(np.int64), axis=-1).astype(np.int32)
        sizes = [B * H * rows, B * H * rows * ns, B * H * rows, B * H * rows * nv]
        guard = 256
        arenas = [torch.full((n + 2 * guard,), POISON, dtype=torch.int32, device="cuda") for n in sizes]
        shapes = [(B, H, rows), (B, H, rows, ns), (B, H, rows), (B, H, rows, nv)]
        outs = tuple(a[guard:guard + n].view(s) for a, n, s in zip(arenas, sizes, shapes))
        args = dev(torch, q, kv, V, S)
        if mh:
            mergehead(*args, *dev(torch, vc, sc), ctx, block, block, causal, out=outs, validate=False)
        else:
            plain(*args, ctx, block, block, causal, out=outs, validate=False)
        torch.cuda.synchronize()
        for a, n in zip(arenas, sizes):
            a = host(a)
            assert np.all(a[:guard] == POISON) and np.all(a[guard + n:] == POISON)
        for counts, cap in ((host(outs[0]), ns), (host(outs[2]), nv)):
            ok = (counts >= 0) & (counts <= cap)
            if mh:
                ok |= counts == POISON
            assert ok.all()


def test_empty_inputs_return_without_launch(torch):
    q, kv = dev(torch, i32([]), i32([]))
    V, S = dev(torch, np.zeros((0, 2, 3), np.int32), np.zeros((0, 2, 4), np.int32))
    got = plain(q, kv, V, S, 128, 64, 64)
    assert [tuple(g.shape) for g in got] == [(0, 2, 2), (0, 2, 2, 4), (0, 2, 2), (0, 2, 2, 3)]
    q, kv, V, S = dev(torch, i32([5]), i32([5]), i32([[[1]]]), i32([[[0]]]))
    got = plain(q, kv, V, S, 0, 64, 64)
    assert got[1].shape == (1, 1, 0, 1)


def test_repeated_runs_are_bitwise_identical(torch):
    rng = np.random.default_rng(3)
    q, kv, V, S = _bench_like_inputs(rng, 2, 8192, 500, 3000, False)
    args = dev(torch, q, kv, V, S)
    first = [host(g) for g in plain(*args, 8192, 64, 64)]
    for _ in range(2):
        again = [host(g) for g in plain(*args, 8192, 64, 64)]
        assert all(np.array_equal(a, b) for a, b in zip(first, again))
