"""paged_attention_v1 / paged_attention_v2: validate -> choose variant -> geometry -> launch."""

from __future__ import annotations

import dataclasses
import itertools
import os

import numpy as np

from .. import _checks as C
from .. import _device, _interop, _runtime
from ..reference import paged_attention as reference

OP_V1, OP_V2 = "paged_attention_v1", "paged_attention_v2"
DTYPES = ("float32", "float16", "bfloat16")
ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "uint8": 1, "float8_e4m3fn": 1, "float8_e5m2": 1}
# kv_cache_dtype string -> cache element kind: "auto" (same as the query) or an fp8 format.
KV_KINDS = {"auto": "auto", "float16": "auto", "bfloat16": "auto",
            "fp8": "e4m3", "fp8_e4m3": "e4m3", "fp8_ds_mla": "e4m3", "fp8_e5m2": "e5m2"}
FP8_CPP = {"e4m3": "__nv_fp8_e4m3", "e5m2": "__nv_fp8_e5m2"}
GROUP_TILES = (1, 2, 4, 8, 16)
THREADS = 128          # PA_THREADS in the kernel
STAGES = 3             # cp.async pipeline depth
PARTITION_SIZE = 512   # v2's scratch contract (spec §5.1)
STAGE_TARGET_BYTES = 32 * 1024  # K + V bytes per pipeline stage (docs/perf.md)
MAX_HEAD_SIZE = 256
MIN_SPLIT_TOKENS = 256  # shorter splits spend more on pipeline fill and the merge than they gain
MAX_SPLITS = 256
SPLIT_OVERHEAD_TOKENS = 128
REDUCE_OVERHEAD_TOKENS = 64
FUSED_MERGE_MAX_WAVES = 1  # v1 merges its splits in the decode launch up to this many waves
# v2 over several partitions: one v1-kernel CTA per 512-token partition when that grid has at
# least this many waves, else the parts kernel (CTAs span partitions). With the GQA kernel on H200
# (docs/perf.md, p15) per-partition CTAs win at every grid size measured (B8 L4096 64.0 -> 57.6
# us, B1 L32768 68.9 -> 61.5, B64 405.6 -> 331.9), hence 0; on H100 with the head-as-M kernels 4
# was best. Groups above 8 (16 heads per GQA CTA) keep the parts kernel: Hq128/Hkv8 B64 L4096
# 427.8 us against 499.3 per partition.
V2_PART_CTAS_MIN_WAVES = 0
V2_PARTS_MIN_GROUP = 9
# ... except where the GQA kernel's CTAs over several partitions (MULTI) take 16 heads: head sizes
# up to GQA_MULTI16_DMAX and blocks up to 16 tokens (docs/perf.md p28: the parts kernel ran v2 at
# Hq128/Hkv8 B64 L4096 in 428 us, v1's 16-head GQA CTAs in ~300).
V2_GQA16_MULTI = True
GQA_MULTI16_DMAX = 128
# v2 on the GQA kernel: CTAs span several partitions and flush one result per partition (instead
# of one CTA per partition, each paying a pipeline fill). docs/perf.md, p17.
V2_MULTI_PART = True
# v2 on the GQA kernel with a one-wave grid merges its partitions in the decode launch (no reduce
# launch), like v1's splits under FUSED_MERGE_MAX_WAVES. docs/perf.md, p18.
V2_FUSED_MERGE = True
# v2 on the GQA kernel with one CTA per (sequence, head chunk) over the whole sequence: the CTA
# merges its partitions itself and writes out (no reduce launch). docs/perf.md, p22, p23.
V2_OWN_MERGE = True


@dataclasses.dataclass(frozen=True)
class Variant:
    """Compile-time parameters of paged_decode_kernel; head size, block size, tile and split
    sizes are runtime values, so every head size and block size shares these instantiations."""

    dtype: str        # query / output
    kv: str           # "auto" (cache dtype = dtype), "e4m3" or "e5m2"
    out: str          # element type the kernel writes: dtype, or float32 (v1's split workspace)
    group_tile: int   # query heads per CTA
    rows: int         # head-dim rows per thread in P.V (1: head_size <= 128, 2: <= 256)
    stages: int = STAGES

    def template_args(self) -> tuple[str, ...]:
        cpp = _interop.CPP_TYPES
        kv = cpp[self.dtype] if self.kv == "auto" else FP8_CPP[self.kv]
        return (cpp[self.dtype], kv, cpp[self.out], str(self.group_tile), str(self.rows), str(self.stages))


@dataclasses.dataclass(frozen=True)
class ReduceVariant:
    dtype: str   # output
    tmp: str     # partial results: dtype (v2's tmp_out) or float32 (v1's workspace)

    def template_args(self) -> tuple[str, ...]:
        return (_interop.CPP_TYPES[self.dtype], _interop.CPP_TYPES[self.tmp])


def supported(v: Variant) -> bool:
    # Partials are written either in the output dtype or in float32; nothing else.
    return v.out in (v.dtype, "float32")


VARIANTS = tuple(v for v in (Variant(d, kv, o, g, r) for d, kv, o, g, r in itertools.product(
    DTYPES, ("auto", "e4m3", "e5m2"), DTYPES, GROUP_TILES, (1, 2))) if supported(v))
FAMILY = _runtime.KernelFamily(
    op="paged_attention", source="paged_attention.cu", template="cupy_ops::paged_decode_kernel",
    variants=VARIANTS,
    common=tuple(v for v in VARIANTS if v.dtype in ("float16", "bfloat16") and v.kv == "auto"
                 and v.rows == 1 and v.group_tile in (1, 4, 8)))


@dataclasses.dataclass(frozen=True)
class MmaVariant:
    """Compile-time parameters of paged_decode_mma_kernel (16-bit queries, head_size % 16 == 0)."""

    dtype: str        # float16 or bfloat16
    kv: str
    out: str
    dmax: int         # head_size bound: 64, 128, 256
    stages: int       # cp.async pipeline depth, see mma_stages()

    def template_args(self) -> tuple[str, ...]:
        cpp = _interop.CPP_TYPES
        kv = cpp[self.dtype] if self.kv == "auto" else FP8_CPP[self.kv]
        return (cpp[self.dtype], kv, cpp[self.out], str(self.dmax), str(self.stages))


def mma_stages(dmax: int, kv: str) -> int:
    """Pipeline depth from the stage size (64 tokens of K and V): deeper for small stages."""
    stage = MMA_TILE * dmax * (1 if kv != "auto" else 2) * 2
    return 4 if stage <= 16384 else (3 if stage <= 32768 else 2)


MMA_TILE = 64
MMA_DTYPES = ("float16", "bfloat16")
MMA_VARIANTS = tuple(MmaVariant(d, kv, o, dm, mma_stages(dm, kv)) for d, kv, o, dm in itertools.product(
    MMA_DTYPES, ("auto", "e4m3", "e5m2"), MMA_DTYPES + ("float32",), (64, 128, 256)) if o in (d, "float32"))
MMA_COMMON = tuple(v for v in MMA_VARIANTS if v.kv in ("auto", "e4m3") and v.dmax in (64, 128))
# v1: warps split each tile's tokens and merge once; v2: warps split the head dimension and a CTA
# emits one result per 512-token partition (see paged_attention_mma.cu).
MMA_FAMILY = _runtime.KernelFamily(
    op="paged_attention_mma", source="paged_attention_mma.cu",
    template="cupy_ops::paged_decode_mma_kernel", variants=MMA_VARIANTS, common=MMA_COMMON)
MMA_PARTS_FAMILY = _runtime.KernelFamily(
    op="paged_attention_mma_parts", source="paged_attention_mma.cu",
    template="cupy_ops::paged_decode_mma_parts_kernel", variants=MMA_VARIANTS,
    common=tuple(v for v in MMA_COMMON if v.out != "float32"))
# v1 with 8 warps: warp pairs split the head dimension of the same 16 tokens (twice the warps per
# SM at half the registers); see eight_warps() for when it runs.
MMA8_FAMILY = _runtime.KernelFamily(
    op="paged_attention_mma8", source="paged_attention_mma.cu",
    template="cupy_ops::paged_decode_mma8_kernel", variants=MMA_VARIANTS, common=MMA_COMMON)
MMA8_THREADS = 256       # PA_THREADS8 in the kernel
MMA8_EXCHANGE_BYTES = 8 * 32 * 8 * 4  # partial S of every lane of the 8 warps


@dataclasses.dataclass(frozen=True)
class GqaVariant(MmaVariant):
    """paged_decode_gqa_kernel: MmaVariant's parameters plus the query heads per CTA (the mma's N:
    8, or 16 for groups above 8), whether CTAs may span several v2 partitions (``multi``: only
    v2's instantiations carry that code; v1's loop is smaller without it, docs/perf.md p22e) and
    whether the head size is dmax itself (``exact``: the k-step loops' bounds are then constants,
    ~30 fewer instructions per warp and tile, docs/perf.md p27)."""

    heads: int = 8
    multi: bool = False
    exact: bool = False

    def template_args(self) -> tuple[str, ...]:
        flag = lambda b: "true" if b else "false"
        return super().template_args() + (str(self.heads // 8), flag(self.multi), flag(self.exact))


def gqa_stages(dmax: int, kv: str) -> int:
    """Pipeline depth of the GQA kernel from its stage size (64 tokens of K and V). H200
    (docs/perf.md, p15, p22e): 32 KB stages (bf16 d128) run best 3 deep, 2 CTAs per SM (B64 L4096
    265 us, 2 deep 312; B256 L1024 270 / 274); 64 KB stages (d256) 3 deep, one CTA per SM (291 vs
    301 us); 16 KB stages (fp8 d128) 3 deep, still 4 CTAs per SM (141 us; 2 deep 148, 4 deep 232);
    d64's 16-bit 16 KB stages 2 deep."""
    stage = MMA_TILE * dmax * (1 if kv != "auto" else 2) * 2
    if kv != "auto" and dmax == 128:
        return 3
    return 3 if stage >= 32768 else 2


GQA_HEADS = (8, 16)


def gqa_has_multi(heads: int, dmax: int) -> bool:
    """Whether the GQA kernel has the multi-partition (v2) form for this CTA shape: 8 heads, or 16
    up to head size GQA_MULTI16_DMAX (16 heads at d256 spilled)."""
    return heads == 8 or dmax <= GQA_MULTI16_DMAX


GQA_VARIANTS = tuple(GqaVariant(v.dtype, v.kv, v.out, v.dmax, gqa_stages(v.dmax, v.kv), h, multi, exact)
                     for v in MMA_VARIANTS for h in GQA_HEADS for multi in (False, True)
                     for exact in (True, False)
                     if not multi or (v.out == v.dtype and gqa_has_multi(h, v.dmax)))
# The v1 kernel for tensor-core shapes (and v2's one-CTA-per-partition path): the GQA group as the
# mma's N dimension, tokens as M (paged_attention_gqa.cu). H200 (docs/perf.md, p14).
GQA_FAMILY = _runtime.KernelFamily(
    op="paged_attention_gqa", source="paged_attention_gqa.cu",
    template="cupy_ops::paged_decode_gqa_kernel", variants=GQA_VARIANTS,
    common=tuple(v for v in GQA_VARIANTS
                 if v.kv in ("auto", "e4m3") and v.dmax in (64, 128) and v.heads == 8 and v.exact))
# "4" / "8" force the older head-as-M v1 kernels (4 or 8 warps) for every shape, for A/B
# measurements and tests; anything else: the GQA kernel.
MMA_WARPS = os.environ.get("CUPY_OPS_PAGED_WARPS", "auto")


def v1_kernel() -> str:
    """Which tensor-core v1 kernel runs: "gqa" unless CUPY_OPS_PAGED_WARPS forces "4" or "8"."""
    return MMA_WARPS if MMA_WARPS in ("4", "8") else "gqa"


def eight_warps(variant) -> bool:
    """Whether v1 runs the 8-warp head-as-M kernel (only when forced: the GQA kernel replaced it).
    H100 (docs/perf.md, p7): it beat the 4-warp one for 16-bit caches with head sizes above 64."""
    return isinstance(variant, MmaVariant) and not isinstance(variant, GqaVariant) and v1_kernel() == "8"
REDUCE_VARIANTS = tuple(ReduceVariant(d, t) for d in DTYPES for t in dict.fromkeys((d, "float32")))
REDUCE_FAMILY = _runtime.KernelFamily(
    op="paged_attention_reduce", source="paged_attention.cu", template="cupy_ops::paged_reduce_kernel",
    variants=REDUCE_VARIANTS, common=REDUCE_VARIANTS)


# --------------------------------------------------------------------------------------------
# Public ops

def paged_attention_v1(out, query, key_cache, value_cache, num_kv_heads, scale, block_tables,
                       seq_lens, block_size, max_seq_len, alibi_slopes=None, kv_cache_dtype="auto",
                       k_scale=None, v_scale=None, tp_rank=0, blocksparse_local_blocks=0,
                       blocksparse_vert_stride=0, blocksparse_block_size=64,
                       blocksparse_head_sliding_step=0, *, validate=None) -> None:
    """Decode attention over a paged KV cache; writes ``out`` in place (vLLM's v1 signature).

    Parameters
    ----------
    out : [num_seqs, num_heads, head_size], dtype of query; head_size stride 1
    query : [num_seqs, num_heads, head_size], float32 / float16 / bfloat16; head_size stride 1,
        other strides free (a slice of a fused qkv buffer works)
    key_cache : [num_blocks, num_kv_heads, head_size/x, block_size, x], x = 16 bytes / element:
        query dtype for kv_cache_dtype "auto"; uint8 (or a float8 dtype) holding fp8 bytes for
        "fp8", "fp8_e4m3", "fp8_e5m2". Last three dimensions packed.
    value_cache : [num_blocks, num_kv_heads, head_size, block_size], key_cache's dtype; last two
        dimensions packed. Its own strides are used (vLLM reuses key_cache's).
    num_kv_heads : int, divides num_heads (GQA / MQA)
    scale : float, multiplies q.k (narrowed to fp32, like vLLM)
    block_tables : [num_seqs, max_num_blocks_per_seq] int32, physical block of each logical block
    seq_lens : [num_seqs] int32, tokens per sequence (0 gives zeros)
    block_size : int, a power of two in 1..256 (vLLM: 8, 16, 32), = key_cache.shape[3]
    max_seq_len : int >= max(seq_lens)
    alibi_slopes : [num_heads] float32, optional
    kv_cache_dtype : "auto" | "float16" | "bfloat16" | "fp8" | "fp8_e4m3" | "fp8_e5m2"
    k_scale, v_scale : float32 device tensors (element 0 is read on the GPU) for fp8 caches;
        ignored otherwise
    tp_rank, blocksparse_* : block-sparse attention (on when blocksparse_vert_stride > 1), spec §4.4
    validate : bool, keyword-only. Also check the *values* of block_tables and seq_lens (copies
        them to the host: ids in range, lengths within max_seq_len and the table's capacity).
        Default: the CUPY_OPS_VALIDATE environment variable. Without it, values are trusted:
        out-of-range block ids read out of bounds; lengths past the table's capacity are clamped
        to it, so the table itself is never read past its rows.

    Notes
    -----
    One CTA serves all query heads of a kv head (vLLM's kernel re-reads K/V per query head), and
    long sequences are split across CTAs (merged with the log-sum-exp rule through a workspace)
    when the batch alone would not fill the GPU. Head sizes: any multiple of 8 up to 256 (16 for
    fp8); vLLM supports 32, 64, 80, 96, 112, 120, 128, 192, 256. Softmax denominators carry vLLM's
    +1e-6. 16-bit queries run on tensor cores (mma.sync), whose P.V takes probabilities rounded
    to the query dtype (fp16 for fp8 caches), as vLLM's kernel also rounds them; fp32 queries,
    head sizes that are 8 (mod 16) and block-sparse calls run a CUDA-core kernel in fp32.
    NaN or Inf in cache slots that are not attended (past seq_len, unused table columns, skipped
    block-sparse blocks) never reaches the output.
    """
    _call(OP_V1, out, None, None, None, query, key_cache, value_cache, num_kv_heads, scale,
          block_tables, seq_lens, block_size, max_seq_len, alibi_slopes, kv_cache_dtype, k_scale,
          v_scale, tp_rank, blocksparse_local_blocks, blocksparse_vert_stride,
          blocksparse_block_size, blocksparse_head_sliding_step, validate)


def paged_attention_v2(out, exp_sums, max_logits, tmp_out, query, key_cache, value_cache,
                       num_kv_heads, scale, block_tables, seq_lens, block_size, max_seq_len,
                       alibi_slopes=None, kv_cache_dtype="auto", k_scale=None, v_scale=None,
                       tp_rank=0, blocksparse_local_blocks=0, blocksparse_vert_stride=0,
                       blocksparse_block_size=64, blocksparse_head_sliding_step=0, *,
                       validate=None) -> None:
    """v1's attention split into 512-token partitions (vLLM's v2 signature); writes ``out`` and
    the scratch tensors in place.

    Extra parameters
    ----------------
    exp_sums, max_logits : [num_seqs, num_heads, P] float32, contiguous, P >= ceil(max_seq_len/512)
    tmp_out : [num_seqs, num_heads, P, head_size], query dtype, contiguous

    After the call, for partitions p < ceil(seq_len/512) (spec §5.2): max_logits = the
    partition's max logit, exp_sums = sum of exp(logit - max), tmp_out = the partition's
    normalised output (rounded to the query dtype); other entries are untouched. ``out`` is their
    log-sum-exp merge (§5.3; where one CTA covers a whole sequence of at most 4 partitions it
    merges their float results before rounding, so ``out`` can differ from a merge of tmp_out by
    rounding); for seq_len <= 512 it equals v1's result bit for bit.
    See ``paged_attention_v1`` for the other parameters.
    """
    _call(OP_V2, out, exp_sums, max_logits, tmp_out, query, key_cache, value_cache, num_kv_heads,
          scale, block_tables, seq_lens, block_size, max_seq_len, alibi_slopes, kv_cache_dtype,
          k_scale, v_scale, tp_rank, blocksparse_local_blocks, blocksparse_vert_stride,
          blocksparse_block_size, blocksparse_head_sliding_step, validate)


_PLANS = _interop.PlanCache()


def _call(op, out, exp_sums, max_logits, tmp_out, query, key_cache, value_cache, *scalars_and_rest):
    (num_kv_heads, scale, block_tables, seq_lens, block_size, max_seq_len, alibi_slopes,
     kv_cache_dtype, k_scale, v_scale, tp_rank, bs_local, bs_vert, bs_block, bs_step,
     validate) = scalars_and_rest
    validate = C.validation_requested(op, validate)
    arrays = (out, exp_sums, max_logits, tmp_out, query, key_cache, value_cache, block_tables,
              seq_lens, alibi_slopes, k_scale, v_scale)
    scalars = (op, num_kv_heads, scale, block_size, max_seq_len, kv_cache_dtype, tp_rank, bs_local,
               bs_vert, bs_block, bs_step)
    # k_scale / v_scale are neither checked nor read for an unquantized cache: keep them out of
    # the fingerprint there (two fewer tensors to inspect per call).
    unquantized = isinstance(kv_cache_dtype, str) and KV_KINDS.get(kv_cache_dtype) == "auto"
    keyed = arrays[:10] if unquantized else arrays
    _interop.planned(_PLANS, keyed, scalars, lambda: _plan(arrays, scalars, validate),
                     cached=not validate).run()


# --------------------------------------------------------------------------------------------
# Validation

@dataclasses.dataclass
class _Args:
    op: str
    out: object
    exp_sums: object
    max_logits: object
    tmp_out: object
    query: object
    key_cache: object
    value_cache: object
    block_tables: object
    seq_lens: object
    alibi: object
    k_scale: object
    v_scale: object
    kv: str
    num_seqs: int
    num_heads: int
    num_kv_heads: int
    head_size: int
    block_size: int
    max_seq_len: int
    scale: float
    sparse: tuple     # tp_rank, local_blocks, vert_stride, block_size, sliding_step
    partitions: int   # v2 scratch pitch (0 for v1)


def _validate(arrays, scalars) -> _Args:
    (out, exp_sums, max_logits, tmp_out, query, key_cache, value_cache, block_tables, seq_lens,
     alibi_slopes, k_scale, v_scale) = arrays
    (op, num_kv_heads, scale, block_size, max_seq_len, kv_cache_dtype, tp_rank, bs_local,
     bs_vert, bs_block, bs_step) = scalars
    d = lambda name, x: _interop.describe(op, name, x)  # noqa: E731
    # vLLM's checks first, in its order (spec §3.3).
    if not isinstance(kv_cache_dtype, str) or kv_cache_dtype not in KV_KINDS:
        C.fail(op, f"Unsupported data type of kv cache: {kv_cache_dtype!r} (kv_cache_dtype must be "
                   f"one of {', '.join(KV_KINDS)})")
    kv = KV_KINDS[kv_cache_dtype]
    q = d("query", query)
    C.check_dtype(op, "query", q, DTYPES)
    block_size = C.check_int(op, "block_size", block_size, 1, 256)
    if block_size & (block_size - 1):
        C.fail(op, f"block_size must be a power of two in 1..256; got {block_size}")
    bt, sl = d("block_tables", block_tables), d("seq_lens", seq_lens)
    C.check_dtype(op, "block_tables", bt, ("int32",))
    C.check_dtype(op, "seq_lens", sl, ("int32",))
    C.check_rank(op, "query", q, 3, "num_seqs, num_heads, head_size")
    num_seqs, num_heads, head_size = q.shape
    cache_elem = q.itemsize if kv == "auto" else 1
    x = 16 // cache_elem
    if head_size % 8 or head_size % x or not 8 <= head_size <= MAX_HEAD_SIZE:
        C.fail(op, f"query.shape[2] (head_size) must be a multiple of {max(8, x)} in "
                   f"{max(8, x)}..{MAX_HEAD_SIZE} for this cache; got {head_size}")
    num_kv_heads = C.check_int(op, "num_kv_heads", num_kv_heads, 1, 2**31 - 1)
    if num_heads % num_kv_heads:
        C.fail(op, f"num_kv_heads ({num_kv_heads}) must divide num_heads ({num_heads})")
    max_seq_len = C.check_int(op, "max_seq_len", max_seq_len, 0, 2**31 - 1)
    try:
        scale = float(np.float32(scale))
    except (TypeError, ValueError):
        C.fail(op, f"scale must be a float; got {type(scale).__name__}", kind=C.CupyOpsTypeError)

    o = d("out", out)
    C.check_dtype(op, "out", o, (q.dtype,))
    C.check_shape(op, "out", o, q.shape, "num_seqs, num_heads, head_size")
    kc, vc = d("key_cache", key_cache), d("value_cache", value_cache)
    if kv == "auto":
        C.check_dtype(op, "key_cache", kc, (q.dtype,))
    else:
        C.check_dtype(op, "key_cache", kc, ("uint8", "float8_e4m3fn", "float8_e5m2"))
    C.check_dtype(op, "value_cache", vc, (kc.dtype,))
    C.check_rank(op, "key_cache", kc, 5, "num_blocks, num_kv_heads, head_size/x, block_size, x")
    num_blocks = kc.shape[0]
    C.check_shape(op, "key_cache", kc, (num_blocks, num_kv_heads, head_size // x, block_size, x),
                  "num_blocks, num_kv_heads, head_size/x, block_size, x")
    C.check_shape(op, "value_cache", vc, (num_blocks, num_kv_heads, head_size, block_size),
                  "num_blocks, num_kv_heads, head_size, block_size")
    if kc.strides[2:] != (block_size * x, x, 1) and num_blocks:
        C.fail(op, f"key_cache's last three dimensions must be packed (strides {(block_size * x, x, 1)}); "
                   f"got {kc.strides[2:]}")
    if vc.strides[2:] != (block_size, 1) and num_blocks:
        C.fail(op, f"value_cache's last two dimensions must be packed (strides {(block_size, 1)}); "
                   f"got {vc.strides[2:]}")
    C.check_rank(op, "block_tables", bt, 2, "num_seqs, max_num_blocks_per_seq")
    if bt.shape[0] != num_seqs:
        C.fail(op, f"block_tables.shape[0] must be num_seqs ({num_seqs}); got {bt.shape[0]}")
    if bt.shape[1] > 1 and bt.strides[1] != 1:
        C.fail(op, f"block_tables must be contiguous along max_num_blocks_per_seq; got strides {bt.strides}")
    C.check_shape(op, "seq_lens", sl, (num_seqs,), "num_seqs")
    if num_seqs > 1 and sl.strides[0] != 1:
        C.fail(op, f"seq_lens must be contiguous; got stride {sl.strides[0]}")
    for name, a in (("query", q), ("out", o)):
        C.check_last_dim_contiguous(op, name, a)

    alibi = None if alibi_slopes is None else d("alibi_slopes", alibi_slopes)
    if alibi is not None:
        C.check_dtype(op, "alibi_slopes", alibi, ("float32",))
        C.check_shape(op, "alibi_slopes", alibi, (num_heads,), "num_heads")
        if num_heads > 1 and alibi.strides[0] != 1:
            C.fail(op, f"alibi_slopes must be contiguous; got stride {alibi.strides[0]}")
    ks = vs = None
    if kv != "auto":
        for name, sc in (("k_scale", k_scale), ("v_scale", v_scale)):
            if sc is None or isinstance(sc, (int, float)):
                C.fail(op, f"{name} must be a float32 tensor on the GPU for an fp8 cache "
                           f"(kv_cache_dtype={kv_cache_dtype!r}); got {type(sc).__name__}",
                       kind=C.CupyOpsTypeError)
        ks, vs = d("k_scale", k_scale), d("v_scale", v_scale)
        for name, sc in (("k_scale", ks), ("v_scale", vs)):
            C.check_dtype(op, name, sc, ("float32",))
            if sc.size < 1:
                C.fail(op, f"{name} must hold at least one element; got shape {sc.shape}")

    tp_rank = C.check_int(op, "tp_rank", tp_rank, 0, 2**31 - 1)
    bs_local = C.check_int(op, "blocksparse_local_blocks", bs_local, 0, 2**31 - 1)
    bs_vert = C.check_int(op, "blocksparse_vert_stride", bs_vert, -2**31, 2**31 - 1)
    bs_block = C.check_int(op, "blocksparse_block_size", bs_block, -2**31, 2**31 - 1)
    bs_step = C.check_int(op, "blocksparse_head_sliding_step", bs_step, -2**31, 2**31 - 1)
    if bs_vert > 1 and (bs_block <= 0 or bs_block % block_size):
        C.fail(op, f"blocksparse_block_size must be a positive multiple of block_size ({block_size}) "
                   f"when blocksparse_vert_stride > 1; got {bs_block}")

    partitions = 0
    es = ml = tmp = None
    if op == OP_V2:
        need = -(-max_seq_len // PARTITION_SIZE)
        es, ml, tmp = d("exp_sums", exp_sums), d("max_logits", max_logits), d("tmp_out", tmp_out)
        for name, a in (("exp_sums", es), ("max_logits", ml)):
            C.check_dtype(op, name, a, ("float32",))
            C.check_rank(op, name, a, 3, "num_seqs, num_heads, max_num_partitions")
        C.check_dtype(op, "tmp_out", tmp, (q.dtype,))
        C.check_rank(op, "tmp_out", tmp, 4, "num_seqs, num_heads, max_num_partitions, head_size")
        partitions = es.shape[2]
        if partitions < need:
            C.fail(op, f"exp_sums.shape[2] (max_num_partitions) must be >= ceil(max_seq_len / 512) = "
                       f"{need}; got {partitions} (scratch too small)")
        for name, a, shape in (("exp_sums", es, (num_seqs, num_heads, partitions)),
                               ("max_logits", ml, (num_seqs, num_heads, partitions)),
                               ("tmp_out", tmp, (num_seqs, num_heads, partitions, head_size))):
            C.check_shape(op, name, a, shape)
            if a.size and a.strides != _contiguous_strides(shape):
                C.fail(op, f"{name} must be contiguous; got strides {a.strides}")
        C.check_no_overlap(op, "out", o, {"tmp_out": tmp, "exp_sums": es, "max_logits": ml})

    C.check_same_device(op, {"out": o, "query": q, "key_cache": kc, "value_cache": vc,
                             "block_tables": bt, "seq_lens": sl, "alibi_slopes": alibi,
                             "k_scale": ks, "v_scale": vs, "exp_sums": es, "max_logits": ml,
                             "tmp_out": tmp})
    C.check_no_overlap(op, "out", o, {"query": q, "key_cache": kc, "value_cache": vc})
    return _Args(op, o, es, ml, tmp, q, kc, vc, bt, sl, alibi, ks, vs, kv, num_seqs, num_heads,
                 num_kv_heads, head_size, block_size, max_seq_len, scale,
                 (tp_rank, bs_local, bs_vert, bs_block, bs_step), partitions)


def _contiguous_strides(shape):
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= n
    return tuple(reversed(strides))


def _validate_values(a: _Args) -> None:
    """The optional device-to-host check of block_tables / seq_lens values."""
    op = a.op
    bt = _interop.to_host(a.block_tables)
    sl = _interop.to_host(a.seq_lens)
    if a.num_seqs == 0:
        return
    if sl.min() < 0:
        C.fail(op, f"seq_lens must be >= 0; got {int(sl.min())} at sequence {int(sl.argmin())}")
    longest = int(sl.max())
    if longest > a.max_seq_len:
        C.fail(op, f"max_seq_len ({a.max_seq_len}) must be >= max(seq_lens) = {longest}")
    capacity = bt.shape[1] * a.block_size
    if longest > capacity:
        C.fail(op, f"seq_lens[{int(sl.argmax())}] = {longest} exceeds the block table's capacity "
                   f"(max_num_blocks_per_seq {bt.shape[1]} * block_size {a.block_size})")
    num_blocks = a.key_cache.shape[0]
    for s in range(a.num_seqs):
        used = bt[s, : -(-int(sl[s]) // a.block_size)]
        if used.size and (used.min() < 0 or used.max() >= num_blocks):
            bad = used[(used < 0) | (used >= num_blocks)][0]
            C.fail(op, f"block_tables[{s}] holds block id {int(bad)}, outside 0..{num_blocks - 1}")


# --------------------------------------------------------------------------------------------
# Variant choice and geometry (pure: testable without a GPU)

def group_tile(group: int) -> int:
    """Smallest power of two holding the GQA group, capped at 16 (bigger groups take chunks)."""
    for gt in GROUP_TILES:
        if gt >= group:
            return gt
    return GROUP_TILES[-1]


def choose_variant(dtype: str, kv: str, head_size: int, group: int, out: str, sparse: bool,
                   parts: bool = False, multi: bool = False):
    """The tensor-core kernels for 16-bit queries with head_size % 16 == 0 and no block-sparse
    pattern (v1: the GQA kernel, a GqaVariant; ``parts``: v2's parts kernel, a MmaVariant;
    ``multi``: the GQA kernel's v2 form, CTAs over several partitions); the CUDA-core kernel
    otherwise (fp32 queries, head sizes 8 (mod 16), block-sparse)."""
    if dtype in MMA_DTYPES and head_size % 16 == 0 and not sparse:
        dmax = 64 if head_size <= 64 else (128 if head_size <= 128 else 256)
        v = MmaVariant(dtype, kv, out, dmax, mma_stages(dmax, kv))
        if parts or v1_kernel() != "gqa":
            return v
        heads = 8 if group <= 8 else 16
        return GqaVariant(dtype, kv, out, dmax, gqa_stages(dmax, kv), heads=heads,
                          multi=multi and gqa_has_multi(heads, dmax), exact=head_size == dmax)
    return Variant(dtype, kv, out, group_tile(group), 1 if head_size <= THREADS else 2)


def heads_per_cta(variant, group: int) -> int:
    if isinstance(variant, GqaVariant):
        return variant.heads
    return 16 if isinstance(variant, MmaVariant) else group_tile(group)


def tile_tokens(head_size: int, cache_elem: int) -> int:
    """Tokens per pipeline stage: about STAGE_TARGET_BYTES of K + V, a power of two in
    [max(16 / cache_elem, 16), 256]; it divides the 512-token partition."""
    per_token = 2 * head_size * cache_elem
    t = 256
    while t > 16 and t * per_token > STAGE_TARGET_BYTES:
        t //= 2
    return max(t, 16 // cache_elem, 16)


def warp_merge_bytes(rows: int, head_size: int) -> int:
    """Where 4 warps publish (m, l, O) for the merge (finish_cta, merge_warps): [4][rows] m and l,
    [4][rows][head_size + 4] O (the GQA kernel pads O's rows by 4 floats, o_pitch; the head-as-M
    kernels use less)."""
    return (2 * 4 * rows + 4 * rows * (head_size + 4)) * 4


def smem_bytes(variant, head_size: int, tile: int, cache_elem: int, parts: bool = False,
               eight_warps: bool = False) -> int:
    """Dynamic shared memory of a decode launch (the merges at a CTA's end reuse the stages)."""
    if isinstance(variant, MmaVariant):
        stages = variant.stages * 2 * MMA_TILE * head_size * cache_elem
        if parts:
            return 16 * (MMA_TILE + 4) * 4 + stages  # + S of one tile, rows padded (S_PITCH)
        if eight_warps:
            stages += MMA8_EXCHANGE_BYTES
        return max(stages, warp_merge_bytes(16, head_size))  # the merge reuses the stages
    gt = variant.group_tile
    floats = gt * head_size + gt * tile + 2 * gt + 2
    return floats * 4 + 16 + 2 * variant.stages * tile * head_size * cache_elem


def merge_smem_bytes(entries: int) -> int:
    """Shared memory of merge_splits_if_last: a flag, then [heads per CTA (<= 16)][entries] weights."""
    return 16 + 16 * entries * 4


# Static shared memory of paged_decode_gqa_kernel (the bulk path's mbarriers, up to 4 stages).
GQA_STATIC_SMEM = 4 * 8


def v1_splits(num_seqs: int, ctas_per_split: int, max_seq_len: int, tile: int, slots: int) -> int:
    """Tokens per split for v1, from a wave model: with ``slots`` CTAs resident at once, s
    splits cost about ceil(ctas * s / slots) waves of (tokens per split + SPLIT_OVERHEAD_TOKENS)
    (pipeline fill and the in-CTA merge), plus REDUCE_OVERHEAD_TOKENS once for the merge kernel
    when s > 1. Measured on H100 (docs/perf.md): B1 L32768 runs best with one wave of 256 CTAs,
    B64 L4096 without splitting. Splits are multiples of the tile and >= MIN_SPLIT_TOKENS."""
    longest = max(max_seq_len, 1)
    ctas = max(num_seqs * ctas_per_split, 1)
    unit = max(tile, MIN_SPLIT_TOKENS)
    best_cost, best_split = None, -(-longest // tile) * tile
    for splits in range(1, min(MAX_SPLITS, max(1, longest // unit)) + 1):
        per = -(-(-(-longest // splits)) // tile) * tile
        used = -(-longest // per)
        waves = -(-ctas * used // max(slots, 1))
        cost = waves * (per + SPLIT_OVERHEAD_TOKENS) + (REDUCE_OVERHEAD_TOKENS if used > 1 else 0)
        if best_cost is None or cost < best_cost:
            best_cost, best_split = cost, per
    return best_split


# --------------------------------------------------------------------------------------------
# Plans

def _plan(arrays, scalars, validate):
    a = _validate(arrays, scalars)
    if validate or a.query.device is None:
        _validate_values(a)  # host arrays: free to check, and the reference needs valid values
    if a.query.device is None:
        return _interop.HostPlan(_run_reference, a)
    if a.num_seqs == 0 or a.num_heads == 0:
        return _interop.NoOpPlan()
    device = a.query.device
    group = a.num_heads // a.num_kv_heads
    cache_elem = 1 if a.kv != "auto" else a.query.itemsize
    sparse = a.sparse[2] > 1
    probe = choose_variant(a.query.dtype, a.kv, a.head_size, group, a.query.dtype, sparse)
    mma = isinstance(probe, MmaVariant)
    tile = MMA_TILE if mma else tile_tokens(a.head_size, cache_elem)
    chunks_per_group = -(-group // heads_per_cta(probe, group))
    ctas_per_split = a.num_kv_heads * chunks_per_group
    sm_count = _device.sm_count(device)

    eight = eight_warps(probe)

    def family_of(parts: bool):
        if not mma:
            return FAMILY, THREADS
        if parts:
            return MMA_PARTS_FAMILY, THREADS
        if isinstance(probe, GqaVariant):
            return GQA_FAMILY, THREADS
        return (MMA8_FAMILY, MMA8_THREADS) if eight else (MMA_FAMILY, THREADS)

    def slots(parts: bool = False, multi_part: bool = False) -> int:
        """CTAs of the decode kernel resident on the whole GPU at once."""
        fam, threads = family_of(parts)
        v = choose_variant(a.query.dtype, a.kv, a.head_size, group, a.query.dtype, sparse, parts, multi_part)
        per_sm = _device.resident_blocks(_runtime.get_kernel(fam, v, device), threads,
                                         smem_bytes(v, a.head_size, tile, cache_elem, parts, eight and not parts))
        return per_sm * sm_count

    v1_slots = slots()  # the v1 kernel's: its wave model, the v2 kernel choice, the split merge

    def wave_split(granule: int, parts: bool = False) -> int:
        return v1_splits(a.num_seqs, ctas_per_split, a.max_seq_len, granule,
                         slots(True) if parts else v1_slots)

    # v2 with several partitions on tensor cores: CTAs fill several partitions each, split by
    # the wave model. One partition: the v1 kernel, so that v1 and v2 agree bit for bit (§9.7).
    # Groups above 8 stay on the GQA kernel (16 heads per CTA, spanning partitions) where it has
    # that form; else the parts kernel.
    multi_ok = (isinstance(probe, GqaVariant) and V2_MULTI_PART and a.block_size <= 16
                and gqa_has_multi(probe.heads, probe.dmax) and (probe.heads == 8 or V2_GQA16_MULTI))
    parts = (mma and a.op == OP_V2 and a.max_seq_len > PARTITION_SIZE
             and ((group >= V2_PARTS_MIN_GROUP and not (group > 8 and multi_ok))
                  or a.num_seqs * ctas_per_split * a.partitions < V2_PART_CTAS_MIN_WAVES * v1_slots))
    # v2 on the GQA kernel: CTAs span several partitions (split by the wave model), each warp
    # on its own partition; V2_MULTI_PART off: one CTA per partition.
    # (Not with 16 heads per CTA at head sizes over 128: that instantiation spills. Not with
    # blocks over 16 tokens: a warp's 16 tokens of a tile must be whole cache blocks.)
    can_multi = (a.op == OP_V2 and mma and not parts and multi_ok and a.max_seq_len > PARTITION_SIZE)
    multi_slots = slots(multi_part=True) if can_multi else 0
    if a.op == OP_V2:
        part = PARTITION_SIZE
        if parts:
            split = wave_split(PARTITION_SIZE, parts=True)
        elif can_multi:
            split = v1_splits(a.num_seqs, ctas_per_split, a.max_seq_len, PARTITION_SIZE, multi_slots)
        else:
            split = PARTITION_SIZE
        splits = -(-a.partitions * PARTITION_SIZE // split)
        direct = False
    else:
        split = wave_split(tile)
        part = split
        splits = max(1, -(-a.max_seq_len // split))
        direct = splits == 1
    multi = can_multi and split > PARTITION_SIZE  # (can_multi implies v2)
    out_dtype = a.query.dtype if (direct or a.op == OP_V2) else "float32"
    variant = choose_variant(a.query.dtype, a.kv, a.head_size, group, out_dtype, sparse, parts, multi)
    family, threads = family_of(parts)
    kernel = _runtime.get_kernel(family, variant, device)
    smem = smem_bytes(variant, a.head_size, tile, cache_elem, parts, eight and not parts)
    # One CTA per (sequence, head chunk) spanning every partition: it merges them itself (when the
    # merge's weights fit in the stages' shared memory: the partition count is unbounded).
    own_merge = multi and splits == 1 and V2_OWN_MERGE and merge_smem_bytes(a.partitions) <= smem
    launches = []
    workspace = None
    if direct:
        target = (a.out.ptr, 0, 0, a.out.strides[0], a.out.strides[1], 0)
    elif a.op == OP_V2:
        target = (a.tmp_out.ptr, a.exp_sums.ptr, a.max_logits.ptr,
                  a.num_heads * a.partitions * a.head_size, a.partitions * a.head_size, a.head_size)
    else:
        # v1 split: partial results, then (tensor cores) one arrival counter per (sequence, head
        # chunk): the last CTA of each merges the splits in the same launch. Zeroed once here;
        # the kernel resets each counter after use.
        # [exp_sums | max_logits | partials | counters], float32; the partials 16-byte aligned
        # (the in-launch merge reads 4 at a time).
        stats = a.num_seqs * a.num_heads * splits
        padded = -(-stats // 4) * 4
        counters = a.num_seqs * ctas_per_split if mma else 0
        workspace = _interop.empty_like_framework(a.query, (2 * padded + stats * a.head_size + counters,),
                                                  "float32", zero=True)
        ws = workspace.ptr
        counters_ptr = ws + 4 * (2 * padded + stats * a.head_size)
        target = (ws + 8 * padded, ws, ws + 4 * padded,
                  a.num_heads * splits * a.head_size, splits * a.head_size, a.head_size)
    grid = (a.num_seqs, ctas_per_split, splits)
    pitch = a.partitions if a.op == OP_V2 else splits  # partial results per (seq, head)
    args = _decode_args(a, target, pitch, split, tile)
    # Merge v1's splits in the decode launch (last CTA per (sequence, head chunk)) when the grid
    # is one wave: that saves the reduce launch (B8 L4096 66.3 -> 64.9 us, H100). Over several
    # waves the merge tails and per-CTA fences cost more than the launch (fp8 B64 L4096, 3
    # splits: 288 -> 298 us), so the reduce kernel runs there.
    fused = (mma and a.op == OP_V1 and not direct
             and a.num_seqs * ctas_per_split * splits <= FUSED_MERGE_MAX_WAVES * v1_slots)
    # v2 with one partition (on the v1 kernel): the kernel writes out as well as tmp_out.
    single = mma and not parts and a.op == OP_V2 and splits == 1 and split == PARTITION_SIZE
    # v2 on the GQA kernel, one wave: the last CTA of each (sequence, head chunk) merges the
    # partitions from tmp_out, as v1's splits (counters in a zeroed plan workspace).
    # (Only when the merge's weights fit in the shared memory the kernel has anyway: the
    # partition count is the caller's scratch size, unbounded.)
    fused_v2 = (a.op == OP_V2 and mma and not parts and not single and not own_merge
                and isinstance(variant, GqaVariant)
                and V2_FUSED_MERGE and merge_smem_bytes(pitch) <= smem
                and a.num_seqs * ctas_per_split * splits
                <= FUSED_MERGE_MAX_WAVES * (multi_slots if multi else v1_slots))
    if fused_v2:
        workspace = _interop.empty_like_framework(a.query, (a.num_seqs * ctas_per_split,), "float32", zero=True)
    if mma:
        if fused:
            finish = (a.out.ptr, a.out.strides[0], a.out.strides[1], counters_ptr)
            smem = max(smem, merge_smem_bytes(splits))
        elif fused_v2:
            finish = (a.out.ptr, a.out.strides[0], a.out.strides[1], workspace.ptr)
        elif single or own_merge:
            finish = (a.out.ptr, a.out.strides[0], a.out.strides[1], 0)
        else:
            finish = (0, 0, 0, 0)
        launches.append(_interop.LaunchPlan(MMA_DECODE_PARAMS, kernel, a.query, grid, (threads,),
                                            args + (part,) + finish, smem))
    else:
        launches.append(_interop.LaunchPlan(DECODE_PARAMS, kernel, a.query, grid, (THREADS,), args, smem))
    if not direct and not fused and not single and not fused_v2 and not own_merge:
        rv = ReduceVariant(a.query.dtype, out_dtype)
        reduce_kernel = _runtime.get_kernel(REDUCE_FAMILY, rv, device)
        exp_ptr, max_ptr, tmp_ptr = target[1], target[2], target[0]
        launches.append(_interop.LaunchPlan(
            REDUCE_PARAMS, reduce_kernel, a.query, (a.num_seqs, a.num_heads), (THREADS,),
            (a.out.ptr, exp_ptr, max_ptr, tmp_ptr, a.seq_lens.ptr, a.num_heads, a.head_size, part,
             pitch, a.out.strides[0], a.out.strides[1]), 4 * (pitch + 32)))
    return _interop.SequencePlan(launches, keep_alive=workspace)


# paged_decode_kernel's parameter types, line by line as in the .cu signature.
DECODE_PARAMS = _interop.KernelParams((
    "ptr", "ptr", "ptr",                      # out (or partials), exp_sums, max_logits
    "ptr", "ptr", "ptr",                      # query, key_cache, value_cache
    "ptr", "ptr", "ptr",                      # block_tables, seq_lens, alibi_slopes
    "ptr", "ptr",                             # k_scale, v_scale
    "f32", "i32", "i32", "i32", "i32", "i32",  # scale, num_heads, num_kv_heads, group, head_size, log2_bs
    "i32", "i32", "i32",                      # tile_tokens, split_tokens, num_partitions
    "i64", "i64",                             # q_stride_seq, q_stride_head
    "i64", "i64",                             # k_stride_block, k_stride_head
    "i64", "i64",                             # v_stride_block, v_stride_head
    "i64", "i32",                             # block_tables_stride, max_table_tokens
    "i64", "i64", "i64",                      # out_stride_seq, out_stride_head, out_stride_part
    "i32", "i32", "i32", "i32", "i32",        # tp_rank, local_blocks, vert_stride, bs_block, step
))
# paged_decode_mma_kernel: the same list plus part_tokens, then final_out, its seq / head
# strides and the split counters (v1 split merged in the launch; v2 with one partition).
MMA_DECODE_PARAMS = _interop.KernelParams(DECODE_PARAMS.types + ("i32", "ptr", "i64", "i64", "ptr"))
REDUCE_PARAMS = _interop.KernelParams((
    "ptr", "ptr", "ptr", "ptr", "ptr",        # out, exp_sums, max_logits, tmp_out, seq_lens
    "i32", "i32", "i32", "i32",               # num_heads, head_size, split_tokens, num_partitions
    "i64", "i64",                             # out_stride_seq, out_stride_head
))


def _decode_args(a: _Args, target, pitch, split, tile) -> tuple:
    out_ptr, exp_ptr, max_ptr, st_seq, st_head, st_part = target
    tp_rank, bs_local, bs_vert, bs_block, bs_step = a.sparse
    capacity = min(a.block_tables.shape[1] * a.block_size, 2**31 - 1)
    return (
        out_ptr, exp_ptr, max_ptr,
        a.query.ptr, a.key_cache.ptr, a.value_cache.ptr,
        a.block_tables.ptr, a.seq_lens.ptr, 0 if a.alibi is None else a.alibi.ptr,
        0 if a.k_scale is None else a.k_scale.ptr, 0 if a.v_scale is None else a.v_scale.ptr,
        a.scale, a.num_heads, a.num_kv_heads, a.num_heads // a.num_kv_heads, a.head_size,
        a.block_size.bit_length() - 1,
        tile, split, pitch,
        a.query.strides[0], a.query.strides[1],
        a.key_cache.strides[0], a.key_cache.strides[1],
        a.value_cache.strides[0], a.value_cache.strides[1],
        a.block_tables.strides[0], capacity,
        st_seq, st_head, st_part,
        tp_rank, bs_local, bs_vert, bs_block, bs_step,
    )


def _run_reference(a: _Args) -> None:
    """Host arrays: the float64 reference, rounded into the caller's outputs."""
    n = _interop.to_numpy
    kc, vc = a.key_cache, a.value_cache
    key = _interop.host_bytes(kc) if a.kv != "auto" else n(kc)
    val = _interop.host_bytes(vc) if a.kv != "auto" else n(vc)
    kv_dtype = "auto" if a.kv == "auto" else ("fp8_e4m3" if a.kv == "e4m3" else "fp8_e5m2")
    tp_rank, bs_local, bs_vert, bs_block, bs_step = a.sparse
    args = (n(a.query), key, val, a.num_kv_heads, a.scale, n(a.block_tables), n(a.seq_lens),
            a.block_size, a.max_seq_len, None if a.alibi is None else n(a.alibi), kv_dtype,
            _interop.host_scalar(a.k_scale), _interop.host_scalar(a.v_scale),
            tp_rank, bs_local, bs_vert, bs_block, bs_step)
    if a.op == OP_V1:
        _interop.write_host(a.out, reference.paged_attention(*args))
        return
    parts = reference.paged_attention_v2_partials(*args, partition_size=PARTITION_SIZE)
    defined = parts.defined
    pad = a.partitions - defined.shape[2]
    for info, value in ((a.exp_sums, parts.exp_sums), (a.max_logits, parts.max_logits),
                        (a.tmp_out, parts.tmp_out)):
        current = n(info).astype(np.float64)
        mask = np.pad(defined, ((0, 0), (0, 0), (0, pad)))
        widened = np.pad(value, [(0, 0), (0, 0), (0, pad)] + [(0, 0)] * (value.ndim - 3))
        if value.ndim == 4:
            mask = mask[..., None]
        _interop.write_host(info, np.where(mask, widened, current))
    _interop.write_host(a.out, reference.paged_attention_v2_reduce(
        parts.exp_sums, parts.max_logits, parts.tmp_out, n(a.seq_lens), PARTITION_SIZE))
