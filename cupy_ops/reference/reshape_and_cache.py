"""Exact oracle for reshape_and_cache (spec: paged_attention.md §2.2 layout, §2.3 fp8 convention).

Token t with slot s = slot_mapping[t] >= 0 lands in block s // block_size at offset
s % block_size: key element d of head h at ``key_cache[block, h, d // x, offset, d % x]``, value
element at ``value_cache[block, h, d, offset]``. Negative slots are padding and write nothing.
An unquantized cache receives the values unchanged. An fp8 cache receives the bytes of
``fp8(float32(x) / float32(scale))``: the quotient is the kernel's IEEE fp32 division, then
rounded to the nearest fp8 value (ties to even), saturating to the largest finite value
(inf included); NaN becomes 0x7f. No step here is approximate, so GPU tests compare bit for bit.
"""

from __future__ import annotations

import numpy as np

from .._checks import CupyOpsTypeError, CupyOpsValueError, fail
from .paged_attention import KV_CACHE_DTYPES, fp8_to_float64

OP = "reshape_and_cache"
# Largest finite positive code of each format: e4m3fn's 0x7f is NaN, e5m2's 0x7c is inf.
_MAX_FINITE_CODE = {"e4m3": 0x7E, "e5m2": 0x7B}
_FP8_NAN = 0x7F


def float_to_fp8(x, fmt: str) -> np.ndarray:
    """Encode float32 values as fp8 bytes (uint8), as CUDA's satfinite conversion does.

    Parameters
    ----------
    x : array, any shape; read as float32
    fmt : {"e4m3", "e5m2"}

    Returns
    -------
    uint8 array of x's shape: nearest fp8 value (ties to the even code), magnitudes beyond the
    largest finite value (448 for e4m3, 57344 for e5m2, and inf) saturate to it, the sign is
    kept (-0.0 -> 0x80), NaN -> 0x7f.
    """
    if fmt not in _MAX_FINITE_CODE:
        raise CupyOpsValueError(f"float_to_fp8: fmt must be 'e4m3' or 'e5m2'; got {fmt!r}")
    x = np.asarray(x, dtype=np.float32)
    max_code = _MAX_FINITE_CODE[fmt]
    finite = fp8_to_float64(np.arange(max_code + 1, dtype=np.uint8), fmt)  # increasing
    a = np.abs(x.astype(np.float64))
    hi = np.minimum(np.searchsorted(finite, a, side="left"), max_code)  # first value >= a
    lo = np.maximum(hi - 1, 0)
    d_lo, d_hi = a - finite[lo], finite[hi] - a
    code = np.where(d_hi < d_lo, hi, lo)
    code = np.where(d_hi == d_lo, np.where(lo % 2 == 0, lo, hi), code)
    code = code.astype(np.uint8) | np.where(np.signbit(x), 0x80, 0).astype(np.uint8)
    return np.where(np.isnan(x), np.uint8(_FP8_NAN), code).astype(np.uint8)


def reshape_and_cache(key, value, key_cache, value_cache, slot_mapping, kv_cache_dtype,
                      k_scale=1.0, v_scale=1.0):
    """The caches after vLLM's reshape_and_cache (copies; the inputs are not modified).

    Parameters
    ----------
    key, value : [>= num_tokens, num_heads, head_size], float
    key_cache : [num_blocks, num_heads, head_size / x, block_size, x]; the key dtype for an
        unquantized cache, uint8 (fp8 bytes) for kv_cache_dtype "fp8", "fp8_e4m3", "fp8_e5m2"
    value_cache : [num_blocks, num_heads, head_size, block_size], key_cache's dtype
    slot_mapping : [num_tokens] int, slot = block * block_size + offset; negative = skip
    kv_cache_dtype : str, as for paged_attention ("auto", "fp8", "fp8_e4m3", "fp8_e5m2", ...)
    k_scale, v_scale : float, fp8 quantisation scales (stored = fp8(x / scale)); else ignored

    Returns
    -------
    (key_cache, value_cache) : new arrays with the tokens written.

    Raises
    ------
    CupyOpsValueError for a bad shape, kv_cache_dtype or slot (>= num_blocks * block_size);
    CupyOpsTypeError for a non-integer slot_mapping or non-byte fp8 cache.
    """
    if not isinstance(kv_cache_dtype, str) or kv_cache_dtype not in KV_CACHE_DTYPES:
        fail(OP, f"Unsupported data type of kv cache: {kv_cache_dtype!r}")
    fmt = KV_CACHE_DTYPES[kv_cache_dtype]
    key, value = np.asarray(key), np.asarray(value)
    key_cache, value_cache = np.array(key_cache), np.array(value_cache)  # copies
    slots = np.asarray(slot_mapping)
    if slots.dtype.kind not in "iu":
        fail(OP, f"slot_mapping must hold integers; got {slots.dtype}", kind=CupyOpsTypeError)
    if fmt is not None and key_cache.dtype != np.uint8:
        fail(OP, f"an fp8 cache must be uint8 bytes here; got {key_cache.dtype}", kind=CupyOpsTypeError)
    if key.ndim != 3 or value.shape != key.shape or key_cache.ndim != 5 or value_cache.ndim != 4:
        fail(OP, f"expected key/value [num_tokens, num_heads, head_size], key_cache 5-D, value_cache "
                 f"4-D; got {key.shape}, {value.shape}, {key_cache.shape}, {value_cache.shape}")
    num_blocks, num_heads, _, block_size, x = key_cache.shape
    head_size = key.shape[2]
    if (key_cache.shape[1:3] != (key.shape[1], head_size // x) or head_size % x
            or value_cache.shape != (num_blocks, num_heads, head_size, block_size)):
        fail(OP, f"cache shapes {key_cache.shape}, {value_cache.shape} do not fit key {key.shape}")
    slots = slots.reshape(-1).astype(np.int64)
    if slots.shape[0] > key.shape[0]:
        fail(OP, f"slot_mapping has {slots.shape[0]} tokens but key only {key.shape[0]}")
    bad = slots >= num_blocks * block_size
    if bad.any():
        t = int(np.flatnonzero(bad)[0])
        fail(OP, f"slot_mapping[{t}] = {int(slots[t])} is outside the cache (num_blocks * "
                 f"block_size = {num_blocks * block_size})")

    tokens = np.flatnonzero(slots >= 0)
    blocks, offsets = slots[tokens] // block_size, slots[tokens] % block_size
    k, v = key[tokens], value[tokens]                     # [n, num_heads, head_size]
    if fmt is None:
        k, v = k.astype(key_cache.dtype), v.astype(value_cache.dtype)
    else:
        k = float_to_fp8(k.astype(np.float32) / np.float32(k_scale), fmt)
        v = float_to_fp8(v.astype(np.float32) / np.float32(v_scale), fmt)
    # Advanced indices on dims 0 and 3 broadcast to [n] and go first: [n, heads, D/x, x].
    key_cache[blocks, :, :, offsets, :] = k.reshape(len(tokens), num_heads, head_size // x, x)
    value_cache[blocks, :, :, offsets] = v
    return key_cache, value_cache
