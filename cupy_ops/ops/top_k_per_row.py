"""top_k_per_row_prefill / top_k_per_row_decode: validate -> cluster size -> launch."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from .. import _checks as C
from .. import _device, _interop, _runtime
from ..reference import top_k_per_row as reference

OP_PREFILL, OP_DECODE = "top_k_per_row_prefill", "top_k_per_row_decode"
DTYPES = ("float32", "float16", "bfloat16")
CLUSTERS = (1, 2, 4, 8)         # CTAs per row (thread-block cluster; > 1 needs sm_90)
THREADS = 512
THREADS_LONG = 1024      # slices of LONG_SLICE+ elements: twice the warps to hide latency
LONG_SLICE = 32768
MAX_TOP_K = reference.MAX_TOP_K
INT32_MAX = 2**31 - 1
MODE = {"prefill": 0, "decode": 1, "decode_2d": 2}  # the kernel's MODE_* constants
BINS, CAND_CAP, GROUP = 4096, 4096, 4                # the kernel's constants
SHORT_CAP = 8192  # the kernel's short-slice path: CTA slices this long keep full keys in shared memory
MIN_COLS_PER_CTA = 4096  # a CTA with fewer columns spends more on cluster barriers than it saves
MAX_MASK_BYTES = 32 * 1024  # step masks for slices up to 128K elements; longer ones go without
STATIC_SMEM_SLACK = 2048  # the kernel's static shared memory (under 1 KB: counters, scan buffer)
# Decode: lay every row out as a logits.shape[1]-long one so the first score loads need no
# seq_lens (the kernel's spec_cols). Only for grids of at most one wave: with several waves a
# short row would keep a full row's work per warp.
SPECULATIVE_DECODE_LOADS = True


@dataclasses.dataclass(frozen=True)
class Variant:
    """Compile-time parameters of top_k_per_row_kernel (row ranges, K, strides are runtime)."""

    dtype: str        # logits
    cluster: int      # CTAs per row
    threads: int = THREADS

    def template_args(self) -> tuple[str, ...]:
        return (_interop.CPP_TYPES[self.dtype], str(self.cluster), str(self.threads))


VARIANTS = tuple(Variant(d, c, t) for d, c, t in itertools.product(DTYPES, CLUSTERS,
                                                                    (THREADS, THREADS_LONG)))
FAMILY = _runtime.KernelFamily(
    op="top_k_per_row", source="top_k_per_row.cu", template="cupy_ops::topk::top_k_per_row_kernel",
    variants=VARIANTS, common=tuple(v for v in VARIANTS if v.dtype == "float32"))


# --------------------------------------------------------------------------------------------
# Public ops

_DOC_COMMON = """
    Output rule (spec §2), per row with candidate range ``[s, e)`` and ``L = e - s``:
    ``L <= topK``: ``indices[r] = [0, 1, ..., L-1, -1, ..., -1]`` (scores not read). Otherwise
    ``topK`` distinct column indices ``c - s`` whose scores are the ``topK`` largest of the range.
    Scores are ordered as float32 order keys: ``-inf`` is the lowest number (and a valid pick
    when fewer than ``topK`` finite scores exist), ``+0.0`` ranks above ``-0.0``, and **NaN ranks
    below -inf** (never picked while enough other candidates exist; never an out-of-range or
    duplicate index). Ties at the k-th score go to the lowest columns, and the picks are written
    in ascending column order, so results are bitwise deterministic (vLLM's order and tie choice
    vary run to run; consumers only use the set).

    Deliberate differences from vLLM (spec §7), all fixing vLLM bugs: no duplicate indices after
    a pass-0 bin overflow (§7a); decode ends are clamped at 0, so ``seq_len < next_n`` rows are
    all ``-1`` instead of a write before the row (§7b); ``-inf`` runs give valid indices (§7d);
    ``stride1`` is honoured for every row length (§7e); ``indices`` may have any strides (vLLM
    assumes row stride ``topK``); ``topK`` may be 1..4096 for any row length (vLLM's shared
    memory limits it to about 3.5K on long rows). fp16 and bf16 logits are accepted too.

    Validation: dtypes, ranks, shapes, devices, ``numRows`` against every tensor, ``topK`` and
    the strides are checked before launch (``CupyOpsTypeError`` / ``CupyOpsValueError``, both
    also ``RuntimeError``). Row ranges live on the GPU and are trusted unless ``validate=True``
    (or the ``CUPY_OPS_VALIDATE`` environment variable) copies them to the host and checks
    them. Without validation the kernel still never reads outside ``logits`` (ranges are
    clamped to the columns ``logits`` holds; a negative length counts as 0) and never writes
    outside ``indices[:numRows, :topK]``.

    torch and CuPy inputs run on the current stream of their device, allocate nothing and may be
    captured in a CUDA graph; NumPy arrays and torch CPU tensors run the NumPy reference.
"""


def top_k_per_row_prefill(logits, rowStarts, rowEnds, indices, numRows, stride0, stride1, topK,
                          *, validate=None) -> None:  # noqa: N803 - vLLM's argument names
    """Top-k column indices of each row's range ``[rowStarts[r], rowEnds[r])``; writes ``indices``.

    Same name, argument order and in-place output as vLLM's ``torch.ops._C.top_k_per_row_prefill``.

    Parameters
    ----------
    logits : [num_rows, num_cols], float32 (float16 / bfloat16 also accepted)
        Scores. Element ``(r, c)`` is read at element offset ``r*stride0 + c*stride1``.
    rowStarts, rowEnds : [>= numRows], int32
        Half-open candidate column range of each row.
    indices : [>= numRows, >= topK], int32
        Output; row ``r`` gets ``topK`` indices relative to ``rowStarts[r]``.
    numRows : int, 0..logits.shape[0]
    stride0, stride1 : int, 0..2**31-1
        Element strides used to address logits (vLLM callers pass ``logits.stride()``).
    topK : int, 1..4096
    validate : bool, keyword-only
        Check the row ranges' values on the host first (default: ``CUPY_OPS_VALIDATE``).
    """
    _run(OP_PREFILL, logits, (rowStarts, rowEnds), indices, numRows, stride0, stride1, topK, 0,
         validate)


def top_k_per_row_decode(logits, next_n, seq_lens, indices, numRows, stride0, stride1, topK,
                         *, validate=None) -> None:  # noqa: N803 - vLLM's argument names
    """Top-k positions of each decode row over ``[0, e)``; writes ``indices``.

    Same name, argument order and in-place output as vLLM's ``torch.ops._C.top_k_per_row_decode``.

    Parameters
    ----------
    logits : [num_rows, max_model_len], float32 (float16 / bfloat16 also accepted)
    next_n : int, >= 1
        Query rows per sequence (1, or more with multi-token prediction).
    seq_lens : [batch] or [batch, next_n], int32
        1-D: the full KV length of each sequence; row ``r`` (sequence ``r // next_n``, offset
        ``j = r % next_n``) sees ``e = max(0, seq_lens[r // next_n] - next_n + j + 1)``
        positions. 2-D (vLLM's later form): each row's own length, ``e = max(0, seq_lens[b, j])``.
    indices : [>= numRows, >= topK], int32
        Output; positions in ``[0, e)``.
    numRows : int
        Rows to compute; at most logits.shape[0], and seq_lens must cover them.
    stride0, stride1 : int, 0..2**31-1
    topK : int, 1..4096
    validate : bool, keyword-only
        Check seq_lens' values on the host first (default: ``CUPY_OPS_VALIDATE``).
    """
    _run(OP_DECODE, logits, (seq_lens,), indices, numRows, stride0, stride1, topK, next_n,
         validate)


top_k_per_row_prefill.__doc__ += _DOC_COMMON
top_k_per_row_decode.__doc__ += _DOC_COMMON


def _run(op, logits, ranges, indices, num_rows, stride0, stride1, top_k, next_n, validate):
    validate = C.validation_requested(op, validate)
    scalars = (num_rows, stride0, stride1, top_k, next_n)
    _interop.planned(_PLANS, (logits,) + ranges + (indices,), (op,) + scalars,
                     lambda: _plan(op, logits, ranges, indices, scalars, validate),
                     cached=not validate).run()


_PLANS = _interop.PlanCache()


# --------------------------------------------------------------------------------------------
# Validation


@dataclasses.dataclass
class _Args:
    op: str
    logits: _interop.ArrayInfo
    ranges: tuple            # (row_starts, row_ends) or (seq_lens,)
    indices: _interop.ArrayInfo
    num_rows: int
    stride0: int
    stride1: int
    top_k: int
    next_n: int              # decode only (0 for prefill)
    mode: int


def _validate(op, logits, ranges, indices, scalars) -> _Args:
    num_rows, stride0, stride1, top_k, next_n = scalars
    num_rows = C.check_int(op, "numRows", num_rows, 0, INT32_MAX)
    stride0 = C.check_int(op, "stride0", stride0, 0, INT32_MAX)
    stride1 = C.check_int(op, "stride1", stride1, 0, INT32_MAX)
    top_k = C.check_int(op, "topK", top_k, 1, MAX_TOP_K)
    d = _interop.describe
    lg = d(op, "logits", logits)
    idx = d(op, "indices", indices)
    C.check_dtype(op, "logits", lg, DTYPES)
    C.check_dtype(op, "indices", idx, ("int32",))
    C.check_rank(op, "logits", lg, 2, "num_rows, num_cols")
    C.check_rank(op, "indices", idx, 2, "num_rows, topK")
    if op == OP_PREFILL:
        names = ("rowStarts", "rowEnds")
        infos = tuple(d(op, n, a) for n, a in zip(names, ranges))
        for n, a in zip(names, infos):
            C.check_dtype(op, n, a, ("int32",))
            C.check_rank(op, n, a, 1, "num_rows")
            if a.shape[0] < num_rows:
                C.fail(op, f"numRows ({num_rows}) exceeds {n}.shape[0] ({a.shape[0]})")
        mode = MODE["prefill"]
        next_n = 0
    else:
        next_n = C.check_int(op, "next_n", next_n, 1, INT32_MAX)
        names = ("seq_lens",)
        sl = d(op, "seq_lens", ranges[0])
        infos = (sl,)
        C.check_dtype(op, "seq_lens", sl, ("int32",))
        if len(sl.shape) == 1:
            needed = -(-num_rows // next_n)
            if sl.shape[0] < needed:
                C.fail(op, f"seq_lens.shape[0] (batch={sl.shape[0]}) must be >= ceil(numRows / "
                           f"next_n) = {needed} (numRows={num_rows}, next_n={next_n})")
            mode = MODE["decode"]
        elif len(sl.shape) == 2:
            if sl.shape[1] != next_n:
                C.fail(op, f"2-D seq_lens must have shape [batch, next_n={next_n}]; got {sl.shape}")
            if sl.shape[0] * sl.shape[1] < num_rows:
                C.fail(op, f"numRows ({num_rows}) exceeds seq_lens.size ({sl.shape[0] * sl.shape[1]})")
            mode = MODE["decode_2d"]
        else:
            C.fail(op, f"seq_lens must have 1 dimension [batch] or 2 [batch, next_n]; got shape {sl.shape}")
    if num_rows > lg.shape[0]:
        C.fail(op, f"numRows ({num_rows}) exceeds logits.shape[0] ({lg.shape[0]})")
    if num_rows > idx.shape[0]:
        C.fail(op, f"numRows ({num_rows}) exceeds indices.shape[0] ({idx.shape[0]})")
    if idx.strides[1] > INT32_MAX:
        C.fail(op, f"indices.stride(1) ({idx.strides[1]}) must be below 2^31")
    if idx.shape[1] < top_k:
        C.fail(op, f"indices.shape[1] ({idx.shape[1]}) is smaller than topK ({top_k})")
    C.check_same_device(op, {"logits": lg, **dict(zip(names, infos)), "indices": idx})
    C.check_no_overlap(op, "indices", idx, {"logits": lg, **dict(zip(names, infos))})
    return _Args(op, lg, infos, idx, num_rows, stride0, stride1, top_k, next_n, mode)


def _row_ranges(a: _Args) -> tuple[np.ndarray, np.ndarray]:
    """Host copies of every row's [s, e) (int64), as the op defines them (spec §2)."""
    if a.op == OP_PREFILL:
        starts = _interop.to_host(a.ranges[0])[:a.num_rows].astype(np.int64)
        ends = _interop.to_host(a.ranges[1])[:a.num_rows].astype(np.int64)
        return starts, ends
    ends = reference.decode_row_ends(a.next_n, _interop.to_host(a.ranges[0]), a.num_rows, op=a.op)
    return np.zeros_like(ends), ends


def _validate_values(a: _Args) -> None:
    """The optional device-to-host check of the row ranges (validate=True)."""
    starts, ends = _row_ranges(a)  # decode: also rejects negative seq_lens
    for name, v in (("rowStarts", starts), ("rowEnds", ends)):
        bad = np.flatnonzero(v < 0)
        if bad.size:
            C.fail(a.op, f"{name}[{int(bad[0])}] must be >= 0; got {int(v[bad[0]])}")
    bad = np.flatnonzero(ends < starts)
    if bad.size:
        r = int(bad[0])
        C.fail(a.op, f"rowEnds[{r}] ({ends[r]}) must be >= rowStarts[{r}] ({starts[r]})")
    lg = a.logits
    reference.check_candidate_addresses(a.op, lg.shape, lg.strides, (0, _extent_elems(lg)),
                                        starts, ends, a.stride0, a.stride1)


def _extent_elems(info) -> int:
    """Elements from logits' first element to the end of its memory (strides are >= 0)."""
    lo, hi = info.extent()
    return (hi - info.ptr) // info.itemsize if hi > lo else 0


# --------------------------------------------------------------------------------------------
# Plans

def threads_for(num_rows: int, num_cols: int, cluster: int) -> int:
    """Threads per CTA: 1024 for long slices (64 x 131072 decode: 58 us vs 74 us with 512 on
    H100), 512 otherwise (short slices lose 5-10% with 1024: more barrier and scan work)."""
    return THREADS_LONG if num_cols // cluster >= LONG_SLICE else THREADS


def launch_shape(num_rows: int, num_cols: int, sm_count: int, arch: int) -> int:
    """CTAs per row: grow the cluster while the grid fills less than one wave of SMs. (The
    kernel takes its short-slice path wherever a CTA's slice has at most SHORT_CAP scores.)"""
    cluster = 1
    if arch < 90:
        return cluster
    while (cluster < CLUSTERS[-1] and num_rows * cluster * 2 <= sm_count
           and num_cols // (cluster * 2) >= MIN_COLS_PER_CTA):
        cluster *= 2
    return cluster


def smem_bytes(cluster: int, cache_elems: int, num_cols: int = 0, threads: int = THREADS) -> int:
    """Dynamic shared memory: histogram, cluster sums, candidate keys and element numbers,
    16-bit key prefixes, and (where they fit) two 32-bit masks per 32-element step of the
    longest slice: the gather's notes that let the write skip every key."""
    words = BINS + (BINS if cluster > 1 else 0) + 2 * CAND_CAP
    return 4 * words + 2 * cache_elems + mask_bytes(cluster, num_cols, threads)


def mask_bytes(cluster: int, num_cols: int, threads: int = THREADS) -> int:
    steps = (threads // 32) * _segment(cluster, num_cols, threads) // 32
    return 8 * steps if 8 * steps <= MAX_MASK_BYTES else 0


def _segment(cluster: int, num_cols: int, threads: int = THREADS) -> int:
    """Elements per warp segment (a multiple of 32) of the longest slice of a num_cols row."""
    warps = threads // 32
    slice_elems = GROUP * -(-(-(-num_cols // GROUP) + 1) // cluster)  # +1: an unaligned start
    return 32 * -(-slice_elems // (32 * warps))


def cache_elems_for(cluster: int, num_cols: int, max_smem: int, many_rows: bool = False,
                    threads: int = THREADS) -> int:
    """Key prefixes a CTA keeps in shared memory: its whole slice of a num_cols row, or what fits.

    The slice is split into one segment per warp (a multiple of 32 elements each); each warp
    gets the same number of cache slots. Slices of up to SHORT_CAP scores get room for their
    full keys instead (the kernel's short-slice path reads that region as 32-bit keys).
    many_rows: the grid has several waves; leave room for two CTAs per SM.
    """
    warps = threads // 32
    need = warps * _segment(cluster, num_cols, threads)
    if num_cols <= cluster * SHORT_CAP:
        need = max(need, 2 * SHORT_CAP)  # room for the full 32-bit keys of the short-slice path
    budget = max_smem // 2 if many_rows else max_smem
    room = (budget - STATIC_SMEM_SLACK - smem_bytes(cluster, 0, num_cols, threads)) // 2
    room = room // (GROUP * warps) * GROUP * warps
    return max(0, min(need, room))


def spec_cols(op: str, ctas: int, ctas_per_sm: int, num_cols: int, sm_count: int) -> int:
    """The kernel's spec_cols: the row length decode rows are laid out for before their
    seq_lens arrive (0: lay each row out from its own length, as prefill rows always are).
    Only when all ``ctas`` run in one wave of ``ctas_per_sm`` per SM."""
    if op != OP_DECODE or not SPECULATIVE_DECODE_LOADS or ctas > ctas_per_sm * sm_count:
        return 0
    return min(num_cols, 2**31 - 1)


def ctas_per_sm(threads: int, smem: int, max_smem: int) -> int:
    """CTAs of the kernel that share an SM: the launch bounds allow two 512-thread CTAs (one of
    1024 threads), if their shared memory fits beside each other."""
    by_threads = 2 if threads <= THREADS else 1
    return max(1, min(by_threads, max_smem // max(1, smem + STATIC_SMEM_SLACK)))


def _plan(op, logits, ranges, indices, scalars, validate):
    a = _validate(op, logits, ranges, indices, scalars)
    if validate or a.logits.device is None:
        _validate_values(a)
    if a.logits.device is None:
        return _interop.HostPlan(_run_reference, a)
    if a.num_rows == 0:
        return _interop.NoOpPlan()
    device = a.logits.device
    num_cols = a.logits.shape[1]
    sm_count = _device.sm_count(device)
    cluster = launch_shape(a.num_rows, num_cols, sm_count, _device.arch(device))
    threads = threads_for(a.num_rows, num_cols, cluster)
    cache_elems = cache_elems_for(cluster, num_cols, _device.max_dynamic_smem(device),
                                  many_rows=a.num_rows >= 2 * sm_count, threads=threads)
    variant = Variant(a.logits.dtype, cluster, threads)
    kernel = _runtime.get_kernel(FAMILY, variant, device)
    smem = smem_bytes(cluster, cache_elems, num_cols, threads)
    per_sm = ctas_per_sm(threads, smem, _device.max_dynamic_smem(device))
    r0 = a.ranges[0]
    r1 = a.ranges[1] if len(a.ranges) > 1 else a.ranges[0]
    r0_strides = tuple(r0.strides) + (0,) * (2 - len(r0.strides))
    args = (a.logits.ptr, _extent_elems(a.logits), a.stride0, a.stride1,
            r0.ptr, r0_strides[0], r0_strides[1],
            r1.ptr, r1.strides[0],
            a.indices.ptr, a.indices.strides[0], a.indices.strides[1],
            a.num_rows, a.top_k, a.mode, max(1, a.next_n), cache_elems,
            mask_bytes(cluster, num_cols, threads) // 8,
            spec_cols(a.op, a.num_rows * cluster, per_sm, num_cols, sm_count))
    return _interop.LaunchPlan(PARAMS, kernel, a.logits, (a.num_rows * cluster,), (variant.threads,),
                               args, smem)


# top_k_per_row_kernel's parameter types, line by line as in the .cu signature.
PARAMS = _interop.KernelParams((
    "ptr", "i64", "i64", "i64",    # logits, logits_extent, stride0, stride1
    "ptr", "i64", "i64",           # row_a (starts / seq_lens), its strides
    "ptr", "i64",                  # row_b (ends), its stride
    "ptr", "i64", "i32",           # out, out_stride0, out_stride1
    "i32", "i32", "i32", "i32", "i32", "i32",  # num_rows, top_k, mode, next_n, cache_elems, mask_steps
    "i32",                         # spec_cols
))


def _run_reference(a: _Args) -> None:
    """Host arrays: the NumPy reference, written into the caller's indices."""
    n = _interop.to_numpy
    if a.op == OP_PREFILL:
        result = reference.top_k_per_row_prefill(
            n(a.logits), n(a.ranges[0]), n(a.ranges[1]), a.num_rows, a.stride0, a.stride1, a.top_k)
    else:
        result = reference.top_k_per_row_decode(
            n(a.logits), a.next_n, n(a.ranges[0]), a.num_rows, a.stride0, a.stride1, a.top_k)
    n(a.indices)[:a.num_rows, :a.top_k] = result  # a view of the caller's array
