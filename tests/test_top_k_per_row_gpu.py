"""GPU: top_k_per_row_prefill / top_k_per_row_decode against the NumPy oracle (skips without GPU).

Our kernel is deterministic: it picks the oracle's set (ties at the k-th score go to the lowest
columns) and writes it in ascending column order. So every row is compared exactly:
``L <= K`` rows with the oracle as is, longer rows with the oracle row sorted. On a mismatch,
the spec §6 checker (reference.check_top_k_per_row) runs first so the message says what rule
broke (duplicate, out of range, a score below the k-th...). The indices buffer is poisoned
before each call; slots outside ``[:numRows, :topK]`` must keep the poison.
"""

import numpy as np
import pytest

import cupy_ops
from cupy_ops.ops import top_k_per_row as op_module
from cupy_ops.reference import top_k_per_row as ref

from .conftest import precompile, requires_gpu

pytestmark = requires_gpu

POISON = -7


@pytest.fixture(scope="module", autouse=True)
def prebuilt():
    precompile(op_module.FAMILY, jobs=8)


@pytest.fixture(params=[None, 1, 2, 4, 8], ids=["auto", "C1", "C2", "C4", "C8"])
def cluster(request, monkeypatch):
    """Run a test with the dispatcher's cluster size, or a forced one (every variant is tested)."""
    if request.param is not None:
        monkeypatch.setattr(op_module, "launch_shape", lambda *a, **k: request.param)
    op_module._PLANS.clear()
    yield request.param
    op_module._PLANS.clear()


def host(t):
    return t.detach().cpu().numpy()


def expected(oracle, lengths, top_k):
    out = oracle.copy()
    long_rows = lengths > top_k
    out[long_rows] = np.sort(out[long_rows], axis=1)
    return out


def assert_rows(got_full, oracle, lengths, scores, top_k, num_rows):
    """Exact comparison, poison outside the written block, and the spec checker on failure."""
    got = got_full[:num_rows, :top_k]
    outside = got_full.copy()
    outside[:num_rows, :top_k] = POISON
    assert (outside == POISON).all(), "a slot outside [:numRows, :topK] was written"
    want = expected(oracle, lengths, top_k)
    if not np.array_equal(got, want):
        ref.check_top_k_per_row(scores, got, top_k)  # names the broken rule, if any
        bad = np.flatnonzero((got != want).any(axis=1))
        r = int(bad[0])
        j = int(np.flatnonzero(got[r] != want[r])[0])
        raise AssertionError(f"{bad.size} rows differ from the canonical answer; row {r} "
                             f"(L={lengths[r]}) slot {j}: got {got[r, j]}, want {want[r, j]}")


def run_prefill(torch, logits, starts, ends, top_k, *, num_rows=None, stride0=None, stride1=None,
                extra_cols=0):
    num_rows = logits.shape[0] if num_rows is None else num_rows
    stride0 = logits.stride(0) if stride0 is None else stride0
    stride1 = logits.stride(1) if stride1 is None else stride1
    idx = torch.full((num_rows + 1, top_k + extra_cols), POISON, dtype=torch.int32, device="cuda")
    st = torch.as_tensor(starts, dtype=torch.int32, device="cuda")
    en = torch.as_tensor(ends, dtype=torch.int32, device="cuda")
    cupy_ops.top_k_per_row_prefill(logits, st, en, idx, num_rows, stride0, stride1, top_k)
    torch.cuda.synchronize()
    s = np.asarray(starts, dtype=np.int32)
    e = np.asarray(ends, dtype=np.int32)
    base = host_logits(logits)
    oracle = ref.top_k_per_row_prefill(base, s, e, num_rows, stride0, stride1, top_k)
    scores = ref.prefill_row_scores(base, s, e, num_rows, stride0, stride1)
    assert_rows(host(idx), oracle, (e - s)[:num_rows].astype(np.int64), scores, top_k, num_rows)
    return host(idx)


def host_logits(t):
    """float32 host copy of logits with the tensor's own strides (the oracle then addresses it
    through stride0/stride1 exactly like the kernel, padded rows and transposed views included)."""
    n = t.untyped_storage().nbytes() // t.element_size() - t.storage_offset()
    flat = host(t.as_strided((n,), (1,)).float())
    return np.lib.stride_tricks.as_strided(flat, shape=tuple(t.shape),
                                           strides=tuple(4 * st for st in t.stride()))


def run_decode(torch, logits, next_n, seq_lens, top_k, *, num_rows=None):
    num_rows = logits.shape[0] if num_rows is None else num_rows
    idx = torch.full((num_rows + 1, top_k), POISON, dtype=torch.int32, device="cuda")
    sl = torch.as_tensor(seq_lens, dtype=torch.int32, device="cuda")
    cupy_ops.top_k_per_row_decode(logits, next_n, sl, idx, num_rows, logits.stride(0),
                                  logits.stride(1), top_k)
    torch.cuda.synchronize()
    lg = host_logits(logits)
    sl_np = np.asarray(seq_lens, dtype=np.int32)
    oracle = ref.top_k_per_row_decode(lg, next_n, sl_np, num_rows, logits.stride(0),
                                      logits.stride(1), top_k)
    scores = ref.decode_row_scores(lg, next_n, sl_np, num_rows, logits.stride(0), logits.stride(1))
    ends = ref.decode_row_ends(next_n, sl_np, num_rows)
    assert_rows(host(idx), oracle, ends, scores, top_k, num_rows)


# ------------------------------------------------------------------------------ prefill sweeps

@pytest.mark.parametrize("top_k", [1, 512, 1024, 2048, 3000, 4096])
def test_prefill_lengths_around_k(torch, cluster, top_k):
    """L in {0, 1, K-1, K, K+1, 2K} at misaligned starts (spec §6 sweeps and reading rules)."""
    gen = torch.Generator(device="cuda").manual_seed(top_k)
    lengths = [0, 1, top_k - 1, top_k, top_k + 1, 2 * top_k, 3 * top_k + 5]
    starts = [0, 1, 3, 4097, 5, 2, 7]
    cols = max(s + n for s, n in zip(starts, lengths)) + 3
    logits = torch.randn(len(lengths), cols, device="cuda", generator=gen)
    run_prefill(torch, logits, starts, [s + n for s, n in zip(starts, lengths)], top_k)


def test_prefill_many_rows_varying_ranges(torch, cluster):
    """More rows than vLLM's 12288 insertion-sort limit, causal-style ranges."""
    gen = torch.Generator(device="cuda").manual_seed(1)
    rows, cols, top_k = 12300, 3000, 512
    logits = torch.randn(rows, cols, device="cuda", generator=gen)
    rng = np.random.default_rng(1)
    starts = rng.integers(0, 500, rows)
    ends = starts + rng.integers(0, cols - 500, rows)
    run_prefill(torch, logits, starts, ends, top_k)


def test_prefill_padded_stride0_and_transposed_view(torch, cluster):
    gen = torch.Generator(device="cuda").manual_seed(2)
    buf = torch.randn(6, 9000, device="cuda", generator=gen)
    padded = buf[:, :8000]                              # stride0 9000 > 8000 columns
    run_prefill(torch, padded, [0, 3, 1, 17, 0, 2], [8000, 7999, 5000, 6000, 2049, 2050], 2048)
    t = torch.randn(7000, 5, device="cuda", generator=gen).t()  # stride1 = 5
    run_prefill(torch, t, [0, 1, 2, 3, 4], [7000, 6999, 3000, 2100, 7000], 2048)


def test_prefill_indices_strides_and_wider_buffer(torch, cluster):
    """indices wider than topK: only the first topK columns are written (the rest keep poison)."""
    gen = torch.Generator(device="cuda").manual_seed(3)
    logits = torch.randn(3, 5000, device="cuda", generator=gen)
    run_prefill(torch, logits, [0, 10, 20], [5000, 4000, 700], 1024, extra_cols=13)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_prefill_half_precision_logits(torch, cluster, dtype):
    gen = torch.Generator(device="cuda").manual_seed(4)
    logits = torch.randn(4, 20000, device="cuda", generator=gen).to(getattr(torch, dtype))
    run_prefill(torch, logits, [0, 1, 2, 3], [20000, 19999, 9000, 4000], 2048)


def test_prefill_long_rows_stream_past_shared_memory(torch, cluster):
    """Rows longer than the shared-memory key cache: the rest is re-read from global memory."""
    gen = torch.Generator(device="cuda").manual_seed(5)
    logits = torch.randn(2, 420000, device="cuda", generator=gen)
    run_prefill(torch, logits, [0, 3], [420000, 419000], 2048)


# ------------------------------------------------------------------------------- tricky data

def _tricky_rows(torch, n, gen):
    """Rows (each length n) that stress ties, bin overflows and special values (spec §6)."""
    t = torch
    rand = lambda *s: t.rand(*s, device="cuda", generator=gen)  # noqa: E731
    rows = {}
    low10 = t.randint(0, 1024, (n,), device="cuda", generator=gen, dtype=t.int32)
    rows["10LSBits"] = (low10 | 0x3F900000).view(t.float32)
    rows["all_equal"] = t.full((n,), 0.5, device="cuda")
    rows["randint_0_10"] = t.randint(0, 10, (n,), device="cuda", generator=gen).float() / 10
    rows["kth_shared_by_5000"] = t.where(rand(n) < 0.1, rand(n) + 2, t.full((n,), 1.0, device="cuda"))
    over = 1.0 + rand(n) * 0.001
    over[:100] = 100.0
    rows["pass0_overflow_with_values_above"] = over
    edge = t.randn(n, device="cuda", generator=gen)
    edge[::7] = 70000.0 + rand(n)[::7] * 1e6      # above fp16's range
    edge[1::7] = rand(n)[1::7] * 1e-42             # denormals
    edge[2::7] = 0.0
    edge[3::7] = -0.0
    edge[4::7] = -1e-40
    rows["fp16_range_edges_and_zeros"] = edge
    ninf = t.randn(n, device="cuda", generator=gen)
    ninf[n // 4:] = float("-inf")                  # fewer finite than K for n < 4K/3... mixed
    rows["some_neg_inf"] = ninf
    rows["all_neg_inf"] = t.full((n,), float("-inf"), device="cuda")
    nan = t.randn(n, device="cuda", generator=gen)
    nan[::3] = float("nan")
    nan[1::5] = float("inf")
    rows["nan_and_inf"] = nan
    nan_all = t.full((n,), float("nan"), device="cuda")
    nan_all[::11] = float("-inf")
    rows["mostly_nan"] = nan_all
    rows["tiny_spread"] = 1.0 + t.arange(n, device="cuda").float() * 2**-23
    return rows


@pytest.mark.parametrize("n", [3000, 8192, 9000, 70000])
def test_tricky_values(torch, cluster, n):
    gen = torch.Generator(device="cuda").manual_seed(n)
    rows = _tricky_rows(torch, n, gen)
    logits = torch.stack(list(rows.values()))
    for top_k in (2048, 2999 if n == 3000 else 4096):
        run_prefill(torch, logits, [0] * len(rows), [n] * len(rows), top_k)


def test_short_path_capacity_and_tie_ranking(torch, cluster):
    """Rows at the short-slice path's capacity (SHORT_CAP elements per CTA after alignment; one
    element more takes the general path), with heavy ties so the selected ties spread over
    every thread of the CTA; 512- and 1024-thread CTAs (C1 forces 1024 threads on 40000
    columns)."""
    gen = torch.Generator(device="cuda").manual_seed(21)
    cap = op_module.SHORT_CAP
    logits = torch.randn(6, cap + 8, device="cuda", generator=gen)
    logits[3:] = torch.randint(0, 40, (3, cap + 8), device="cuda", generator=gen).float() / 8
    starts = [0, 1, 3, 0, 2, 5]
    lengths = [cap, cap, cap - 3, cap, cap - 1, cap - 100]
    run_prefill(torch, logits, starts, [s + n for s, n in zip(starts, lengths)], 2048)
    wide = torch.randint(0, 64, (6, 40000), device="cuda", generator=gen).float() / 16
    wide[:2] = torch.randn(2, 40000, device="cuda", generator=gen)
    run_decode(torch, wide, 1, [cap, cap - 1, 2 * cap, 9000, 2049, 40000], 4096)


def test_ties_across_cluster_ctas_take_lowest_columns(torch, cluster):
    """All-equal rows: the picks must be exactly columns 0..K-1, whichever CTA holds them."""
    logits = torch.full((3, 50000), 2.0, device="cuda")
    got = run_prefill(torch, logits, [0, 5, 1], [50000, 49000, 30000], 4096)
    assert (got[:3, :4096] == np.arange(4096)).all()


# ------------------------------------------------------------------------------- decode sweeps

@pytest.mark.parametrize("next_n", [1, 2, 4, 8])
def test_decode_next_n(torch, cluster, next_n):
    gen = torch.Generator(device="cuda").manual_seed(next_n)
    rng = np.random.default_rng(next_n)
    batch, cols, top_k = 5, 20000, 2048
    seq_lens = rng.integers(0, cols + 1, batch)
    seq_lens[0] = next_n - 1 if next_n > 1 else 0   # seq_len < next_n: negative ends -> all -1
    seq_lens[1] = cols
    seq_lens[2] = top_k + next_n // 2
    logits = torch.randn(batch * next_n, cols, device="cuda", generator=gen)
    run_decode(torch, logits, next_n, seq_lens, top_k)


def test_decode_2d_seq_lens(torch, cluster):
    gen = torch.Generator(device="cuda").manual_seed(11)
    rng = np.random.default_rng(11)
    logits = torch.randn(6, 9000, device="cuda", generator=gen)
    seq_lens = rng.integers(0, 9001, (3, 2))
    run_decode(torch, logits, 2, seq_lens, 1024)


@pytest.mark.parametrize("cols", [12287, 12288, 199999, 200000])
def test_decode_vllm_path_thresholds(torch, cols):
    gen = torch.Generator(device="cuda").manual_seed(cols)
    logits = torch.randn(4, cols, device="cuda", generator=gen)
    run_decode(torch, logits, 2, [cols, cols - 1000], 2048)


def test_decode_garbage_past_row_end_is_never_read(torch, cluster):
    """Columns past e hold NaN/+1e30 (spec §6 reading rules): none may be selected."""
    gen = torch.Generator(device="cuda").manual_seed(12)
    logits = torch.randn(4, 30000, device="cuda", generator=gen)
    logits[:, 10000::2] = 1e30
    logits[:, 10001::2] = float("nan")
    run_decode(torch, logits, 1, [10000, 9000, 2100, 10000], 2048)


@pytest.mark.parametrize("speculative", [True, False], ids=["spec", "own_length"])
def test_decode_misaligned_rows_both_layouts(torch, cluster, speculative, monkeypatch):
    """Rows at odd element offsets (stride0 = cols + 1), lengths from 0 to cols, laid out for
    logits.shape[1] before seq_lens is read (the kernel's spec_cols) or from each row's length."""
    monkeypatch.setattr(op_module, "SPECULATIVE_DECODE_LOADS", speculative)
    gen = torch.Generator(device="cuda").manual_seed(21)
    rng = np.random.default_rng(21)
    cols = 9001
    logits = torch.randn(7, cols + 1, device="cuda", generator=gen)[:, :cols]
    seq_lens = rng.integers(0, cols + 1, 7)
    seq_lens[:3] = [cols, 2049, 4097]
    run_decode(torch, logits, 1, seq_lens, 2048)


def test_decode_rows_longer_than_shape_are_laid_out_again(torch, cluster):
    """Unvalidated strides that let a row run past logits.shape[1] (through the next rows'
    memory): such a row gets its own layout, and its first loads are issued again."""
    gen = torch.Generator(device="cuda").manual_seed(22)
    logits = torch.randn(3, 4000, device="cuda", generator=gen)
    idx = torch.full((4, 2048), POISON, dtype=torch.int32, device="cuda")
    seq_lens = np.array([5000, 3000, 7999], dtype=np.int32)  # rows at stride0 = 2000
    sl = torch.as_tensor(seq_lens, device="cuda")
    cupy_ops.top_k_per_row_decode(logits, 1, sl, idx, 3, 2000, 1, 2048)
    torch.cuda.synchronize()
    lg = host_logits(logits)
    oracle = ref.top_k_per_row_decode(lg, 1, seq_lens, 3, 2000, 1, 2048)
    scores = ref.decode_row_scores(lg, 1, seq_lens, 3, 2000, 1)
    assert_rows(host(idx), oracle, ref.decode_row_ends(1, seq_lens, 3), scores, 2048, 3)


# ------------------------------------------------------------------- interop, streams, graphs

def test_cupy_inputs_and_rows_zero(torch):
    import cupy as cp
    rng = np.random.default_rng(13)
    scores = rng.standard_normal((3, 6000)).astype(np.float32)
    lg = cp.asarray(scores)
    st = cp.asarray([0, 1, 2], dtype=cp.int32)
    en = cp.asarray([6000, 5000, 100], dtype=cp.int32)
    idx = cp.full((3, 512), POISON, dtype=cp.int32)
    cupy_ops.top_k_per_row_prefill(lg, st, en, idx, 3, 6000, 1, 512)
    oracle = ref.top_k_per_row_prefill(scores, cp.asnumpy(st), cp.asnumpy(en), 3, 6000, 1, 512)
    assert np.array_equal(cp.asnumpy(idx), expected(oracle, np.array([6000, 4999, 98]), 512))
    before = idx.copy()
    cupy_ops.top_k_per_row_prefill(lg, st, en, idx, 0, 6000, 1, 512)  # no rows: a no-op
    assert (idx == before).all()


def test_current_stream_and_determinism(torch):
    gen = torch.Generator(device="cuda").manual_seed(14)
    logits = torch.randn(8, 40000, device="cuda", generator=gen)
    sl = torch.tensor([40000, 30000, 20000, 10000, 40000, 5000, 2500, 39999], dtype=torch.int32,
                      device="cuda")
    outs = []
    for _ in range(2):
        stream = torch.cuda.Stream()
        idx = torch.full((8, 2048), POISON, dtype=torch.int32, device="cuda")
        torch.cuda.synchronize()
        with torch.cuda.stream(stream):
            torch.cuda._sleep(2_000_000)  # a launch on another stream would run before this
            cupy_ops.top_k_per_row_decode(logits, 1, sl, idx, 8, 40000, 1, 2048)
        stream.synchronize()
        outs.append(host(idx))
    assert (outs[0] != POISON).all()
    assert np.array_equal(outs[0], outs[1]), "not bitwise deterministic"


def test_cuda_graph_capture_and_replay(torch):
    gen = torch.Generator(device="cuda").manual_seed(15)
    logits = torch.randn(4, 50000, device="cuda", generator=gen)
    sl = torch.tensor([50000, 20000, 3000, 100], dtype=torch.int32, device="cuda")
    idx = torch.full((4, 2048), POISON, dtype=torch.int32, device="cuda")
    cupy_ops.top_k_per_row_decode(logits, 1, sl, idx, 4, 50000, 1, 2048)  # compile + plan
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        cupy_ops.top_k_per_row_decode(logits, 1, sl, idx, 4, 50000, 1, 2048)
    for seed in (16, 17):
        logits.copy_(torch.randn(4, 50000, device="cuda",
                                 generator=torch.Generator(device="cuda").manual_seed(seed)))
        sl.copy_(torch.tensor([49000, 50000, 2049, 0], dtype=torch.int32))
        idx.fill_(POISON)
        graph.replay()
        torch.cuda.synchronize()
        want = ref.top_k_per_row_decode(host(logits), 1, host(sl), 4, 50000, 1, 2048)
        assert np.array_equal(host(idx), expected(want, np.array([49000, 50000, 2049, 0]), 2048))


def test_validate_option_rejects_bad_ranges(torch):
    logits = torch.randn(2, 1000, device="cuda")
    idx = torch.zeros(2, 16, dtype=torch.int32, device="cuda")
    st = torch.tensor([0, 0], dtype=torch.int32, device="cuda")
    en = torch.tensor([1000, 1001], dtype=torch.int32, device="cuda")
    with pytest.raises(cupy_ops.CupyOpsValueError, match="passes logits.shape"):
        cupy_ops.top_k_per_row_prefill(logits, st, en, idx, 2, 1000, 1, 16, validate=True)
    en = torch.tensor([10, 5], dtype=torch.int32, device="cuda")
    st = torch.tensor([0, 6], dtype=torch.int32, device="cuda")
    with pytest.raises(cupy_ops.CupyOpsValueError, match="rowEnds"):
        cupy_ops.top_k_per_row_prefill(logits, st, en, idx, 2, 1000, 1, 16, validate=True)
    sl = torch.tensor([-3], dtype=torch.int32, device="cuda")
    with pytest.raises(cupy_ops.CupyOpsValueError, match="seq_lens"):
        cupy_ops.top_k_per_row_decode(logits, 2, sl, idx, 2, 1000, 1, 16, validate=True)


def test_unvalidated_bad_ranges_stay_in_bounds(torch):
    """Without validation, ranges past logits are clamped: no out-of-bounds read or write."""
    buf = torch.randn(3, 4000, device="cuda")
    logits = buf[:2]
    idx = torch.full((3, 2048), POISON, dtype=torch.int32, device="cuda")
    st = torch.tensor([-50, 3000], dtype=torch.int32, device="cuda")
    en = torch.tensor([10**9, 100], dtype=torch.int32, device="cuda")
    cupy_ops.top_k_per_row_prefill(logits, st, en, idx, 2, 4000, 1, 2048)
    torch.cuda.synchronize()
    got = host(idx)
    # Row 0 is clamped to [0, 8000) (logits' memory); row 1 has a negative length: all -1.
    want0 = np.sort(ref.top_k_per_row_prefill(host(buf[:2]).reshape(1, -1), np.array([0], np.int32),
                                              np.array([8000], np.int32), 1, 4000, 1, 2048)[0])
    assert np.array_equal(got[0], want0)
    assert (got[1] == -1).all() and (got[2] == POISON).all()
