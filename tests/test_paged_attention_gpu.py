"""GPU: paged_attention_v1 / v2 against the float64 reference (skips without a GPU).

Inputs are O(1) random values (logits far from uniform, unlike vLLM's test), caches hold NaN in
every slot and block that must not be read (tail of the last block, blocks referenced only by
unused table columns), outputs start as NaN.

Tolerance per element, from the kernels' precision pipeline: q.k and the softmax run in fp32 on
exact inputs; the tensor-core path (16-bit queries) rounds each probability to its mma type
before P.V (as vLLM does: relative error u_P per term, so at most u_P * sum_t p_t |v_t|); the
result is rounded once to the output dtype; v2 also rounds each partition's result:
    |out - ref| <= u_T |ref| + (u_P + u_v2) * sum_t p_t |v_t| + 2e-5 max|V|
u: unit roundoff (fp32 2^-24, fp16 2^-11, bf16 2^-8); u_P = 0 on the fp32 (CUDA-core) path and
for fp8 caches the fp16 roundoff; sum_t p_t |v_t| is the reference run on |V|.
"""

import math

import numpy as np
import pytest

import cupy_ops
from cupy_ops.ops import paged_attention as pa
from cupy_ops.reference import paged_attention as ref

from .conftest import precompile, requires_gpu

pytestmark = requires_gpu

U = {"float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8}
FP8_TORCH = {"fp8": "float8_e4m3fn", "fp8_e4m3": "float8_e4m3fn", "fp8_e5m2": "float8_e5m2"}


@pytest.fixture(scope="module", autouse=True)
def prebuilt():
    precompile(pa.FAMILY, pa.GQA_FAMILY, pa.MMA_FAMILY, pa.MMA8_FAMILY, pa.MMA_PARTS_FAMILY, pa.REDUCE_FAMILY,
               jobs=16)


class Case:
    """A random paged cache with poison wherever the kernel must not read."""

    def __init__(self, torch, seq_lens, Hq, Hkv, D, BS, dtype="bfloat16", kv="auto", alibi=False,
                 seed=0, spare_cols=2, q_slice=False):
        g = torch.Generator(device="cuda").manual_seed(seed)
        self.torch, self.dtype, self.kv = torch, dtype, kv
        self.Hq, self.Hkv, self.D, self.BS = Hq, Hkv, D, BS
        self.seq_lens_list = list(seq_lens)
        S = len(seq_lens)
        dt = getattr(torch, dtype)
        blocks_per_seq = [math.ceil(L / BS) for L in seq_lens]
        max_blocks = max(blocks_per_seq + [0]) + spare_cols
        used = sum(blocks_per_seq)
        num_blocks = used + 3  # 3 extra blocks full of NaN, referenced only by unused columns
        fp8 = kv != "auto"
        x = 16 // (1 if fp8 else torch.empty(0, dtype=dt).element_size())
        kf = torch.randn(num_blocks, Hkv, D // x, BS, x, generator=g, device="cuda")
        vf = torch.randn(num_blocks, Hkv, D, BS, generator=g, device="cuda")
        if fp8:
            f8 = getattr(torch, FP8_TORCH[kv])
            self.key_cache = (kf * 2).to(f8).view(torch.uint8)
            self.value_cache = (vf * 2).to(f8).view(torch.uint8)
        else:
            self.key_cache, self.value_cache = kf.to(dt), vf.to(dt)
        perm = torch.randperm(used, generator=g, device="cuda").int()
        table = torch.full((S, max_blocks), used, dtype=torch.int32, device="cuda")
        pos = 0
        for s, nb in enumerate(blocks_per_seq):
            table[s, :nb] = perm[pos:pos + nb]
            table[s, nb:] = used + (s % 3)  # unused columns point at NaN blocks
            pos += nb
        self.block_tables = table
        self.seq_lens = torch.tensor(seq_lens, dtype=torch.int32, device="cuda")
        self._poison(blocks_per_seq, used, num_blocks)
        if q_slice:
            qkv = torch.randn(S, (Hq + 2 * Hkv) * D + 8, generator=g, device="cuda").to(dt)
            self.query = qkv[:, 8:8 + Hq * D].unflatten(1, (Hq, D))
        else:
            self.query = torch.randn(S, Hq, D, generator=g, device="cuda").to(dt)
        self.scale = D ** -0.5 * 2.0  # O(1) logits: a peaked softmax, not near-uniform
        self.alibi = (torch.randn(Hq, generator=g, device="cuda") * 0.05).float() if alibi else None
        self.k_scale = torch.tensor(0.75, device="cuda")
        self.v_scale = torch.tensor(1.25, device="cuda")
        self.max_seq_len = max(seq_lens + [0])

    def _poison(self, blocks_per_seq, used, num_blocks):
        nan = 0x7F if self.kv != "auto" else float("nan")  # 0x7f is NaN in e4m3 and e5m2
        kc, vc = self.key_cache, self.value_cache
        kc[used:] = nan
        vc[used:] = nan
        for s, L in enumerate(self.seq_lens_list):
            tail = L % self.BS
            if tail:
                last = int(self.block_tables[s, blocks_per_seq[s] - 1])
                kc[last, :, :, tail:, :] = nan
                vc[last, :, :, tail:] = nan

    def args(self, **kw):
        kv_kw = dict(kv_cache_dtype=self.kv, k_scale=self.k_scale, v_scale=self.v_scale)
        kv_kw.update(kw)
        return (self.query, self.key_cache, self.value_cache, self.Hkv, self.scale, self.block_tables,
                self.seq_lens, self.BS, self.max_seq_len), dict(alibi_slopes=self.alibi, **kv_kw)

    def reference_args(self, **kw):
        t = self.torch
        kvd = {"auto": "auto", "fp8": "fp8", "fp8_e4m3": "fp8_e4m3", "fp8_e5m2": "fp8_e5m2"}[self.kv]
        host = lambda x: x.detach().float().cpu().numpy() if x.dtype not in (t.uint8,) else x.cpu().numpy()  # noqa: E731
        q = self.query.detach().float().cpu().numpy()
        kc, vc = host(self.key_cache), host(self.value_cache)
        if self.kv == "auto" and self.dtype != "float32":
            kc, vc = kc.astype(np.float32), vc.astype(np.float32)
        args = (q, kc, vc, self.Hkv, self.scale, self.block_tables.cpu().numpy(),
                self.seq_lens.cpu().numpy(), self.BS, self.max_seq_len)
        opts = dict(alibi_slopes=None if self.alibi is None else self.alibi.cpu().numpy(),
                    kv_cache_dtype=kvd, k_scale=0.75, v_scale=1.25)
        opts.update(kw)
        return args, opts

    def max_abs_v(self):
        t = self.torch
        if self.kv == "auto":
            v = self.value_cache.float()
        else:
            v = self.value_cache.view(getattr(t, FP8_TORCH[self.kv])).float() * 1.25
        v = v[: int(self.block_tables.max()) + 1]
        return float(v[v.isfinite()].abs().max()) if v.numel() else 1.0


def abs_reference(case, **kw):
    """sum_t p_t |v_t| per output element: the reference run on |V|."""
    args, opts = case.reference_args(**kw)
    args = list(args)
    args[2] = np.abs(args[2]) if case.kv == "auto" else (args[2] & 0x7F)
    return ref.paged_attention(*args, **opts)


def check_out(case, out, want, v2=False, sparse=False, **kw):
    got = out.detach().float().cpu().numpy().astype(np.float64)
    u = U[case.dtype]
    mma = case.dtype != "float32" and case.D % 16 == 0 and not sparse
    u_p = (U["float16"] if case.kv != "auto" else u) if mma else 0.0
    spread = abs_reference(case, **kw) if (u_p or v2) else 0.0
    tol = u * np.abs(want) + (u_p + (u if v2 else 0.0)) * spread + 2e-5 * case.max_abs_v()
    assert np.isfinite(got).all(), "non-finite output (unwritten, or poison read)"
    bad = ~(np.abs(got - want) <= tol)
    assert not bad.any(), (f"{bad.sum()} of {bad.size} off; first {tuple(np.argwhere(bad)[0])}: "
                           f"got {got[bad][0]}, want {want[bad][0]}, tol {tol[bad][0]}")


def run_v1(case, **kw):
    t = case.torch
    out = t.full_like(case.query, float("nan")).contiguous()
    args, opts = case.args(**kw)
    cupy_ops.paged_attention_v1(out, *args, **opts)
    t.cuda.synchronize()
    return out


def whole_sequence_ctas(monkeypatch):
    """Make the wave model never split a sequence across CTAs, so that v2 over several
    partitions takes the GQA CTAs that merge their own partitions (V2_OWN_MERGE)."""
    monkeypatch.setattr(pa, "v1_splits",
                        lambda num_seqs, ctas, max_len, granule, slots: -(-max(max_len, 1) // granule) * granule)
    pa._PLANS.clear()


def run_v2(case, **kw):
    t = case.torch
    S, H, D = case.query.shape
    P = max(1, math.ceil(case.max_seq_len / 512))
    out = t.full((S, H, D), float("nan"), dtype=case.query.dtype, device="cuda")
    es = t.full((S, H, P), -7.0, device="cuda")
    ml = t.full((S, H, P), -7.0, device="cuda")
    tmp = t.full((S, H, P, D), -7.0, dtype=case.query.dtype, device="cuda")
    args, opts = case.args(**kw)
    cupy_ops.paged_attention_v2(out, es, ml, tmp, *args, **opts)
    t.cuda.synchronize()
    return out, es, ml, tmp


# (seq_lens, Hq, Hkv, D, BS): lengths around block and partition edges, GQA ratios incl. MQA
# and a group > 16 (two head chunks), head sizes incl. non-vLLM ones (8, 40, 160, 224).
SHAPES = [
    ([1, 15, 16, 17, 511, 512, 513], 64, 8, 128, 16),
    ([300, 1000, 77], 40, 40, 80, 16),
    ([700, 5, 1200], 8, 1, 256, 32),
    ([33, 900], 32, 1, 64, 8),           # MQA, group 32 -> two chunks of 16
    ([129, 64], 12, 4, 32, 16),
    ([700, 64], 24, 2, 128, 16),        # group 12: 16 heads per CTA in the GQA kernel
    ([200, 1], 6, 2, 40, 16),
    ([513, 99], 4, 2, 160, 16),
    ([257], 8, 8, 224, 16),
    ([100, 31], 4, 1, 8, 16),
    ([0, 100, 0], 8, 2, 64, 16),         # empty sequences give zeros
]
BLOCK_SIZES = [1, 2, 4, 64, 128, 256]


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{s[1]}x{s[2]}-d{s[3]}-bs{s[4]}-L{max(s[0])}" for s in SHAPES])
def test_matches_reference(torch, version, dtype, shape):
    seq_lens, Hq, Hkv, D, BS = shape
    case = Case(torch, seq_lens, Hq, Hkv, D, BS, dtype=dtype, alibi=(D % 16 == 0), seed=D + BS)
    args, opts = case.reference_args()
    want = ref.paged_attention(*args, **opts)
    if version == "v1":
        check_out(case, run_v1(case), want)
    else:
        out, es, ml, tmp = run_v2(case)
        check_out(case, out, want, v2=True)


@pytest.mark.parametrize("BS", BLOCK_SIZES)
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_block_sizes(torch, BS, dtype):
    case = Case(torch, [BS * 3 + 1, 2 * BS - 1, 700], 8, 2, 64, BS, dtype=dtype, seed=BS)
    args, opts = case.reference_args()
    want = ref.paged_attention(*args, **opts)
    check_out(case, run_v1(case), want)
    check_out(case, run_v2(case)[0], want, v2=True)


@pytest.mark.parametrize("kv", ["fp8", "fp8_e4m3", "fp8_e5m2"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
@pytest.mark.parametrize("D,BS", [(128, 16), (64, 8), (256, 32)])
def test_fp8_caches_with_distinct_scales(torch, kv, dtype, D, BS):
    case = Case(torch, [1000, 17, 513], 16, 4, D, BS, dtype=dtype, kv=kv, alibi=True, seed=3)
    args, opts = case.reference_args()
    want = ref.paged_attention(*args, **opts)
    check_out(case, run_v1(case), want)
    check_out(case, run_v2(case)[0], want, v2=True)


@pytest.mark.parametrize("v2_kernel", ["parts", "part_ctas", "multi_part", "multi_part_reduce", "multi_part_own"])
@pytest.mark.parametrize("warps", ["gqa", "4", "8"])
@pytest.mark.parametrize("kv,D,BS", [("auto", 128, 16), ("auto", 64, 8), ("auto", 80, 32),
                                     ("auto", 256, 16), ("fp8_e4m3", 128, 16)])
def test_both_tensor_core_kernels(torch, monkeypatch, warps, kv, D, BS, v2_kernel):
    """v1 runs the GQA kernel unless CUPY_OPS_PAGED_WARPS forces a head-as-M kernel (4 or 8
    warps), and v2 over several partitions runs the parts kernel, one v1-kernel CTA per
    partition, or GQA CTAs spanning several partitions (flushing one result per partition; the
    partitions merged in the launch, by the reduce kernel, or by the CTA itself when it spans the
    whole sequence): each must be right on every shape."""
    monkeypatch.setattr(pa, "MMA_WARPS", warps)
    monkeypatch.setattr(pa, "V2_PART_CTAS_MIN_WAVES", 10**9 if v2_kernel == "parts" else 0)
    monkeypatch.setattr(pa, "V2_PARTS_MIN_GROUP", 0 if v2_kernel == "parts" else 10**9)
    monkeypatch.setattr(pa, "V2_MULTI_PART", v2_kernel.startswith("multi_part"))
    monkeypatch.setattr(pa, "V2_FUSED_MERGE", v2_kernel != "multi_part_reduce")
    if v2_kernel == "multi_part_own":
        whole_sequence_ctas(monkeypatch)
    pa._PLANS.clear()
    try:
        case = Case(torch, [1000, 17, 64, 4100], 32, 8, D, BS, kv=kv, alibi=True, seed=D + BS)
        args, opts = case.reference_args()
        want = ref.paged_attention(*args, **opts)
        check_out(case, run_v1(case), want)
        out, es, ml, tmp = run_v2(case)
        check_out(case, out, want, v2=True)
    finally:
        pa._PLANS.clear()


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("fused", [True, False], ids=["one_launch", "reduce_kernel"])
@pytest.mark.parametrize("kv,D", [("auto", 128), ("auto", 64), ("fp8_e5m2", 128)])
def test_split_call_after_call(torch, monkeypatch, kv, D, fused, version):
    """Few sequences: v1 splits them, v2's GQA CTAs span several partitions. One launch: the
    last CTA of each (sequence, head chunk) merges (an arrival counter the kernel resets); else
    the reduce kernel (grids of several waves). Empty sequences in the batch give zeros; five
    calls in a row with new queries must all be right (a counter left non-zero would skip the
    merge)."""
    monkeypatch.setattr(pa, "FUSED_MERGE_MAX_WAVES", 1000 if fused else 0)
    case = Case(torch, [0, 3000, 0, 700, 1], 32, 8, D, 16, kv=kv, alibi=True, seed=D)
    pa._PLANS.clear()
    plan_launches = None
    for call in range(5):
        g = torch.Generator(device="cuda").manual_seed(call)
        case.query.copy_(torch.randn(case.query.shape, generator=g, device="cuda").to(case.query.dtype))
        args, opts = case.reference_args()
        want = ref.paged_attention(*args, **opts)
        if version == "v1":
            check_out(case, run_v1(case), want)
        else:
            check_out(case, run_v2(case)[0], want, v2=True)
        if plan_launches is None:
            (plan,) = pa._PLANS._plans.values()
            plan_launches = len(getattr(plan, "launches", (plan,)))
    assert plan_launches == (1 if fused else 2)
    pa._PLANS.clear()


@pytest.mark.parametrize("L", [8192, 32768])
def test_long_sequences(torch, L):
    case = Case(torch, [L, L // 3], 8, 2, 128, 16, seed=L)
    args, opts = case.reference_args()
    want = ref.paged_attention(*args, **opts)
    check_out(case, run_v1(case), want)
    check_out(case, run_v2(case)[0], want, v2=True)


@pytest.mark.parametrize("dtype,own_merge", [("bfloat16", False), ("bfloat16", True), ("float32", False)])
def test_v2_scratch_contract(torch, monkeypatch, dtype, own_merge):
    """exp_sums / max_logits / tmp_out of every partition (and nothing past them), whichever
    path merges the partitions; own_merge: GQA CTAs over whole sequences, one launch."""
    if own_merge:
        whole_sequence_ctas(monkeypatch)
    case = Case(torch, [1500, 512, 3, 2049], 8, 2, 128, 16, dtype=dtype, alibi=True, seed=8)
    out, es, ml, tmp = run_v2(case)
    if own_merge:
        (plan,) = pa._PLANS._plans.values()
        assert len(plan.launches) == 1 and plan.launches[0].dims[2] == 1
        pa._PLANS.clear()
    args, opts = case.reference_args()
    check_out(case, out, ref.paged_attention(*args, **opts), v2=True)
    parts = ref.paged_attention_v2_partials(*args, **opts)
    d = parts.defined
    got_es, got_ml = es.cpu().numpy(), ml.cpu().numpy()
    got_tmp = tmp.float().cpu().numpy()
    np.testing.assert_allclose(got_ml[d], parts.max_logits[d], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_es[d], parts.exp_sums[d], rtol=1e-4)
    vmax = case.max_abs_v()
    u_p = U[dtype] if dtype != "float32" else 0.0
    tol = (U[dtype] + u_p) * np.abs(parts.tmp_out[d]) + u_p * vmax + 2e-5 * vmax
    assert np.all(np.abs(got_tmp[d] - parts.tmp_out[d]) <= tol)
    assert np.all(got_es[~d] == -7.0) and np.all(got_ml[~d] == -7.0), "wrote past the sequence's partitions"
    assert np.all(got_tmp[~d] == -7.0)


# Lengths whose partition counts are 1..11 with and without tails: the GQA kernel's v2 rounds
# (each warp on its own partition, 4 at a time) end with 1, 2, 3 (one warp idle) or 4 partitions.
ROUND_LENGTHS = [1, 511, 512, 513, 1024, 1100, 1536, 1537, 2048, 2049, 2600, 3072, 3585, 4096, 4097,
                 5000, 5632]


@pytest.mark.parametrize("own", [True, False], ids=["whole_sequence_ctas", "split_ctas"])
@pytest.mark.parametrize("kv,D,BS,Hq,Hkv", [("auto", 128, 16, 32, 8), ("auto", 64, 8, 6, 2), ("auto", 128, 4, 8, 8),
                                            ("auto", 80, 1, 12, 4), ("fp8_e4m3", 128, 16, 32, 8),
                                            ("fp8_e5m2", 64, 8, 8, 1),
                                            # groups above 8: 16 heads per CTA (12 used; MQA: two chunks)
                                            ("auto", 128, 16, 48, 4), ("fp8_e4m3", 64, 8, 32, 1)])
def test_v2_partition_rounds(torch, monkeypatch, own, kv, D, BS, Hq, Hkv):
    """v2 on GQA CTAs over several partitions, every round layout: out and every partition's
    scratch (tmp_out, exp_sums, max_logits) against the reference, ALiBi on."""
    chosen = []
    choose = pa.choose_variant
    monkeypatch.setattr(pa, "choose_variant", lambda *a, **k: chosen.append(choose(*a, **k)) or chosen[-1])
    if own:
        whole_sequence_ctas(monkeypatch)
    pa._PLANS.clear()
    try:
        case = Case(torch, ROUND_LENGTHS, Hq, Hkv, D, BS, kv=kv, alibi=True, seed=D + BS + Hq)
        out, es, ml, tmp = run_v2(case)
    finally:
        pa._PLANS.clear()
    assert any(getattr(v, "multi", False) for v in chosen), "the multi-partition GQA kernel did not run"
    args, opts = case.reference_args()
    check_out(case, out, ref.paged_attention(*args, **opts), v2=True)
    parts = ref.paged_attention_v2_partials(*args, **opts)
    d = parts.defined
    got_es, got_ml, got_tmp = es.cpu().numpy(), ml.cpu().numpy(), tmp.float().cpu().numpy()
    np.testing.assert_allclose(got_ml[d], parts.max_logits[d], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_es[d], parts.exp_sums[d], rtol=2e-4)
    vmax = case.max_abs_v()
    u_p = U["float16"] if kv != "auto" else U[case.dtype]
    tol = (U[case.dtype] + u_p) * np.abs(parts.tmp_out[d]) + u_p * vmax + 2e-5 * vmax
    assert np.all(np.abs(got_tmp[d] - parts.tmp_out[d]) <= tol)
    assert np.all(got_es[~d] == -7.0) and np.all(got_tmp[~d] == -7.0), "wrote past the sequence's partitions"


@pytest.mark.parametrize("own", [False, True], ids=["split_ctas", "whole_sequence_ctas"])
def test_v2_merge_in_launch_with_unaligned_tmp_out(torch, monkeypatch, own):
    """The in-launch merges read tmp_out 4 elements at a time when its base allows; a caller's
    tmp_out that starts 2 bytes past an 8-byte boundary takes the scalar loop and must give the
    same answer (split CTAs: the last one merges; whole-sequence CTAs over several rounds: each
    merges its own)."""
    if own:
        whole_sequence_ctas(monkeypatch)
    case = Case(torch, [3000, 700, 1], 32, 8, 128, 16, seed=41)
    t = case.torch
    S, H, D = case.query.shape
    P = math.ceil(case.max_seq_len / 512)
    args, opts = case.args()
    ref_args, ref_opts = case.reference_args()
    want = ref.paged_attention(*ref_args, **ref_opts)
    pa._PLANS.clear()
    for offset in (0, 1):
        out = t.full((S, H, D), float("nan"), dtype=case.query.dtype, device="cuda")
        es, ml = t.full((S, H, P), -7.0, device="cuda"), t.full((S, H, P), -7.0, device="cuda")
        store = t.full((S * H * P * D + 4,), -7.0, dtype=case.query.dtype, device="cuda")
        tmp = store.narrow(0, offset, S * H * P * D).view(S, H, P, D)
        cupy_ops.paged_attention_v2(out, es, ml, tmp, *args, **opts)
        t.cuda.synchronize()
        check_out(case, out, want, v2=True)
    plans = list(pa._PLANS._plans.values())
    assert all(len(getattr(p, "launches", (p,))) == 1 for p in plans), "expected the merge in the decode launch"
    pa._PLANS.clear()


def test_v1_and_v2_agree_bitwise_for_one_partition(torch):
    """With seq_len <= 512 and enough sequences that v1 does not split, both run the same
    single-pass arithmetic (spec §9.7)."""
    case = Case(torch, [512, 300, 1] * 100, 32, 8, 128, 16, seed=12)
    v1 = run_v1(case)
    v2 = run_v2(case)[0]
    assert torch.equal(v1.view(torch.int16), v2.view(torch.int16))


@pytest.mark.parametrize("step", [1, -1, 0])
def test_block_sparse(torch, step):
    case = Case(torch, [1500, 700, 64], 8, 2, 64, 16, seed=20 + step)
    sparse = dict(tp_rank=1, blocksparse_local_blocks=2, blocksparse_vert_stride=3,
                  blocksparse_block_size=64, blocksparse_head_sliding_step=step)
    args, opts = case.reference_args(**sparse)
    want = ref.paged_attention(*args, **opts)
    check_out(case, run_v1(case, **sparse), want, sparse=True, **sparse)
    check_out(case, run_v2(case, **sparse)[0], want, v2=True, sparse=True, **sparse)


def test_query_slice_of_qkv_buffer(torch):
    case = Case(torch, [400, 33], 16, 4, 128, 16, seed=30, q_slice=True)
    assert not case.query.is_contiguous()
    args, opts = case.reference_args()
    check_out(case, run_v1(case), ref.paged_attention(*args, **opts))


def test_empty_batch_is_a_no_op(torch):
    case = Case(torch, [5], 4, 1, 64, 16)
    empty = lambda t: t[:0]  # noqa: E731
    out = torch.empty(0, 4, 64, dtype=torch.bfloat16, device="cuda")
    cupy_ops.paged_attention_v1(out, empty(case.query), case.key_cache, case.value_cache, 1, 0.1,
                                empty(case.block_tables), empty(case.seq_lens), 16, 0)
    torch.cuda.synchronize()


def test_runs_on_torch_current_stream(torch):
    case = Case(torch, [3000, 2000], 32, 8, 128, 16, seed=40)
    args, opts = case.reference_args()
    want = ref.paged_attention(*args, **opts)
    side = torch.cuda.Stream()
    out = torch.full_like(case.query, float("nan"))
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(2_000_000)
        a, o = case.args()
        cupy_ops.paged_attention_v1(out, *a, **o)
    side.synchronize()
    check_out(case, out, want)


def test_cuda_graph_capture_and_replay(torch):
    case = Case(torch, [2000, 100, 4000], 32, 8, 128, 16, seed=50)
    S, H, D = case.query.shape
    out = torch.empty_like(case.query)
    P = math.ceil(case.max_seq_len / 512)
    out2 = torch.empty_like(case.query)
    es, ml = torch.empty(S, H, P, device="cuda"), torch.empty(S, H, P, device="cuda")
    tmp = torch.empty(S, H, P, D, dtype=case.query.dtype, device="cuda")
    a, o = case.args()
    cupy_ops.paged_attention_v1(out, *a, **o)
    cupy_ops.paged_attention_v2(out2, es, ml, tmp, *a, **o)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        cupy_ops.paged_attention_v1(out, *a, **o)
        cupy_ops.paged_attention_v2(out2, es, ml, tmp, *a, **o)
    for seed in (1, 2):
        g = torch.Generator(device="cuda").manual_seed(seed)
        case.query.copy_(torch.randn(case.query.shape, generator=g, device="cuda").to(case.query.dtype))
        out.fill_(float("nan")), out2.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        args, opts = case.reference_args()
        want = ref.paged_attention(*args, **opts)
        check_out(case, out, want)
        check_out(case, out2, want, v2=True)


def test_validate_option_catches_bad_values(torch):
    case = Case(torch, [100, 50], 4, 1, 64, 16)
    a, o = case.args()
    out = torch.empty_like(case.query)
    bad = case.block_tables.clone()
    bad[1, 0] = 10**6
    args = list(a)
    args[5] = bad
    with pytest.raises(cupy_ops.CupyOpsValueError, match=r"block_tables\[1\] holds block id 1000000"):
        cupy_ops.paged_attention_v1(out, *args, **o, validate=True)
    args = list(a)
    args[8] = 60  # max_seq_len below seq_lens[0]
    with pytest.raises(cupy_ops.CupyOpsValueError, match="max_seq_len"):
        cupy_ops.paged_attention_v1(out, *args, **o, validate=True)


def test_bad_arguments_raise_before_launch(torch):
    case = Case(torch, [100], 4, 1, 64, 16)
    a, o = case.args()
    out = torch.empty_like(case.query)
    with pytest.raises(cupy_ops.CupyOpsValueError, match="Unsupported data type of kv cache"):
        cupy_ops.paged_attention_v1(out, *a, **dict(o, kv_cache_dtype="fp4"))
    args = list(a)
    args[5] = case.block_tables.long()
    with pytest.raises(cupy_ops.CupyOpsTypeError, match="block_tables.dtype must be one of int32"):
        cupy_ops.paged_attention_v1(out, *args, **o)
    S, H, D = case.query.shape
    es = torch.empty(S, H, 0, device="cuda")
    with pytest.raises(cupy_ops.CupyOpsValueError, match="scratch too small"):
        cupy_ops.paged_attention_v2(out, es, es, torch.empty(S, H, 0, D, dtype=out.dtype, device="cuda"), *a, **o)
