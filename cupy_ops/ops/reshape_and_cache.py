"""reshape_and_cache: validate -> choose variant -> geometry -> launch (or the NumPy reference)."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from .. import _checks as C
from .. import _interop, _runtime
from ..reference import reshape_and_cache as reference
from .paged_attention import FP8_CPP, KV_KINDS

OP = "reshape_and_cache"
DTYPES = ("float32", "float16", "bfloat16")
FP8_CACHE_DTYPES = ("uint8", "float8_e4m3fn", "float8_e5m2")
MAX_THREADS = 512  # one CTA per token; more threads than a token's H * D elements would idle


@dataclasses.dataclass(frozen=True)
class Variant:
    """Compile-time parameters of reshape_and_cache_kernel (sizes and strides are runtime)."""

    dtype: str   # key / value
    kv: str      # "auto" (cache dtype = dtype), "e4m3" or "e5m2"

    def template_args(self) -> tuple[str, ...]:
        cpp = _interop.CPP_TYPES
        return (cpp[self.dtype], cpp[self.dtype] if self.kv == "auto" else FP8_CPP[self.kv])


VARIANTS = tuple(Variant(d, kv) for d, kv in itertools.product(DTYPES, ("auto", "e4m3", "e5m2")))
FAMILY = _runtime.KernelFamily(
    op=OP, source="reshape_and_cache.cu", template="cupy_ops::reshape_and_cache_kernel",
    variants=VARIANTS, common=tuple(v for v in VARIANTS if v.dtype != "float32" and v.kv != "e5m2"))


def reshape_and_cache(key, value, key_cache, value_cache, slot_mapping, kv_cache_dtype="auto",
                      k_scale=None, v_scale=None, *, validate=None) -> None:
    """Write new tokens' keys and values into vLLM's paged KV cache, in place (vLLM's signature).

    Parameters
    ----------
    key, value : [num_tokens_padded, num_heads, head_size], float32 / float16 / bfloat16, one
        dtype; head_size stride 1, token and head strides free (slices of a fused qkv buffer work)
    key_cache : [num_blocks, num_heads, head_size/x, block_size, x], x = 16 bytes / cache element;
        key's dtype for kv_cache_dtype "auto" / "float16" / "bfloat16", uint8 (or a float8 dtype)
        holding fp8 bytes for "fp8", "fp8_e4m3", "fp8_e5m2". Last three dimensions packed.
    value_cache : [num_blocks, num_heads, head_size, block_size], key_cache's dtype; last two
        dimensions packed
    slot_mapping : [num_tokens] int64, slot = block * block_size + offset for each token;
        negative = padding, nothing written. num_tokens <= key.shape[0] (vLLM pads key/value for
        CUDA graphs and takes the token count from slot_mapping).
    kv_cache_dtype : str, default "auto"
    k_scale, v_scale : float32 tensors on the caches' device (element 0 is read on the GPU), for
        fp8 caches: stored byte = fp8(x / scale), round to nearest even, saturating to the largest
        finite value. Ignored (may be None) for unquantized caches.
    validate : bool, keyword-only. Also check slot values on the host (a device-to-host copy):
        every slot < num_blocks * block_size. Default: the CUPY_OPS_VALIDATE environment variable.

    Notes
    -----
    Deliberate difference from vLLM: a slot >= num_blocks * block_size is skipped like a negative
    one instead of writing out of bounds. Two tokens with one slot leave either token's values.
    NumPy arrays and torch CPU tensors run the exact reference (cupy_ops.reference.reshape_and_cache).
    """
    validate = C.validation_requested(OP, validate)
    arrays = (key, value, key_cache, value_cache, slot_mapping, k_scale, v_scale)
    _interop.planned(_PLANS, arrays, (kv_cache_dtype,),
                     lambda: _plan(arrays, kv_cache_dtype, validate), cached=not validate).run()


_PLANS = _interop.PlanCache()


def _validate(arrays, kv_cache_dtype):
    key, value, key_cache, value_cache, slot_mapping, k_scale, v_scale = arrays
    if not isinstance(kv_cache_dtype, str) or kv_cache_dtype not in KV_KINDS:
        C.fail(OP, f"Unsupported data type of kv cache: {kv_cache_dtype!r} (kv_cache_dtype must be "
                   f"one of {', '.join(KV_KINDS)})")
    kv = KV_KINDS[kv_cache_dtype]
    d = _interop.describe
    k, v = d(OP, "key", key), d(OP, "value", value)
    kc, vc = d(OP, "key_cache", key_cache), d(OP, "value_cache", value_cache)
    sm = d(OP, "slot_mapping", slot_mapping)
    C.check_dtype(OP, "key", k, DTYPES)
    C.check_same_dtype(OP, {"key": k, "value": v})
    C.check_dtype(OP, "key_cache", kc, (k.dtype,) if kv == "auto" else FP8_CACHE_DTYPES)
    C.check_same_dtype(OP, {"key_cache": kc, "value_cache": vc})
    C.check_dtype(OP, "slot_mapping", sm, ("int64",))

    C.check_rank(OP, "key", k, 3, "num_tokens, num_heads, head_size")
    _, num_heads, head_size = k.shape
    C.check_shape(OP, "value", v, k.shape, "num_tokens, num_heads, head_size")
    C.check_rank(OP, "slot_mapping", sm, 1, "num_tokens")
    num_tokens = sm.shape[0]
    if num_tokens > k.shape[0]:
        C.fail(OP, f"slot_mapping.shape[0] (num_tokens) must be <= key.shape[0]; got {num_tokens} > {k.shape[0]}")
    x = 16 // kc.itemsize
    if head_size % x:
        C.fail(OP, f"key.shape[2] (head_size) must be a multiple of x = {x} for this cache; got {head_size}")
    C.check_rank(OP, "key_cache", kc, 5, "num_blocks, num_heads, head_size/x, block_size, x")
    num_blocks, _, _, block_size, _ = kc.shape
    C.check_shape(OP, "key_cache", kc, (None, num_heads, head_size // x, None, x),
                  "num_blocks, num_heads, head_size/x, block_size, x")
    C.check_shape(OP, "value_cache", vc, (num_blocks, num_heads, head_size, block_size),
                  "num_blocks, num_heads, head_size, block_size")
    if kc.size and kc.strides[2:] != (block_size * x, x, 1):
        C.fail(OP, f"key_cache must be packed in its last three dimensions; got strides {kc.strides}")
    if vc.size and vc.strides[2:] != (block_size, 1):
        C.fail(OP, f"value_cache must be packed in its last two dimensions; got strides {vc.strides}")
    for name, a in (("key", k), ("value", v)):
        C.check_last_dim_contiguous(OP, name, a)
    if num_heads * head_size >= 2**31 or head_size * block_size >= 2**31:
        C.fail(OP, f"num_heads * head_size and head_size * block_size must be below 2^31; got "
                   f"{num_heads}, {head_size}, {block_size}")

    ks = vs = None
    if kv != "auto":
        ks, vs = _scale(k_scale, "k_scale"), _scale(v_scale, "v_scale")
    C.check_same_device(OP, {"key": k, "value": v, "key_cache": kc, "value_cache": vc,
                             "slot_mapping": sm, "k_scale": ks, "v_scale": vs})
    C.check_no_overlap(OP, "key_cache", kc, {"key": k, "value": v, "value_cache": vc, "slot_mapping": sm})
    C.check_no_overlap(OP, "value_cache", vc, {"key": k, "value": v, "slot_mapping": sm})
    return k, v, kc, vc, sm, ks, vs, kv


def _scale(obj, name):
    if obj is None:
        C.fail(OP, f"{name} is required for an fp8 cache (a float32 tensor; 1.0 for no scaling)")
    s = _interop.describe(OP, name, obj)
    C.check_dtype(OP, name, s, ("float32",))
    if s.size < 1:
        C.fail(OP, f"{name} must hold at least one element; got shape {s.shape}")
    return s


def _plan(arrays, kv_cache_dtype, validate):
    k, v, kc, vc, sm, ks, vs, kv = _validate(arrays, kv_cache_dtype)
    num_slots = kc.shape[0] * kc.shape[3]
    if validate or k.device is None:
        slots = _interop.to_host(sm)
        if slots.size and slots.max() >= num_slots:
            t = int(slots.argmax())
            C.fail(OP, f"slot_mapping[{t}] = {int(slots[t])} is outside the cache (num_blocks * "
                       f"block_size = {num_slots})")
    if k.device is None:
        return _interop.HostPlan(_run_reference, k, v, kc, vc, sm, ks, vs, kv_cache_dtype)
    num_tokens, (_, num_heads, head_size) = sm.shape[0], k.shape
    if num_tokens == 0 or num_heads * head_size == 0 or num_slots == 0:
        return _interop.NoOpPlan()
    variant = Variant(k.dtype, kv)
    kernel = _runtime.get_kernel(FAMILY, variant, k.device)
    threads = min(MAX_THREADS, -(-num_heads * head_size // 32) * 32)
    return _interop.LaunchPlan(PARAMS, kernel, k, (num_tokens,), (threads,),
                               _kernel_args(k, v, kc, vc, sm, ks, vs, num_slots))


# reshape_and_cache_kernel's parameter types, line by line as in the .cu signature.
PARAMS = _interop.KernelParams((
    "ptr", "ptr",                  # key_cache, value_cache
    "ptr", "ptr", "ptr",           # key, value, slot_mapping
    "ptr", "ptr",                  # k_scale, v_scale (0 for unquantized caches)
    "i32", "i32", "i32", "i64",    # num_heads, head_size, block_size, num_slots
    "i64", "i64",                  # key_stride_token, key_stride_head
    "i64", "i64",                  # value_stride_token, value_stride_head
    "i64",                         # slot_stride
    "i64", "i64",                  # k_stride_block, k_stride_head
    "i64", "i64",                  # v_stride_block, v_stride_head
))


def _kernel_args(k, v, kc, vc, sm, ks, vs, num_slots) -> tuple:
    """Values for PARAMS, in the kernel's order."""
    return (
        kc.ptr, vc.ptr,
        k.ptr, v.ptr, sm.ptr,
        0 if ks is None else ks.ptr, 0 if vs is None else vs.ptr,
        k.shape[1], k.shape[2], kc.shape[3], num_slots,
        k.strides[0], k.strides[1],
        v.strides[0], v.strides[1],
        sm.strides[0],
        kc.strides[0], kc.strides[1],
        vc.strides[0], vc.strides[1],
    )


def _run_reference(k, v, kc, vc, sm, ks, vs, kv_cache_dtype) -> None:
    """Host arrays: the exact reference, written into the caller's caches."""
    n = _interop.to_numpy
    fp8 = KV_KINDS[kv_cache_dtype] != "auto"
    cache = _interop.host_bytes if fp8 else n
    scale = _interop.host_scalar if fp8 else (lambda s: 1.0)
    new_k, new_v = reference.reshape_and_cache(
        n(k), n(v), cache(kc), cache(vc), n(sm), kv_cache_dtype, scale(ks), scale(vs))
    for info, value in ((kc, new_k), (vc, new_v)):
        if fp8:
            np.copyto(_interop.host_bytes(info), value)
        else:
            _interop.write_host(info, value)

