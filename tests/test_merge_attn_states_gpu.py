"""GPU: merge_attn_states kernels against the float64 reference (skips without a GPU).

Every output starts poisoned (NaN) and every element is checked. Tolerance, per element, for a
result computed in fp32 and rounded once to the output dtype:
    |out - ref| <= u_dtype * |ref| + 8 * u_fp32 * (|prefix| + |suffix|) + tiny_dtype
(u = unit roundoff: 2^-24 fp32, 2^-11 fp16, 2^-8 bf16; the second term covers the fp32
exp/div/FMA chain, the third the subnormal floor of the dtype.)
"""

import numpy as np
import pytest

import cupy_ops
from cupy_ops.ops import merge_attn_states as op_module
from cupy_ops.reference.merge_attn_states import merge_attn_states as ref_merge

from .conftest import precompile, requires_gpu

pytestmark = requires_gpu

UNIT_ROUNDOFF = {"float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8}
TINY = {"float32": 1e-38, "float16": 6e-8, "bfloat16": 1e-38}


@pytest.fixture(scope="module", autouse=True)
def prebuilt():
    precompile(op_module.FAMILY, jobs=8)


def tdtype(torch, name):
    return getattr(torch, name)


def host(t):
    return t.detach().float().cpu().numpy().astype(np.float64)


def make_inputs(torch, T, H, D, dtype, gen, lse_special=0.0, layout="contiguous"):
    dt = tdtype(torch, dtype)
    if layout == "contiguous":
        x = torch.randn(T, H, D, generator=gen, device="cuda").to(dt)
        y = torch.randn(T, H, D, generator=gen, device="cuda").to(dt)
    elif layout == "padded":      # slices of bigger buffers: token and head strides are free
        x = torch.randn(T, H + 3, D + 8, generator=gen, device="cuda").to(dt)[:, 1:H + 1, :D]
        y = torch.randn(T + 2, H, D + 4, generator=gen, device="cuda").to(dt)[2:, :, 4:]
    elif layout == "qkv":         # one head group of a fused buffer, offset by one element
        buf = torch.randn(T, 2 * H * D + 1, generator=gen, device="cuda").to(dt)
        x = buf[:, 1:1 + H * D].unflatten(1, (H, D))
        y = buf[:, 1 + H * D:1 + 2 * H * D].unflatten(1, (H, D))
    p = torch.randn(H, T, generator=gen, device="cuda") * 3
    s = torch.randn(H, T, generator=gen, device="cuda") * 3
    if lse_special:
        specials = torch.tensor([float("inf"), float("-inf"), float("nan")], device="cuda")
        for lse in (p, s):
            pick = torch.rand(H, T, generator=gen, device="cuda") < lse_special
            which = torch.randint(0, 3, (H, T), generator=gen, device="cuda")
            lse[pick] = specials[which[pick]]
    return x, p, y, s


def assert_close(out, ref, x, y, dtype):
    got = host(out)
    u, tiny = UNIT_ROUNDOFF[dtype], TINY[dtype]
    tol = u * np.abs(ref) + 8 * 2.0**-24 * (np.abs(host(x)) + np.abs(host(y))) + tiny
    nan_ref = np.isnan(ref)
    assert np.array_equal(np.isnan(got), nan_ref), "NaN pattern differs (unwritten element?)"
    bad = ~nan_ref & ~(np.abs(got - ref) <= tol)
    assert not bad.any(), (f"{bad.sum()} elements off, first at {np.argwhere(bad)[0]}: "
                           f"got {got[bad][0]}, want {ref[bad][0]}")


def assert_lse_close(out_lse, ref_lse):
    got = host(out_lse)
    assert np.array_equal(np.isnan(got), np.isnan(ref_lse))
    assert np.array_equal(np.isinf(got), np.isinf(ref_lse))
    fin = np.isfinite(ref_lse)
    np.testing.assert_allclose(got[fin], ref_lse[fin], rtol=4e-7, atol=4e-7)


# Head sizes: vLLM's, the spec's sweep (48), and ones only our narrow-vector path serves
# (100: 8-byte vectors for 16-bit types, 33/1: element accesses). Token counts cross block and
# wave boundaries (1, one block, 613 odd, 4096) and reach 100k.
SWEEP = [
    (T, H, D, dtype)
    for dtype in ("float32", "float16", "bfloat16")
    for (T, H, D) in [(1, 1, 128), (7, 4, 32), (613, 48, 64), (256, 16, 128), (4096, 8, 256),
                      (100, 5, 80), (99, 3, 96), (37, 4, 112), (129, 2, 120), (64, 16, 192),
                      (33, 3, 100), (17, 7, 33), (5, 2, 1), (100_000, 4, 48)]
]


@pytest.mark.parametrize("T,H,D,dtype", SWEEP)
def test_matches_reference_sweep(torch, T, H, D, dtype):
    gen = torch.Generator(device="cuda").manual_seed(T * 1000 + H * 10 + D)
    x, p, y, s = make_inputs(torch, T, H, D, dtype, gen)
    out = torch.full((T, H, D), float("nan"), device="cuda", dtype=tdtype(torch, dtype))
    out_lse = torch.full((H, T), float("nan"), device="cuda")
    cupy_ops.merge_attn_states(out, x, p, y, s, out_lse)
    ref, ref_lse = ref_merge(host(x), host(p), host(y), host(s))
    assert_close(out, ref, x, y, dtype)
    assert_lse_close(out_lse, ref_lse)


@pytest.mark.parametrize("layout", ["padded", "qkv"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_strided_and_misaligned_views(torch, layout, dtype):
    T, H, D = 300, 6, 128
    gen = torch.Generator(device="cuda").manual_seed(7)
    x, p, y, s = make_inputs(torch, T, H, D, dtype, gen, layout=layout)
    big = torch.full((T, H + 1, D + 16), float("nan"), device="cuda", dtype=tdtype(torch, dtype))
    out = big[:, 1:, 16:]
    lse_big = torch.full((H, 2 * T), float("nan"), device="cuda")
    out_lse = lse_big[:, ::2]                          # strided LSE (vLLM needs contiguous)
    p_strided = torch.randn(T, H, generator=gen, device="cuda").t()  # transposed view
    cupy_ops.merge_attn_states(out, x, p_strided, y, s, out_lse)
    ref, ref_lse = ref_merge(host(x), host(p_strided), host(y), host(s))
    assert_close(out, ref, x, y, dtype)
    assert_lse_close(out_lse, ref_lse)
    assert torch.isnan(big[:, 0]).all() and torch.isnan(big[:, :, :16]).all(), "wrote outside the view"
    assert torch.isnan(lse_big[:, 1::2]).all(), "wrote outside the LSE view"


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("lse_base2", [False, True])
def test_special_lse_values_bit_exact(torch, dtype, lse_base2):
    """+inf/-inf/NaN LSEs at random places; spec §4.1 cases are bit-exact copies."""
    T, H, D = 2000, 4, 64
    gen = torch.Generator(device="cuda").manual_seed(11)
    x, p, y, s = make_inputs(torch, T, H, D, dtype, gen, lse_special=0.3)
    out = torch.full_like(x, float("nan"))
    out_lse = torch.full((H, T), float("nan"), device="cuda")
    cupy_ops.merge_attn_states(out, x, p, y, s, out_lse, lse_base2=lse_base2)
    ref, ref_lse = ref_merge(host(x), host(p), host(y), host(s), lse_base2=lse_base2)
    assert_close(out, ref, x, y, dtype)
    assert_lse_close(out_lse, ref_lse)
    pl, sl = host(p).T, host(s).T
    pe = np.where(np.isinf(pl), -np.inf, pl)
    se = np.where(np.isinf(sl), -np.inf, sl)
    both_empty = np.fmax(pe, se) == -np.inf
    prefix_only = (se == -np.inf) & np.isfinite(pe)
    suffix_only = (pe == -np.inf) & np.isfinite(se)
    bits = {"float32": torch.int32, "float16": torch.int16, "bfloat16": torch.int16}[dtype]
    ob, xb, yb = (t.view(bits).cpu().numpy() for t in (out, x, y))
    assert both_empty.any() and prefix_only.any() and suffix_only.any()
    assert np.array_equal(ob[both_empty | prefix_only], xb[both_empty | prefix_only])
    assert np.array_equal(ob[suffix_only], yb[suffix_only])


def test_zero_weight_side_nan_data_does_not_propagate(torch):
    T, H, D = 64, 2, 128
    x = torch.full((T, H, D), float("nan"), device="cuda", dtype=torch.bfloat16)
    y = torch.randn(T, H, D, device="cuda").bfloat16()
    p = torch.full((H, T), float("-inf"), device="cuda")
    s = torch.randn(H, T, device="cuda")
    out = torch.full_like(x, 7.0)
    cupy_ops.merge_attn_states(out, x, p, y, s)
    assert torch.equal(out.view(torch.int16), y.view(torch.int16))


@pytest.mark.parametrize("alias", ["prefix", "suffix"])
def test_in_place_output_aliasing_an_input(torch, alias):
    T, H, D = 1000, 8, 128
    gen = torch.Generator(device="cuda").manual_seed(3)
    x, p, y, s = make_inputs(torch, T, H, D, "float16", gen)
    ref, _ = ref_merge(host(x), host(p), host(y), host(s))
    x0, y0 = x.clone(), y.clone()
    out = x if alias == "prefix" else y
    cupy_ops.merge_attn_states(out, x, p, y, s)
    assert_close(out, ref, x0, y0, "float16")


def test_no_output_lse_leaves_lse_buffers_alone(torch):
    T, H, D = 100, 4, 64
    gen = torch.Generator(device="cuda").manual_seed(5)
    x, p, y, s = make_inputs(torch, T, H, D, "bfloat16", gen)
    p0, s0 = p.clone(), s.clone()
    cupy_ops.merge_attn_states(torch.empty_like(x), x, p, y, s)
    assert torch.equal(p, p0) and torch.equal(s, s0)


def test_repeated_runs_are_bitwise_identical(torch):
    T, H, D = 3000, 16, 128
    gen = torch.Generator(device="cuda").manual_seed(9)
    x, p, y, s = make_inputs(torch, T, H, D, "bfloat16", gen, lse_special=0.05)
    outs = []
    for _ in range(3):
        out = torch.full_like(x, float("nan"))
        cupy_ops.merge_attn_states(out, x, p, y, s)
        outs.append(out.view(torch.int16))
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[1], outs[2])


def test_runs_on_torch_current_stream(torch):
    """Inputs produced on a side stream and consumed there without a device-wide sync."""
    T, H, D = 20000, 8, 128
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        x = torch.randn(T, H, D, device="cuda").half()
        y = torch.randn(T, H, D, device="cuda").half()
        p = torch.randn(H, T, device="cuda")
        s = torch.randn(H, T, device="cuda")
        out = torch.full_like(x, float("nan"))
        torch.cuda._sleep(2_000_000)  # keep the side stream busy: a wrong stream would race
        x.mul_(2.0)
        cupy_ops.merge_attn_states(out, x, p, y, s)
    side.synchronize()
    ref, _ = ref_merge(host(x), host(p), host(y), host(s))
    assert_close(out, ref, x, y, "float16")


def test_cupy_arrays_on_cupy_current_stream(torch):
    cupy = pytest.importorskip("cupy")
    T, H, D = 500, 4, 96
    rng = cupy.random.default_rng(1)
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        x = rng.standard_normal((T, H, D), dtype=cupy.float32)
        y = rng.standard_normal((T, H, D), dtype=cupy.float32)
        p = rng.standard_normal((H, T), dtype=cupy.float32)
        s = rng.standard_normal((H, T), dtype=cupy.float32)
        out = cupy.full((T, H, D), cupy.nan, dtype=cupy.float32)
        cupy_ops.merge_attn_states(out, x, p, y, s)
        stream.synchronize()
    ref, _ = ref_merge(cupy.asnumpy(x), cupy.asnumpy(p), cupy.asnumpy(y), cupy.asnumpy(s))
    tol = 2.0**-24 * np.abs(ref) + 8 * 2.0**-24 * (np.abs(cupy.asnumpy(x)) + np.abs(cupy.asnumpy(y)))
    assert np.all(np.abs(cupy.asnumpy(out) - ref) <= tol)


def test_cuda_graph_capture_and_replay_with_new_values(torch):
    T, H, D = 512, 8, 128
    gen = torch.Generator(device="cuda").manual_seed(13)
    x, p, y, s = make_inputs(torch, T, H, D, "bfloat16", gen)
    out = torch.empty_like(x)
    out_lse = torch.empty(H, T, device="cuda")
    cupy_ops.merge_attn_states(out, x, p, y, s, out_lse)  # warm: compiled and loaded
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        cupy_ops.merge_attn_states(out, x, p, y, s, out_lse)
    for seed in (1, 2):
        g = torch.Generator(device="cuda").manual_seed(seed)
        x2, p2, y2, s2 = make_inputs(torch, T, H, D, "bfloat16", g)
        x.copy_(x2), p.copy_(p2), y.copy_(y2), s.copy_(s2)
        out.fill_(float("nan")), out_lse.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        ref, ref_lse = ref_merge(host(x), host(p), host(y), host(s))
        assert_close(out, ref, x, y, "bfloat16")
        assert_lse_close(out_lse, ref_lse)


def test_wrong_device_mix_is_rejected(torch):
    x = torch.randn(4, 2, 8, device="cuda")
    p = torch.randn(2, 4)  # host
    with pytest.raises(cupy_ops.CupyOpsValueError, match="prefix_lse is on the host"):
        cupy_ops.merge_attn_states(torch.empty_like(x), x, p, x, p.cuda())


@pytest.mark.large
def test_more_than_2_pow_31_elements(torch):
    """Token offsets pass 2^31 elements: 64-bit indexing, checked on sampled tokens."""
    H, D = 32, 128
    T = 2**31 // (H * D) + 1000
    x = torch.randn(T, H, D, device="cuda", dtype=torch.bfloat16)
    y = torch.randn(T, H, D, device="cuda", dtype=torch.bfloat16)
    p = torch.randn(H, T, device="cuda")
    s = torch.randn(H, T, device="cuda")
    out = torch.full_like(x, float("nan"))
    cupy_ops.merge_attn_states(out, x, p, y, s)
    idx = torch.cat([torch.arange(0, 10), torch.randint(0, T, (300,)), torch.arange(T - 10, T)]).cuda()
    ref, _ = ref_merge(host(x[idx]), host(p[:, idx]), host(y[idx]), host(s[:, idx]))
    assert_close(out[idx], ref, x[idx], y[idx], "bfloat16")


def test_cached_plans_follow_new_views_and_do_not_keep_tensors_alive(torch):
    import gc
    import weakref
    T, H, D = 300, 4, 64
    gen = torch.Generator(device="cuda").manual_seed(21)
    x, p, y, s = make_inputs(torch, T, H, D, "float16", gen)
    out = torch.full_like(x, float("nan"))
    cupy_ops.merge_attn_states(out, x, p, y, s)
    # Same storage, other views: a fresh plan each, never the cached one.
    half = T // 2
    out2 = torch.full_like(x, float("nan"))
    cupy_ops.merge_attn_states(out2[:half], x[:half], p[:, :half], y[:half], s[:, :half])
    ref, _ = ref_merge(host(x), host(p), host(y), host(s))
    assert_close(out, ref, x, y, "float16")
    assert_close(out2[:half], ref[:half], x[:half], y[:half], "float16")
    assert torch.isnan(out2[half:]).all()
    probe = torch.empty_like(x)
    ref_probe = weakref.ref(probe)
    cupy_ops.merge_attn_states(probe, x, p, y, s)
    del probe
    gc.collect()
    assert ref_probe() is None, "a cached launch plan keeps the output tensor alive"
