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
from cupy_ops.reference.merge_attn_states import merge_attn_states as merge_ref  # noqa: E402

SETTINGS = settings(max_examples=400, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])
FLOATS = ["float16", "float32", "float64", "int32", "int8"]
MERGE_ARGS = ("output", "prefix_output", "prefix_lse", "suffix_output", "suffix_lse", "output_lse")
RAN = {"merge_ok": 0, "merge_err": 0, "paged_ok": 0, "paged_err": 0}


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
    try:
        cupy_ops.merge_attn_states(*(args[n] for n in MERGE_ARGS))
    except (CupyOpsValueError, CupyOpsTypeError) as exc:
        msg = str(exc)
        assert msg.startswith("merge_attn_states: "), msg
        assert any(n in msg for n in MERGE_ARGS) or "num_heads" in msg, msg
        assert isinstance(exc, RuntimeError)
        RAN["merge_err"] += 1
        return
    RAN["merge_ok"] += 1
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
    try:
        cupy_ops.paged_attention_v1(out, q, kc, vc, kw["num_kv_heads"], kw["scale"], table, seq_lens,
                                    kw["block_size"], kw["max_seq_len"], kw["alibi_slopes"],
                                    kw["kv_cache_dtype"])
    except (CupyOpsValueError, CupyOpsTypeError) as exc:
        msg = str(exc)
        assert msg.startswith("paged_attention_v1: "), msg
        assert isinstance(exc, RuntimeError)
        RAN["paged_err"] += 1
        return
    assert mutation is None or mutation in ("negative_len", "bad_block_id"), \
        f"mutation {mutation} was accepted"
    RAN["paged_ok"] += 1
    want = paged_ref.paged_attention(q, kc, vc, Hkv, 0.3, table, seq_lens, BS, max(lens + [0]))
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)


def test_fuzzing_exercised_both_outcomes():
    """Runs after the two fuzz tests (file order): both accepted and rejected calls occurred."""
    assert RAN["merge_ok"] > 10 and RAN["merge_err"] > 10, RAN
    assert RAN["paged_ok"] > 10 and RAN["paged_err"] > 10, RAN
