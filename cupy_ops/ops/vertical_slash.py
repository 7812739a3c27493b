"""convert_vertical_slash_indexes(_mergehead): validate -> choose variant -> geometry -> launch
(or the NumPy reference). Spec: ../shared/spec/vertical_slash.md; kernel: cuda_src/vertical_slash.cu."""

from __future__ import annotations

import dataclasses
import itertools
import types

import numpy as np

from .. import _checks as C
from .. import _device, _interop, _runtime
from ..reference import vertical_slash as reference

OP = "convert_vertical_slash_indexes"
OP_MERGEHEAD = "convert_vertical_slash_indexes_mergehead"
BLOCK_SIZES = (32, 64, 128)   # block_size_M == block_size_N; vLLM always uses 64
THREADS = 256                 # 8 warps: one query tile per warp at a time
# Thread blocks per SM the geometry aims for. Each block copies its head's index rows to shared
# memory once, so fewer, longer blocks save that copy; 4 per SM keep 32 warps resident
# (52 KB of shared memory per block at NNZ_S 6000, NNZ_V 1000). The plan caps it at what one
# SM really holds (occupancy query), so that the grid is a single wave.
BLOCKS_PER_SM = 4
MAX_STAGED_NNZ_S = 65535      # the staged kernel keeps slash indices in 16 bits
SMEM_RESERVED_BYTES = 1024    # the kernel's static shared memory (per-warp totals), rounded up
INT32_MAX = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class Variant:
    """Compile-time parameters of vertical_slash_kernel (sizes and counts are runtime)."""

    block: int          # block_size_M == block_size_N
    causal: bool
    mergehead: bool     # per-head counts; writes only the defined entries (no zero fill)
    staged: bool        # index rows in shared memory (False: rows too long, read from global)
    threads: int = THREADS

    def template_args(self) -> tuple[str, ...]:
        b = lambda x: "true" if x else "false"  # noqa: E731
        return (str(self.block), b(self.causal), b(self.mergehead), b(self.staged), str(self.threads))


VARIANTS = tuple(Variant(bs, c, m, s) for bs, c, m, s in
                 itertools.product(BLOCK_SIZES, (False, True), (False, True), (True, False)))
FAMILY = _runtime.KernelFamily(
    op="vertical_slash", source="vertical_slash.cu", template="cupy_ops::vertical_slash_kernel",
    variants=VARIANTS, common=tuple(v for v in VARIANTS if v.block == 64 and v.staged))

_DEVIATIONS = """
    Deliberate differences from vLLM
    --------------------------------
    - Outputs are allocated by the inputs' framework on their device (torch in -> torch out, CuPy
      in -> CuPy out; NumPy or torch CPU in -> the float64 reference, NumPy or torch CPU out),
      and the kernel runs on the caller's current stream (vLLM: the legacy default stream).
    - Checks that need no device data raise before any launch: int32 dtypes, ranks and shapes,
      contiguity, one device, block_size_M == block_size_N in {32, 64, 128}, NNZ_V, NNZ_S >= 1,
      and ``out``. Checks of values on the GPU (context_size >= max(q_seqlens), kv >= 1 and
      kv >= q in causal mode, counts in [1, NNZ], indices in range and sorted, slashes >= 0)
      copy the inputs to the host, so they run only with ``validate=True`` or the environment
      variable CUPY_OPS_VALIDATE=1 (NumPy inputs are always checked). Without them the kernel
      still never hangs or writes out of bounds (vLLM can do both): tiles past
      ceil(context_size / block_size_M) are not written, counts are clamped to [1, NNZ], and no
      row receives more entries than its capacity; the result of invalid input is then
      meaningless but bounded.
    - Zero-size outputs (B, H or N_ROWS == 0) return without a launch.
"""


def convert_vertical_slash_indexes(q_seqlens, kv_seqlens, vertical_indexes, slash_indexes,
                                   context_size, block_size_M, block_size_N, causal=True, *,
                                   out=None, validate=None):
    """Per-query-tile sparse layout from MInference vertical and slash indexes (vLLM's op).

    Same name, argument order, defaults and returned 4-tuple as
    ``vllm._custom_ops.convert_vertical_slash_indexes``.

    Parameters
    ----------
    q_seqlens : [B] int32
        Queries per batch item, 0 <= q_seqlens[b] <= context_size.
    kv_seqlens : [B] int32
        Keys per batch item; >= 1 where q_seqlens[b] > 0, and >= q_seqlens[b] in causal mode.
    vertical_indexes : [B, H, NNZ_V] int32, NNZ_V >= 1
        Key columns, ascending per (b, h), each in [0, kv_seqlens[b]).
    slash_indexes : [B, H, NNZ_S] int32, NNZ_S >= 1
        Diagonal offsets (0 = main diagonal), >= 0, descending per (b, h). B, H and NNZ_S are
        taken from this shape.
    context_size : int
        >= max(q_seqlens); sets N_ROWS = ceil(context_size / block_size_M).
    block_size_M, block_size_N : int
        Query tile height and key block width: equal, one of 32, 64 (vLLM's), 128.
    causal : bool, default True
        True: the queries are the last q of the kv keys (causal "intra" chunk); False: every key
        precedes every query ("succ"/"inter" chunks).
    out : tuple of 4 arrays, keyword-only, optional
        ``(block_count, block_offset, column_count, column_index)`` to write into instead of
        allocating (so the call can be captured in a CUDA graph): int32, contiguous, the shapes
        below, on the inputs' device. Every element is overwritten. The same tuple is returned.
    validate : bool, keyword-only, optional
        Also check the input *values* (copies them to the host and synchronises; see below).
        Default: the CUPY_OPS_VALIDATE environment variable.

    All arrays: dense row-major, one device; torch tensors or CuPy arrays (anything with
    ``__dlpack__`` / ``__cuda_array_interface__`` works as CuPy) run the GPU kernel on the current
    stream of that device, NumPy arrays and torch CPU tensors run the NumPy reference.

    Returns
    -------
    block_count : [B, H, N_ROWS] int32
    block_offset : [B, H, N_ROWS, NNZ_S] int32
        In row (b, h, r), the first block_count[b, h, r] entries: strictly ascending raw key
        positions (not multiples of block_size_N) in [0, kv), each the start of a block_size_N
        wide key block.
    column_count : [B, H, N_ROWS] int32
    column_index : [B, H, N_ROWS, NNZ_V] int32
        The first column_count[b, h, r] entries: ascending key columns outside every block.

    Every other entry is zero, as in vLLM (its wrapper zero-fills; here the kernel writes the
    zeros in the same pass). Rows with r * block_size_M >= q_seqlens[b] are all zero.
    Results are bit-identical to ``cupy_ops.reference.vertical_slash`` (spec §4).

    Performance: the kernel writes every output element, 4 * B*H*N_ROWS*(2 + NNZ_S + NNZ_V)
    bytes, which bounds it (e.g. 459 MB at B1 H32 ctx 32768 NNZ_S 6000 NNZ_V 1000). The
    mergehead op writes only the defined entries; with counts equal to NNZ it gives the same
    defined entries much faster.

    Raises
    ------
    CupyOpsTypeError (TypeError, RuntimeError): a non-int32 array, or a scalar of the wrong type.
    CupyOpsValueError (ValueError, RuntimeError): wrong rank, shape, contiguity or device, bad
        block sizes, a bad ``out``; with validation, bad values.
    """
    return _call(OP, (q_seqlens, kv_seqlens, vertical_indexes, slash_indexes, None, None),
                 (context_size, block_size_M, block_size_N, causal), out, validate)


def convert_vertical_slash_indexes_mergehead(q_seqlens, kv_seqlens, vertical_indexes,
                                             slash_indexes, vertical_indices_count,
                                             slash_indices_count, context_size, block_size_M,
                                             block_size_N, causal=True, *, out=None,
                                             validate=None):
    """As ``convert_vertical_slash_indexes``, with per-head valid lengths (vLLM's mergehead op).

    Same name, argument order, defaults and returned 4-tuple as
    ``vllm._custom_ops.convert_vertical_slash_indexes_mergehead``.

    Extra parameters
    ----------------
    vertical_indices_count : [H] int32, each in [1, NNZ_V]
    slash_indices_count : [H] int32, each in [1, NNZ_S]
        Valid prefix length of head h's vertical / slash rows (shared by every batch item). Only
        these prefixes are read; the rest of a row is padding (the DCA caller pads verticals with
        INT32_MAX and slashes with INT32_MIN).

    Returns
    -------
    The four arrays of the plain op, with the same shapes (widths NNZ_S / NNZ_V of the buffers).
    Defined entries, as in vLLM: for each (b, h), rows r < ceil(q_seqlens[b] / block_size_M) of
    block_count and column_count, and in those rows the first block_count / column_count entries
    of block_offset / column_index. They equal the plain op applied to the rows trimmed to the
    counts. Every other entry is left as it was: uninitialised memory in freshly allocated
    outputs (vLLM: ``torch.empty``), the caller's values with ``out=``. The NumPy path fills them
    with 0. ``cupy_ops.reference.vertical_slash.defined_entries`` gives the masks.
    """
    return _call(OP_MERGEHEAD, (q_seqlens, kv_seqlens, vertical_indexes, slash_indexes,
                                vertical_indices_count, slash_indices_count),
                 (context_size, block_size_M, block_size_N, causal), out, validate)


for _fn in (convert_vertical_slash_indexes, convert_vertical_slash_indexes_mergehead):
    if _fn.__doc__:  # None under python -OO
        _fn.__doc__ += _DEVIATIONS
_PLANS = _interop.PlanCache()


def _call(op, inputs, scalars, out, validate):
    validate = C.validation_requested(op, validate)
    outs = _out_tuple(op, out)
    arrays = inputs + (outs if outs is not None else (None,) * 4)
    plan = _interop.planned(_PLANS, arrays, (op,) + tuple(scalars), lambda: _plan(op, arrays, scalars))
    if validate and isinstance(plan, (_GpuPlan, _EmptyPlan)):
        _validate_values(op, inputs, scalars)
    return plan.run(outs)


def _out_tuple(op, out):
    if out is None:
        return None
    if not isinstance(out, (tuple, list)) or len(out) != 4:
        got = type(out).__name__ + (f" of length {len(out)}" if isinstance(out, (tuple, list)) else "")
        C.fail(op, "out must be a tuple (block_count, block_offset, column_count, column_index); "
                   f"got {got}", kind=C.CupyOpsTypeError)
    return tuple(out)


# --------------------------------------------------------------------------------------------
# Validation

OUT_NAMES = ("block_count", "block_offset", "column_count", "column_index")


@dataclasses.dataclass
class _Args:
    op: str
    inputs: tuple          # ArrayInfo: q, kv, vert, slash, v_count (or None), s_count (or None)
    outs: tuple | None     # ArrayInfo x 4, or None
    batch: int
    heads: int
    nnz_v: int
    nnz_s: int
    n_rows: int
    context_size: int
    block: int
    causal: bool
    device: int | None

    @property
    def mergehead(self) -> bool:
        return self.op == OP_MERGEHEAD

    def out_shapes(self) -> tuple:
        B, H, R = self.batch, self.heads, self.n_rows
        return (B, H, R), (B, H, R, self.nnz_s), (B, H, R), (B, H, R, self.nnz_v)


def _validate(op, arrays, scalars) -> _Args:
    """Every check that needs no device data (spec §6, §10.5)."""
    context_size, block_size_M, block_size_N, causal = scalars
    context_size = C.check_int(op, "context_size", context_size, 0, INT32_MAX)
    bm = C.check_int(op, "block_size_M", block_size_M, 1, INT32_MAX)
    bn = C.check_int(op, "block_size_N", block_size_N, 1, INT32_MAX)
    if not isinstance(causal, (bool, np.bool_)):
        C.fail(op, f"causal must be a bool; got {type(causal).__name__}", kind=C.CupyOpsTypeError)
    if bm != bn:
        C.fail(op, f"block_size_M ({bm}) must equal block_size_N ({bn}): the algorithm merges "
                   "ranges in steps of block_size_M and could overflow block_offset otherwise")
    if bm not in BLOCK_SIZES:
        C.fail(op, f"block_size_M must be one of {', '.join(map(str, BLOCK_SIZES))}; got {bm}")

    q, kv, vert, slash, v_count, s_count, *out_objs = arrays
    names = ("q_seqlens", "kv_seqlens", "vertical_indexes", "slash_indexes",
             "vertical_indices_count", "slash_indices_count")
    needed = 6 if op == OP_MERGEHEAD else 4
    infos = [_interop.describe(op, name, obj)
             for name, obj in zip(names[:needed], (q, kv, vert, slash, v_count, s_count))]
    for name, info in zip(names, infos):
        C.check_dtype(op, name, info, ("int32",))
    qi, kvi, vi, si = infos[:4]
    C.check_rank(op, "slash_indexes", si, 3, "B, H, NNZ_S")
    B, H, nnz_s = si.shape
    C.check_shape(op, "vertical_indexes", vi, (B, H, None), "B, H, NNZ_V")
    nnz_v = vi.shape[2]
    C.check_shape(op, "q_seqlens", qi, (B,), "B")
    C.check_shape(op, "kv_seqlens", kvi, (B,), "B")
    if op == OP_MERGEHEAD:
        C.check_shape(op, "vertical_indices_count", infos[4], (H,), "H")
        C.check_shape(op, "slash_indices_count", infos[5], (H,), "H")
    if nnz_v == 0:
        C.fail(op, "vertical_indexes.shape[2] (NNZ_V) must be >= 1; got 0")
    if nnz_s == 0:
        C.fail(op, "slash_indexes.shape[2] (NNZ_S) must be >= 1; got 0")
    for name, info in zip(names, infos):
        C.check_contiguous(op, name, info)
    n_rows = -(-context_size // bm)
    if B * H * max(n_rows, 1) > INT32_MAX:
        C.fail(op, f"B * H * N_ROWS must be below 2^31; got {B} * {H} * {n_rows}")

    outs = None
    everything = dict(zip(names, infos))
    if out_objs[0] is not None:
        outs = tuple(_interop.describe(op, f"out[{i}] ({n})", o)
                     for i, (n, o) in enumerate(zip(OUT_NAMES, out_objs)))
        shapes = ((B, H, n_rows), (B, H, n_rows, nnz_s), (B, H, n_rows), (B, H, n_rows, nnz_v))
        dims = ("B, H, N_ROWS", "B, H, N_ROWS, NNZ_S", "B, H, N_ROWS", "B, H, N_ROWS, NNZ_V")
        for i, (name, info, shape, dim) in enumerate(zip(OUT_NAMES, outs, shapes, dims)):
            label = f"out[{i}] ({name})"
            C.check_dtype(op, label, info, ("int32",))
            C.check_shape(op, label, info, shape, dim)
            C.check_contiguous(op, label, info)
        everything.update({f"out[{i}] ({n})": o for i, (n, o) in enumerate(zip(OUT_NAMES, outs))})
    device = C.check_same_device(op, everything)
    if outs is not None:
        for i, (name, info) in enumerate(zip(OUT_NAMES, outs)):
            others = {f"out[{j}] ({n})": o for j, (n, o) in enumerate(zip(OUT_NAMES, outs)) if j != i}
            others.update(dict(zip(names, infos)))
            C.check_no_overlap(op, f"out[{i}] ({name})", info, others)
    infos += [None] * (6 - len(infos))
    return _Args(op, tuple(infos), outs, B, H, nnz_v, nnz_s, n_rows, context_size, bm,
                 bool(causal), device)


def _validate_values(op, inputs, scalars) -> None:
    """validate=True: copy the index arrays to the host and run the reference's value checks."""
    host = [None if x is None else _interop.to_host(_interop.describe(op, "input", x))
            for x in inputs]
    reference.check_arguments(op, *host, *scalars, mergehead=op == OP_MERGEHEAD)


# --------------------------------------------------------------------------------------------
# Variant choice and geometry (pure: testable without a GPU)

def _smem_limit(device: int) -> int:
    """Dynamic shared memory a launch may take (tests patch this to force the global kernel)."""
    return _device.max_dynamic_smem(device) - SMEM_RESERVED_BYTES


def smem_bytes(nnz_v: int, nnz_s: int) -> int:
    """Dynamic shared memory of a staged launch: the slash row, its jump list, the vertical row."""
    return 4 * (2 * nnz_s + nnz_v)


def choose_variant(block: int, causal: bool, mergehead: bool, nnz_v: int, nnz_s: int,
                   smem_limit: int) -> Variant:
    """The staged kernel whenever a head's rows fit in shared memory (2 * NNZ_S + NNZ_V up to
    about 57 000 on H100's 227 KB); the global-memory kernel for longer rows."""
    staged = smem_bytes(nnz_v, nnz_s) <= smem_limit and nnz_s <= MAX_STAGED_NNZ_S
    return Variant(block, bool(causal), bool(mergehead), staged)


def launch_geometry(batch: int, heads: int, n_rows: int, sm_count: int,
                    threads: int = THREADS, blocks_per_sm: int = BLOCKS_PER_SM) -> tuple[int, int]:
    """(row_chunks, grid): each (b, h) gets row_chunks thread blocks, as many as fit in one
    wave of blocks_per_sm blocks per SM (rounded down: every block does the same amount of
    work, so a partial second wave would cost nearly a whole block time), but never fewer tiles
    per block than warps. B1 H32 ctx 32768 on 132 SMs at 4 blocks per SM: 16 blocks per head of
    32 tiles each (512 blocks; rounding up gave 544 > 528 slots and a second wave)."""
    warps = threads // 32
    wanted = max(1, blocks_per_sm) * sm_count // max(batch * heads, 1)
    row_chunks = max(1, min(wanted, -(-n_rows // warps)))
    return row_chunks, batch * heads * row_chunks


# vertical_slash_kernel's parameter types, line by line as in the .cu signature.
PARAMS = _interop.KernelParams((
    "ptr", "ptr", "ptr", "ptr",    # block_count, block_offset, column_count, column_index
    "ptr", "ptr",                  # q_seqlens, kv_seqlens
    "ptr", "ptr",                  # vertical_indexes, slash_indexes
    "ptr", "ptr",                  # vertical_indices_count, slash_indices_count (0: plain op)
    "i32", "i32", "i32", "i32", "i32",  # num_heads, n_rows, nnz_v, nnz_s, row_chunks
))


def _kernel_args(out_ptrs, a: _Args, row_chunks: int) -> tuple:
    """Values for PARAMS, in the kernel's order."""
    q, kv, vert, slash, v_count, s_count = a.inputs
    return (
        *out_ptrs,
        q.ptr, kv.ptr,
        vert.ptr, slash.ptr,
        v_count.ptr if v_count is not None else 0, s_count.ptr if s_count is not None else 0,
        a.heads, a.n_rows, a.nnz_v, a.nnz_s, row_chunks,
    )


# --------------------------------------------------------------------------------------------
# Plans

def _plan(op, arrays, scalars):
    a = _validate(op, arrays, scalars)
    if a.device is None:
        return _interop.HostPlan(_run_reference, a, scalars)
    where = types.SimpleNamespace(framework=a.inputs[0].framework, device=a.device)
    if a.batch * a.heads * a.n_rows == 0:
        return _EmptyPlan(where, a.out_shapes())
    variant = choose_variant(a.block, a.causal, a.mergehead, a.nnz_v, a.nnz_s, _smem_limit(a.device))
    kernel = _runtime.get_kernel(FAMILY, variant, a.device)
    smem = smem_bytes(a.nnz_v, a.nnz_s) if variant.staged else 0
    per_sm = min(BLOCKS_PER_SM, _device.resident_blocks(kernel, THREADS, smem))
    row_chunks, grid = launch_geometry(a.batch, a.heads, a.n_rows, _device.sm_count(a.device),
                                       blocks_per_sm=per_sm)
    return _GpuPlan(a, kernel, where, grid, smem, row_chunks)


class _GpuPlan:
    """A validated GPU call. With ``out=`` (whose pointers are in the cache key) the launch is
    packed once; otherwise each call allocates the outputs and packs their pointers."""

    __slots__ = ("kernel", "where", "grid", "smem", "shapes", "template", "fixed")

    def __init__(self, a: _Args, kernel, where, grid, smem, row_chunks):
        self.kernel, self.where, self.grid, self.smem = kernel, where, grid, smem
        self.shapes = a.out_shapes()
        self.template = _kernel_args((0, 0, 0, 0), a, row_chunks)  # numbers only, no arrays
        self.fixed = None
        if a.outs is not None:
            self.fixed = self._launch_plan(tuple(o.ptr for o in a.outs))

    def _launch_plan(self, out_ptrs):
        return _interop.LaunchPlan(PARAMS, self.kernel, self.where, (self.grid,), (THREADS,),
                                   tuple(out_ptrs) + self.template[4:], self.smem)

    def run(self, outs):
        if outs is not None:
            self.fixed.run()
            return outs
        bufs = [_interop.empty_like_framework(self.where, shape, "int32") for shape in self.shapes]
        self._launch_plan(tuple(b.ptr for b in bufs)).run()
        return tuple(b.obj for b in bufs)


class _EmptyPlan:
    """B, H or N_ROWS is 0: every output is empty; nothing to launch."""

    __slots__ = ("where", "shapes")

    def __init__(self, where, shapes):
        self.where, self.shapes = where, shapes

    def run(self, outs):
        if outs is not None:
            return outs
        return tuple(_interop.empty_like_framework(self.where, s, "int32").obj for s in self.shapes)


def _run_reference(a: _Args, scalars, outs):
    """Host arrays: the NumPy reference (validates every value)."""
    host = [None if x is None else _interop.to_numpy(x) for x in a.inputs]
    if a.mergehead:
        values, defined = reference.convert_vertical_slash_indexes_mergehead(
            *host, *scalars, return_defined=True)
    else:
        values = reference.convert_vertical_slash_indexes(*host[:4], *scalars)
        defined = None
    if outs is not None:
        for info, value, mask in zip(a.outs, values, defined or (None,) * 4):
            # to_numpy views the caller's int32 memory (NumPy or torch CPU): write through it.
            np.copyto(_interop.to_numpy(info), value, where=True if mask is None else mask)
        return outs
    if a.inputs[0].framework == "torch":
        import torch
        return tuple(torch.from_numpy(v) for v in values)
    return tuple(values)
