"""CPU: property-based fuzzing of the ops' argument handling (issue #7, first part).

Every generated call must either run correctly (checked against the float64 reference) or raise
one of our documented exceptions with a message that starts with the op's name and names an
argument. Any other exception, or a wrong answer, fails. The NumPy path runs the same validation
as the GPU path, so this covers the checks a GPU call makes before launching.
"""

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import cupy_ops  # noqa: E402
from cupy_ops import CupyOpsTypeError, CupyOpsValueError  # noqa: E402
from cupy_ops.reference import paged_attention as paged_ref  # noqa: E402
from cupy_ops.reference import top_k_per_row as topk_ref  # noqa: E402
from cupy_ops.reference import vertical_slash as vs_ref  # noqa: E402
from cupy_ops.reference.merge_attn_states import merge_attn_states as merge_ref  # noqa: E402

SETTINGS = settings(max_examples=400, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])
FLOATS = ["float16", "float32", "float64", "int32", "int8"]
MERGE_ARGS = ("output", "prefix_output", "prefix_lse", "suffix_output", "suffix_lse", "output_lse")
RAN = {"merge_ok": 0, "merge_err": 0, "paged_ok": 0, "paged_err": 0, "topk_ok": 0, "topk_err": 0,
       "vs_ok": 0, "vs_err": 0}


def _rejected(op, kind, call, must_name=()):
    """Run call(): True if it raised our documented error (message starts with the op's name,
    names one of ``must_name`` when given, also a RuntimeError), False if it returned. Counts
    both outcomes in RAN under ``kind``."""
    try:
        call()
    except (CupyOpsValueError, CupyOpsTypeError) as exc:
        msg = str(exc)
        assert msg.startswith(op + ": "), msg
        assert not must_name or any(n in msg for n in must_name), msg
        assert isinstance(exc, RuntimeError)
        RAN[kind + "_err"] += 1
        return True
    RAN[kind + "_ok"] += 1
    return False


def _array(rng, shape, dtype, layout):
    """A random array of `shape`, possibly a strided or reversed view."""
    base = rng.standard_normal(tuple(max(n, 0) for n in shape)) * 3
    if layout == "padded" and len(shape) >= 1 and all(n > 0 for n in shape):
        big = rng.standard_normal(tuple(shape[:-1]) + (shape[-1] + 3,)) * 3
        return big[..., 1:1 + shape[-1]].astype(dtype)
    if layout == "reversed" and len(shape) >= 1 and all(n > 0 for n in shape):
        return base.astype(dtype)[::-1]
    if layout == "last_strided" and len(shape) >= 1 and all(n > 0 for n in shape):
        return np.repeat(base.astype(dtype), 2, axis=-1)[..., ::2]
    return base.astype(dtype)


@st.composite
def merge_calls(draw):
    T = draw(st.integers(0, 9))
    H = draw(st.integers(1, 4))
    D = draw(st.integers(1, 24))
    good = {"output": (T, H, D), "prefix_output": (T, H, D), "suffix_output": (T, H, D),
            "prefix_lse": (H, T), "suffix_lse": (H, T), "output_lse": (H, T)}
    data_dtype = draw(st.sampled_from(["float16", "float32"]))
    shapes, dtypes, layouts = {}, {}, {}
    for name in MERGE_ARGS:
        wrong_shape = draw(st.integers(0, 9)) == 0
        shape = good[name]
        if wrong_shape:
            shape = draw(st.sampled_from([shape[:-1], shape + (1,), tuple(n + 1 for n in shape)]))
        shapes[name] = shape
        default = data_dtype if name.endswith("output") else "float32"
        dtypes[name] = draw(st.sampled_from(FLOATS)) if draw(st.integers(0, 9)) == 0 else default
        layouts[name] = draw(st.sampled_from(["plain"] * 6 + ["padded", "reversed", "last_strided"]))
    drop_output_lse = draw(st.booleans())
    not_an_array = draw(st.sampled_from([None] * 12 + list(MERGE_ARGS[:5])))
    seed = draw(st.integers(0, 2**31))
    return shapes, dtypes, layouts, drop_output_lse, not_an_array, seed


@SETTINGS
@given(merge_calls())
def test_merge_attn_states_arguments(call):
    shapes, dtypes, layouts, drop_output_lse, not_an_array, seed = call
    rng = np.random.default_rng(seed)
    args = {n: _array(rng, shapes[n], dtypes[n], layouts[n]) for n in MERGE_ARGS}
    if drop_output_lse:
        args["output_lse"] = None
    if not_an_array:
        args[not_an_array] = args[not_an_array].tolist()
    inputs = {n: (None if a is None or isinstance(a, list) else a.copy()) for n, a in args.items()}
    if _rejected("merge_attn_states", "merge",
                 lambda: cupy_ops.merge_attn_states(*(args[n] for n in MERGE_ARGS)),
                 must_name=MERGE_ARGS + ("num_heads",)):
        return
    out = args["output"]
    want, want_lse = merge_ref(inputs["prefix_output"], inputs["prefix_lse"], inputs["suffix_output"],
                               inputs["suffix_lse"])
    np.testing.assert_array_equal(out, want.astype(out.dtype))
    if args["output_lse"] is not None:
        np.testing.assert_array_equal(args["output_lse"], want_lse.astype(np.float32))


@st.composite
def paged_calls(draw):
    S = draw(st.integers(0, 3))
    Hkv = draw(st.integers(1, 2))
    group = draw(st.integers(1, 3))
    Hq = Hkv * group
    D = draw(st.sampled_from([8, 16, 24, 32, 12]))
    BS = draw(st.sampled_from([1, 2, 4, 8, 16, 3]))
    lens = [draw(st.integers(0, 40)) for _ in range(S)]
    mutation = draw(st.sampled_from(
        [None] * 8 + ["num_kv_heads", "block_size", "kv_cache_dtype", "scale", "max_seq_len",
                      "seq_lens_dtype", "table_dtype", "out_shape", "cache_heads", "table_rows",
                      "alibi_shape", "negative_len", "bad_block_id"]))
    seed = draw(st.integers(0, 2**31))
    return S, Hq, Hkv, D, BS, lens, mutation, seed


@SETTINGS
@given(paged_calls())
def test_paged_attention_v1_arguments(call):
    S, Hq, Hkv, D, BS, lens, mutation, seed = call
    rng = np.random.default_rng(seed)
    bs = BS if BS & (BS - 1) == 0 else 4
    blocks = [-(-n // bs) for n in lens]
    nb = sum(blocks) + 1
    x = 4
    kc = rng.standard_normal((nb, Hkv, max(D // x, 1), bs, x)).astype(np.float32)
    vc = rng.standard_normal((nb, Hkv, D, bs)).astype(np.float32)
    table = np.zeros((S, max(blocks + [1])), np.int32)
    pos = 0
    for s, n in enumerate(blocks):
        table[s, :n] = np.arange(pos, pos + n)
        pos += n
    q = rng.standard_normal((S, Hq, D)).astype(np.float32)
    out = np.full((S, Hq, D), np.nan, np.float32)
    seq_lens = np.array(lens, np.int32)
    kw = dict(num_kv_heads=Hkv, scale=0.3, block_size=BS, max_seq_len=max(lens + [0]),
              kv_cache_dtype="auto", alibi_slopes=None)
    if mutation == "num_kv_heads":
        kw["num_kv_heads"] = Hq + 1
    elif mutation == "block_size":
        kw["block_size"] = 3
    elif mutation == "kv_cache_dtype":
        kw["kv_cache_dtype"] = "int4"
    elif mutation == "scale":
        kw["scale"] = "big"
    elif mutation == "max_seq_len":
        kw["max_seq_len"] = -1
    elif mutation == "seq_lens_dtype":
        seq_lens = seq_lens.astype(np.int64)
    elif mutation == "table_dtype":
        table = table.astype(np.int64)
    elif mutation == "out_shape":
        out = out[:, :, :-1] if D > 1 else out[:0]
    elif mutation == "cache_heads":
        kc = np.concatenate([kc, kc], axis=1)
    elif mutation == "table_rows":
        table = table[:-1] if S else np.zeros((1, 1), np.int32)
    elif mutation == "alibi_shape":
        kw["alibi_slopes"] = np.zeros(Hq + 1, np.float32)
    elif mutation == "negative_len" and S:
        seq_lens[0] = -5
    elif mutation == "bad_block_id" and S and blocks[0]:
        table[0, 0] = nb + 7
    if _rejected("paged_attention_v1", "paged", lambda: cupy_ops.paged_attention_v1(
            out, q, kc, vc, kw["num_kv_heads"], kw["scale"], table, seq_lens, kw["block_size"],
            kw["max_seq_len"], kw["alibi_slopes"], kw["kv_cache_dtype"])):
        return
    assert mutation is None or mutation in ("negative_len", "bad_block_id"), \
        f"mutation {mutation} was accepted"
    want = paged_ref.paged_attention(q, kc, vc, Hkv, 0.3, table, seq_lens, BS, max(lens + [0]))
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)


TOPK_ALWAYS_BAD = ("logits_dtype", "logits_rank", "range_dtype", "indices_dtype", "indices_narrow",
                   "num_rows_big", "num_rows_negative", "top_k_zero", "top_k_huge", "stride_huge",
                   "not_an_array", "float_scalar")
TOPK_MUTATIONS = ["logits_dtype", "logits_rank", "range_dtype", "range_short", "indices_dtype",
                  "indices_narrow", "indices_rows", "num_rows_big", "num_rows_negative", "top_k_zero",
                  "top_k_huge", "stride_huge", "end_before_start", "end_past_logits",
                  "negative_start", "not_an_array", "float_scalar", "aliasing"]


@st.composite
def topk_calls(draw):
    R = draw(st.integers(0, 4))
    N = draw(st.integers(1, 300))
    K = draw(st.integers(1, 80))
    decode = draw(st.booleans())
    next_n = draw(st.integers(1, 3))
    mutation = draw(st.sampled_from([None] * 10 + TOPK_MUTATIONS))
    transposed = draw(st.integers(0, 4)) == 0
    seed = draw(st.integers(0, 2**31))
    return R, N, K, decode, next_n, mutation, transposed, seed


@SETTINGS
@given(topk_calls())
def test_top_k_per_row_arguments(call):
    R, N, K, decode, next_n, mutation, transposed, seed = call
    rng = np.random.default_rng(seed)
    op = "top_k_per_row_decode" if decode else "top_k_per_row_prefill"
    logits = rng.standard_normal((N, R)).astype(np.float32).T if transposed else \
        rng.standard_normal((R, N)).astype(np.float32)
    starts = rng.integers(0, N + 1, R).astype(np.int32)
    ends = (starts + rng.integers(0, N + 1, R)).clip(max=N).astype(np.int32)
    batch = -(-R // next_n)
    seq_lens = rng.integers(0, N + 1, max(batch, 0)).astype(np.int32)
    idx = np.full((R, K), -7, np.int32)
    num_rows, s0, s1, k = R, logits.strides[0] // 4, logits.strides[1] // 4, K
    if mutation == "logits_dtype":
        logits = logits.astype(np.float64)
    elif mutation == "logits_rank":
        logits = logits.reshape(-1)
    elif mutation == "range_dtype":
        starts, seq_lens = starts.astype(np.int64), seq_lens.astype(np.int64)
    elif mutation == "range_short" and R:
        starts, seq_lens = starts[:-1], seq_lens[:0]
    elif mutation == "indices_dtype":
        idx = idx.astype(np.int64)
    elif mutation == "indices_narrow":
        idx = idx[:, :-1]
    elif mutation == "indices_rows" and R:
        idx = idx[:-1]
    elif mutation == "num_rows_big":
        num_rows = R + 1
    elif mutation == "num_rows_negative":
        num_rows = -1
    elif mutation == "top_k_zero":
        k = 0
    elif mutation == "top_k_huge":
        k = 5000
    elif mutation == "stride_huge":
        s0 = 2**31
    elif mutation == "end_before_start" and R and not decode:
        starts[0], ends[0] = 5, 2
    elif mutation == "end_past_logits" and R:
        ends[0], seq_lens[0] = N + 3, N + 3
    elif mutation == "negative_start" and R:
        starts[0], seq_lens[0] = -1, -1
    elif mutation == "not_an_array":
        idx = idx.tolist()
    elif mutation == "float_scalar":
        s1 = 1.0
    elif mutation == "aliasing" and R and not decode:
        starts = idx[:, 0]
    if decode:
        call = lambda: cupy_ops.top_k_per_row_decode(logits, next_n, seq_lens, idx,  # noqa: E731
                                                     num_rows, s0, s1, k)
    else:
        call = lambda: cupy_ops.top_k_per_row_prefill(logits, starts, ends, idx,  # noqa: E731
                                                      num_rows, s0, s1, k)
    if _rejected(op, "topk", call):
        return
    assert mutation not in TOPK_ALWAYS_BAD, f"mutation {mutation} was accepted"
    # Accepted: the reference (which validates everything) must accept it too, with this answer.
    if decode:
        want = topk_ref.top_k_per_row_decode(logits, next_n, seq_lens, num_rows, s0, s1, k)
    else:
        want = topk_ref.top_k_per_row_prefill(logits, starts, ends, num_rows, s0, s1, k)
    np.testing.assert_array_equal(idx[:num_rows, :k], want)


@st.composite
def vs_calls(draw):
    B = draw(st.integers(1, 2))
    H = draw(st.integers(1, 2))
    ctx = draw(st.integers(1, 300))
    nv, ns = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    bm = draw(st.sampled_from([32, 64, 128]))
    mergehead = draw(st.booleans())
    mutation = draw(st.sampled_from(
        [None] * 8 + ["dtype", "bm_ne_bn", "bm_odd", "rank", "nnz_zero", "ctx_small", "unsorted",
                      "vertical_past_kv", "count_zero", "causal_type", "batch_mismatch"]))
    seed = draw(st.integers(0, 2**31))
    return B, H, ctx, nv, ns, bm, mergehead, mutation, seed


@SETTINGS
@given(vs_calls())
def test_vertical_slash_arguments(call):
    B, H, ctx, nv, ns, bm, mergehead, mutation, seed = call
    rng = np.random.default_rng(seed)
    op = "convert_vertical_slash_indexes_mergehead" if mergehead else "convert_vertical_slash_indexes"
    q = rng.integers(1, ctx + 1, B).astype(np.int32)
    kv = q + rng.integers(0, 20, B).astype(np.int32)
    v = np.sort(np.stack([[rng.integers(0, int(kv[b]), nv) for _ in range(H)] for b in range(B)]),
                -1).astype(np.int32)
    sl = -np.sort(-np.stack([[rng.integers(0, int(kv[b]), ns) for _ in range(H)] for b in range(B)]),
                  -1).astype(np.int32)
    vc = rng.integers(1, nv + 1, H).astype(np.int32)
    sc = rng.integers(1, ns + 1, H).astype(np.int32)
    bn, causal = bm, True
    if mutation == "dtype":
        v = v.astype(np.int64)
    elif mutation == "bm_ne_bn":
        bn = bm * 2
    elif mutation == "bm_odd":
        bm = bn = 48
    elif mutation == "rank":
        sl = sl[0]
    elif mutation == "nnz_zero":
        v = v[..., :0]
    elif mutation == "ctx_small":
        ctx = int(q.max()) - 1
    elif mutation == "unsorted" and ns > 1:
        sl = sl[..., ::-1].copy()
    elif mutation == "vertical_past_kv":
        v[..., -1] = kv.max() + 5
    elif mutation == "count_zero":
        vc[0] = 0
    elif mutation == "causal_type":
        causal = "yes"
    elif mutation == "batch_mismatch":
        kv = np.concatenate([kv, kv])
    extra = (vc, sc) if mergehead else ()
    fn = cupy_ops.convert_vertical_slash_indexes_mergehead if mergehead else \
        cupy_ops.convert_vertical_slash_indexes
    got = []
    if _rejected(op, "vs", lambda: got.extend(fn(q, kv, v, sl, *extra, ctx, bm, bn, causal))):
        return
    assert mutation not in ("dtype", "bm_ne_bn", "bm_odd", "rank", "nnz_zero", "ctx_small",
                            "causal_type", "batch_mismatch"), f"mutation {mutation} was accepted"
    # Accepted: the reference (which validates every value it reads) must agree, bit for bit.
    ref = vs_ref.convert_vertical_slash_indexes_mergehead if mergehead else \
        vs_ref.convert_vertical_slash_indexes
    want = ref(q, kv, v, sl, *extra, ctx, bm, bn, causal)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_fuzzing_exercised_both_outcomes():
    """Runs after the fuzz tests (file order): both accepted and rejected calls occurred."""
    print("fuzzed calls:", RAN)
    assert RAN["merge_ok"] > 10 and RAN["merge_err"] > 10, RAN
    assert RAN["paged_ok"] > 10 and RAN["paged_err"] > 10, RAN
    assert RAN["topk_ok"] > 10 and RAN["topk_err"] > 10, RAN
    assert RAN["vs_ok"] > 10 and RAN["vs_err"] > 10, RAN
