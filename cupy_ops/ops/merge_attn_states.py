"""merge_attn_states: validate -> choose variant -> geometry -> launch (or the NumPy reference)."""

from __future__ import annotations

import dataclasses
import itertools


from .. import _checks as C
from .. import _device, _interop, _runtime
from ..reference import merge_attn_states as reference

OP = "merge_attn_states"
DTYPES = ("float32", "float16", "bfloat16")
ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2}
VEC_BYTES = (2, 4, 8, 16)
# 256 threads x 4 vectors of each input in flight per thread. H200 (docs/perf.md, m3): ahead of
# the 512 x 2 that won on H100 by 4% on large merges (65536x32x128 bf16 421.8 vs 439.9 us) and
# 2-4% on mid-size ones; on H100 it was 1% behind on large merges and 4% on mid-size ones.
THREADS = 256
UNROLL = 4


@dataclasses.dataclass(frozen=True)
class Variant:
    """Compile-time parameters of merge_attn_states_kernel (head size and counts are runtime)."""

    dtype: str          # inputs and output share it
    vec_bytes: int      # bytes per vector access: 16 is the fast path, less for odd sizes/offsets
    lse_base2: bool     # base-2 LSEs (FlashInfer) instead of natural-log (FlashAttention, vLLM)
    threads: int = THREADS
    unroll: int = UNROLL

    def template_args(self) -> tuple[str, ...]:
        return (_interop.CPP_TYPES[self.dtype], str(self.vec_bytes), str(self.threads),
                str(self.unroll), "true" if self.lse_base2 else "false")


def supported(v: Variant) -> bool:
    # A vector must hold a whole number of elements: fp32 has no 2-byte vectors.
    return v.vec_bytes >= ITEMSIZE[v.dtype]


VARIANTS = tuple(v for v in (Variant(d, b, l) for d, b, l in
                             itertools.product(DTYPES, VEC_BYTES, (False, True))) if supported(v))
FAMILY = _runtime.KernelFamily(
    op=OP, source="merge_attn_states.cu", template="cupy_ops::merge_attn_states_kernel",
    variants=VARIANTS,
    common=tuple(v for v in VARIANTS if v.vec_bytes == 16 and not v.lse_base2))


def merge_attn_states(output, prefix_output, prefix_lse, suffix_output, suffix_lse,
                      output_lse=None, *, lse_base2: bool = False) -> None:
    """Merge two partial attention results by their log-sum-exp; writes ``output`` in place.

    Same name, argument order and semantics as ``vllm._custom_ops.merge_attn_states``.

    Parameters
    ----------
    output : [num_tokens, num_heads, head_size], float32 / float16 / bfloat16
        Destination. May be the very same view as ``prefix_output`` or ``suffix_output``
        (in-place merge); any other overlap with an input is rejected.
    prefix_output, suffix_output : [num_tokens, num_heads, head_size], same dtype as output
        The two partial results, each normalised over its own (disjoint) key set.
    prefix_lse, suffix_lse : [num_heads, num_tokens], float32
        Their log-sum-exp values (natural log, as FlashAttention returns them). ``+inf`` and
        ``-inf`` both mean "this side saw no keys".
    output_lse : [num_heads, num_tokens], float32, optional
        Destination for the merged LSE; nothing is written to any LSE buffer when omitted.
    lse_base2 : bool, keyword-only, default False
        Extension: the LSEs are base-2 (FlashInfer's convention) and ``output_lse`` is written
        in base 2. The vLLM call is unchanged when it is left out.

    Layout: the head_size dimension must have stride 1; token and head strides are free (e.g.
    slices of a larger buffer), as are the LSE strides (vLLM requires contiguous LSEs and
    silently corrupts results otherwise). head_size may be any positive size: multiples of
    16 bytes with 16-byte aligned pointers/strides take 16-byte vector accesses, other shapes
    narrower ones. All arrays on one device; torch and CuPy inputs launch on the current stream
    of that device; NumPy arrays and torch CPU tensors run the float64 reference and round.

    Notes
    -----
    Per token and head, in fp32: ``a = e^p / (e^p + e^s)``, ``b = 1 - a``,
    ``out = a * prefix + b * suffix``, ``lse = log(e^p + e^s)`` (computed stably).

    - Both LSEs -inf (or NaN paired with -inf): output is a bit copy of prefix_output and the
      LSE -inf, as vLLM's CUDA kernel does (its Triton fallback returns NaN there).
    - One side with weight exactly 0: output is a bit copy of the other side, LSE the other
      LSE. Deliberate difference from vLLM, which computes ``0 * x + 1 * y`` and so spreads
      NaN/garbage from an empty side's (often uninitialised) buffer.
    - Other NaN LSEs give NaN output and LSE.
    - vLLM restricts head_size to multiples of 16 bytes on its CUDA path and reads the suffix
      with the prefix's head stride on its Triton path (silent corruption); we honour every
      array's own strides.

    Raises
    ------
    CupyOpsTypeError (TypeError, RuntimeError): wrong dtype or array type.
    CupyOpsValueError (ValueError, RuntimeError): wrong shape, stride, device or overlap.
    """
    arrays = (output, prefix_output, prefix_lse, suffix_output, suffix_lse, output_lse)
    _interop.planned(_PLANS, arrays, (bool(lse_base2),),
                     lambda: _plan(*arrays, lse_base2=bool(lse_base2))).run()


_PLANS = _interop.PlanCache()


def _plan(output, prefix_output, prefix_lse, suffix_output, suffix_lse, output_lse, lse_base2):
    """Validate, choose the variant and geometry, load the kernel: everything but the launch."""
    out, pre, plse, suf, slse, olse = _validate(output, prefix_output, prefix_lse, suffix_output,
                                                suffix_lse, output_lse)
    num_tokens, num_heads, head_size = out.shape
    if out.device is None:
        return _interop.HostPlan(_run_reference, out, pre, plse, suf, slse, olse, lse_base2)
    if num_tokens == 0 or num_heads == 0 or head_size == 0:
        return _interop.NoOpPlan()
    variant = choose_variant(out, pre, suf, lse_base2)
    vecs_per_head = head_size * out.itemsize // variant.vec_bytes
    grid, tokens_per_block = launch_geometry(num_tokens, num_heads, vecs_per_head,
                                             _device.sm_count(out.device), variant.threads,
                                             variant.unroll)
    kernel = _runtime.get_kernel(FAMILY, variant, out.device)
    return _interop.LaunchPlan(
        PARAMS, kernel, out, (grid,), (variant.threads,),
        _kernel_args(out, olse, pre, plse, suf, slse, vecs_per_head, tokens_per_block))


def _validate(output, prefix_output, prefix_lse, suffix_output, suffix_lse, output_lse):
    d = _interop.describe
    out = d(OP, "output", output)
    pre = d(OP, "prefix_output", prefix_output)
    plse = d(OP, "prefix_lse", prefix_lse)
    suf = d(OP, "suffix_output", suffix_output)
    slse = d(OP, "suffix_lse", suffix_lse)
    olse = _interop.describe_optional(OP, "output_lse", output_lse)

    C.check_dtype(OP, "output", out, DTYPES)
    C.check_same_dtype(OP, {"output": out, "prefix_output": pre, "suffix_output": suf})
    for name, lse in (("prefix_lse", plse), ("suffix_lse", slse), ("output_lse", olse)):
        if lse is not None:
            C.check_dtype(OP, name, lse, ("float32",))

    dims = "num_tokens, num_heads, head_size"
    C.check_rank(OP, "output", out, 3, dims)
    num_tokens, num_heads, head_size = out.shape
    C.check_shape(OP, "prefix_output", pre, out.shape, dims)
    C.check_shape(OP, "suffix_output", suf, out.shape, dims)
    for name, lse in (("prefix_lse", plse), ("suffix_lse", slse), ("output_lse", olse)):
        if lse is not None:
            C.check_shape(OP, name, lse, (num_heads, num_tokens), "num_heads, num_tokens")

    all_arrays = {"output": out, "prefix_output": pre, "prefix_lse": plse,
                  "suffix_output": suf, "suffix_lse": slse, "output_lse": olse}
    C.check_same_device(OP, all_arrays)
    for name, arr in (("output", out), ("prefix_output", pre), ("suffix_output", suf)):
        C.check_last_dim_contiguous(OP, name, arr)
    # The kernel indexes one token's (head, vector) pairs with 32-bit arithmetic.
    if num_heads * head_size >= 2**30:
        C.fail(OP, f"num_heads * head_size must be below 2^30; got {num_heads} * {head_size}")

    C.check_no_overlap(OP, "output", out, {"prefix_output": pre, "suffix_output": suf},
                       allow_identical=True)
    C.check_no_overlap(OP, "output", out, {"prefix_lse": plse, "suffix_lse": slse})
    if olse is not None:
        # Reading and writing one LSE buffer from different blocks would race.
        C.check_no_overlap(OP, "output_lse", olse, {"prefix_lse": plse, "suffix_lse": slse,
                                                    "output": out, "prefix_output": pre,
                                                    "suffix_output": suf})
    return out, pre, plse, suf, slse, olse


def choose_variant(out, pre, suf, lse_base2: bool) -> Variant:
    """Widest vector access that every pointer, stride and the head size allow."""
    itemsize = out.itemsize
    head_size = out.shape[2]
    for vec_bytes in (16, 8, 4, 2):
        if vec_bytes < itemsize:
            break
        elems = vec_bytes // itemsize
        aligned = all(a.ptr % vec_bytes == 0 and a.strides[0] % elems == 0
                      and a.strides[1] % elems == 0 for a in (out, pre, suf))
        if head_size % elems == 0 and aligned:
            return Variant(out.dtype, vec_bytes, bool(lse_base2))
    return Variant(out.dtype, itemsize, bool(lse_base2))


def launch_geometry(num_tokens: int, num_heads: int, vecs_per_head: int, sm_count: int,
                    threads: int = THREADS, unroll: int = UNROLL) -> tuple[int, int]:
    """(grid, tokens_per_block) for ``num_tokens`` rows of ``num_heads * vecs_per_head`` vectors.

    A block covers whole tokens, about threads * UNROLL vectors. With few tokens we shrink it so
    that at least two blocks per SM exist (one wave of small blocks beats fewer, fuller ones:
    the grid is latency bound there).
    """
    vecs_per_token = num_heads * vecs_per_head
    tokens_per_block = max(1, (threads * unroll) // vecs_per_token)
    tokens_per_block = max(1, min(tokens_per_block, -(-num_tokens // (2 * sm_count))))
    grid = -(-num_tokens // tokens_per_block)
    return grid, tokens_per_block


# merge_attn_states_kernel's parameter types, line by line as in the .cu signature.
PARAMS = _interop.KernelParams((
    "ptr", "ptr",                  # output, output_lse (0 when omitted)
    "ptr", "ptr",                  # prefix_output, prefix_lse
    "ptr", "ptr",                  # suffix_output, suffix_lse
    "i64", "i32", "i32", "i32",    # num_tokens, num_heads, vecs_per_head, tokens_per_block
    "i64", "i64",                  # out_stride_token, out_stride_head
    "i64", "i64",                  # prefix_stride_token, prefix_stride_head
    "i64", "i64",                  # suffix_stride_token, suffix_stride_head
    "i64", "i64",                  # out_lse_stride_head, out_lse_stride_token
    "i64", "i64",                  # prefix_lse_stride_head, prefix_lse_stride_token
    "i64", "i64",                  # suffix_lse_stride_head, suffix_lse_stride_token
))


def _kernel_args(out, olse, pre, plse, suf, slse, vecs_per_head, tokens_per_block) -> tuple:
    """Values for PARAMS, in the kernel's order."""
    olse_ptr, olse_strides = (0, (0, 0)) if olse is None else (olse.ptr, olse.strides)
    return (
        out.ptr, olse_ptr,
        pre.ptr, plse.ptr,
        suf.ptr, slse.ptr,
        out.shape[0], out.shape[1], vecs_per_head, tokens_per_block,
        out.strides[0], out.strides[1],
        pre.strides[0], pre.strides[1],
        suf.strides[0], suf.strides[1],
        olse_strides[0], olse_strides[1],
        plse.strides[0], plse.strides[1],
        slse.strides[0], slse.strides[1],
    )


def _run_reference(out, pre, plse, suf, slse, olse, lse_base2) -> None:
    """Host arrays: the float64 reference, rounded into the caller's outputs."""
    n = _interop.to_numpy
    merged, lse = reference.merge_attn_states(n(pre), n(plse), n(suf), n(slse), lse_base2=lse_base2)
    _interop.write_host(out, merged)
    if olse is not None:
        _interop.write_host(olse, lse)
