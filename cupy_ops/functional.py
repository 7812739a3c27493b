"""A functional layer for notebooks: sizes come from the arrays, outputs are allocated and
returned in the caller's framework (torch, CuPy or NumPy, on the inputs' device), and the same
kernels as the vLLM-signature ops run underneath.

    paged = cupy_ops.paged_kv_from_dense(keys, values, block_size=16)   # dense K/V -> paged cache
    out = cupy_ops.decode_attention(query, *paged)                      # [num_seqs, num_heads, head_size]
"""

from __future__ import annotations

import numbers
from typing import NamedTuple, Sequence

import numpy as np

from . import _checks as C
from . import _interop
from .ops.merge_attn_states import merge_attn_states
from .ops.paged_attention import (ITEMSIZE, KV_KINDS, PARTITION_SIZE, paged_attention_v1,
                                  paged_attention_v2)
from .ops.reshape_and_cache import reshape_and_cache

# vLLM's V0 rule for v1 vs v2 (spec paged_attention.md §5.4): v1 when one 512-token partition
# suffices or sequences x heads alone fill the GPU, and never beyond 8192 tokens.
V1_MAX_SEQ_LEN = 8192
V1_MIN_PARALLELISM = 512
_FP8_DTYPES = {"float8_e4m3fn": "fp8_e4m3", "float8_e5m2": "fp8_e5m2"}


class PagedKV(NamedTuple):
    """A paged KV cache in vLLM's layout; unpacks into decode_attention's positional arguments."""

    key_cache: object      # [num_blocks, num_kv_heads, head_size/x, block_size, x]
    value_cache: object    # [num_blocks, num_kv_heads, head_size, block_size]
    block_tables: object   # [num_seqs, max_num_blocks_per_seq] int32
    seq_lens: object       # [num_seqs] int32


def choose_version(num_seqs: int, num_heads: int, max_seq_len: int) -> str:
    """"v1" or "v2" by vLLM's rule: v1 if max_seq_len <= 8192 and (a single partition or
    num_seqs * num_heads > 512)."""
    partitions = -(-max_seq_len // PARTITION_SIZE)
    if max_seq_len <= V1_MAX_SEQ_LEN and (partitions <= 1 or num_seqs * num_heads > V1_MIN_PARALLELISM):
        return "v1"
    return "v2"


def decode_attention(query, key_cache, value_cache, block_tables, seq_lens, *, scale=None,
                     alibi_slopes=None, kv_cache_dtype="auto", k_scale=None, v_scale=None,
                     max_seq_len=None, version=None, out=None):
    """Decode attention over a paged KV cache; returns the output.

    Parameters
    ----------
    query : [num_seqs, num_heads, head_size], float32 / float16 / bfloat16
    key_cache, value_cache, block_tables, seq_lens : as for ``paged_attention_v1`` (vLLM's
        layout; ``paged_kv_from_dense`` builds them). num_kv_heads and block_size are read from
        key_cache.shape[1] and [3].
    scale : float, default head_size ** -0.5
    alibi_slopes : [num_heads] float32, optional
    kv_cache_dtype : str, default "auto"; a torch float8 cache implies "fp8_e4m3" / "fp8_e5m2"
    k_scale, v_scale : float or float32 array on the caches' device, for fp8 caches (default 1.0)
    max_seq_len : int, default max(seq_lens) for host arrays; for device arrays the table's
        capacity block_tables.shape[1] * block_size (no device-to-host sync; pass the true
        maximum for the best split of long sequences)
    version : "v1" | "v2" | None (``choose_version``)
    out : optional destination like query; allocated when omitted

    Returns
    -------
    out : [num_seqs, num_heads, head_size], query's dtype, framework and device.
    """
    op = "decode_attention"
    q = _interop.describe(op, "query", query)
    kc = _interop.describe(op, "key_cache", key_cache)
    C.check_rank(op, "query", q, 3, "num_seqs, num_heads, head_size")
    C.check_rank(op, "key_cache", kc, 5, "num_blocks, num_kv_heads, head_size/x, block_size, x")
    num_seqs, num_heads, head_size = q.shape
    num_kv_heads, block_size = kc.shape[1], kc.shape[3]
    if kv_cache_dtype == "auto":
        kv_cache_dtype = _FP8_DTYPES.get(kc.dtype, "auto")
    if max_seq_len is None:
        max_seq_len = _max_seq_len(op, block_tables, seq_lens, block_size)
    if scale is None:
        scale = head_size ** -0.5
    k_scale, v_scale = _scales(kc, kv_cache_dtype, k_scale, v_scale)
    if out is None:
        out = _new(q, q.shape, q.dtype)
    version = version or choose_version(num_seqs, num_heads, max_seq_len)
    args = (query, key_cache, value_cache, num_kv_heads, scale, block_tables, seq_lens, block_size,
            max_seq_len, alibi_slopes, kv_cache_dtype, k_scale, v_scale)
    if version == "v1":
        paged_attention_v1(out, *args)
    elif version == "v2":
        partitions = max(1, -(-max_seq_len // PARTITION_SIZE))
        fill = 0 if q.device is None else None  # the host path reads unwritten entries back
        exp_sums = _new(q, (num_seqs, num_heads, partitions), "float32", fill)
        max_logits = _new(q, (num_seqs, num_heads, partitions), "float32", fill)
        tmp_out = _new(q, (num_seqs, num_heads, partitions, head_size), q.dtype, fill)
        paged_attention_v2(out, exp_sums, max_logits, tmp_out, *args)
    else:
        C.fail(op, f"version must be 'v1', 'v2' or None; got {version!r}")
    return out


def merge_states(prefix_output, prefix_lse, suffix_output, suffix_lse, *, return_lse=False,
                 lse_base2=False):
    """Merge two partial attention results by their LSEs; returns the merged output (and LSE).

    prefix_output, suffix_output : [num_tokens, num_heads, head_size]; prefix_lse, suffix_lse :
    [num_heads, num_tokens] float32 (natural log, or base 2 with ``lse_base2``). Returns
    ``output`` like prefix_output, or ``(output, output_lse)`` with return_lse, output_lse
    [num_heads, num_tokens] float32. Semantics: ``merge_attn_states``.
    """
    p = _interop.describe("merge_states", "prefix_output", prefix_output)
    lse = _interop.describe("merge_states", "prefix_lse", prefix_lse)
    output = _new(p, p.shape, p.dtype)
    output_lse = _new(p, lse.shape, "float32") if return_lse else None
    merge_attn_states(output, prefix_output, prefix_lse, suffix_output, suffix_lse, output_lse,
                      lse_base2=lse_base2)
    return (output, output_lse) if return_lse else output


def paged_kv_from_dense(key, value, block_size: int = 16, *, seq_lens=None, kv_cache_dtype="auto",
                        k_scale=None, v_scale=None, extra_blocks: int = 0) -> PagedKV:
    """Build a paged KV cache and its block table from dense per-sequence keys and values.

    Parameters
    ----------
    key, value : either a sequence of [seq_len_i, num_kv_heads, head_size] arrays (one per
        sequence), or one [num_seqs, max_len, num_kv_heads, head_size] array with ``seq_lens``
        giving each sequence's length (default: all max_len; rows past a length are ignored).
        float32 / float16 / bfloat16; all of one framework and device.
    block_size : int, tokens per cache block
    seq_lens : ints or an int array [num_seqs], for the 4-D form only
    kv_cache_dtype : "auto" (cache dtype = key dtype) or an fp8 kind ("fp8", "fp8_e4m3",
        "fp8_e5m2"; the caches then hold uint8 bytes of fp8(x / scale))
    k_scale, v_scale : float or float32 array, for fp8 caches (default 1.0)
    extra_blocks : int, free blocks to append to the caches (room for decode steps)

    Returns
    -------
    PagedKV(key_cache, value_cache, block_tables, seq_lens) in the inputs' framework and device:
    sequence s owns consecutive blocks, unused cache slots are zero, unused table entries are 0.
    The caches are filled with ``reshape_and_cache`` (our kernel on the GPU).
    """
    op = "paged_kv_from_dense"
    block_size = C.check_int(op, "block_size", block_size, 1, 2**20)
    if isinstance(key, (list, tuple)):
        if not isinstance(value, (list, tuple)) or len(value) != len(key) or not key:
            C.fail(op, "key and value must be equally long non-empty sequences of arrays")
        lens = [int(_interop.describe(op, f"key[{i}]", k).shape[0]) for i, k in enumerate(key)]
        like = _interop.describe(op, "key[0]", key[0])
        key_tokens, value_tokens = _concat(like, key), _concat(like, value)
        max_len = max(lens)
    else:
        k = _interop.describe(op, "key", key)
        C.check_rank(op, "key", k, 4, "num_seqs, max_len, num_kv_heads, head_size")
        num_seqs, max_len = k.shape[:2]
        lens = [max_len] * num_seqs if seq_lens is None else [int(n) for n in _host_ints(op, seq_lens)]
        if len(lens) != num_seqs or any(not 0 <= n <= max_len for n in lens):
            C.fail(op, f"seq_lens must hold {num_seqs} lengths in 0..{max_len}; got {lens}")
        like = k
        v = _interop.describe(op, "value", value)
        C.check_shape(op, "value", v, k.shape, "num_seqs, max_len, num_kv_heads, head_size")
        key_tokens = k.obj.reshape(num_seqs * max_len, *k.shape[2:])
        value_tokens = v.obj.reshape(num_seqs * max_len, *k.shape[2:])
    if kv_cache_dtype not in KV_KINDS:
        C.fail(op, f"Unsupported data type of kv cache: {kv_cache_dtype!r}")
    _, num_kv_heads, head_size = _interop.describe(op, "key", key_tokens).shape
    cache_dtype = like.dtype if KV_KINDS[kv_cache_dtype] == "auto" else "uint8"
    x = 16 // ITEMSIZE[cache_dtype]

    blocks = [-(-n // block_size) for n in lens]
    first = np.concatenate([[0], np.cumsum(blocks)]).astype(np.int64)
    num_blocks = max(1, int(first[-1]) + extra_blocks)
    table = np.zeros((len(lens), max(1, max(blocks))), np.int32)
    for s, nb in enumerate(blocks):
        table[s, :nb] = np.arange(first[s], first[s] + nb)
    # Slot of token j of sequence s, -1 past its length; the list form has no padding rows.
    j = np.arange(max_len)
    slots = np.where(j < np.asarray(lens)[:, None], first[:-1, None] * block_size + j, -1)
    slots = slots[j < np.asarray(lens)[:, None]] if isinstance(key, (list, tuple)) else slots.reshape(-1)

    key_cache = _new(like, (num_blocks, num_kv_heads, head_size // x, block_size, x), cache_dtype, 0)
    value_cache = _new(like, (num_blocks, num_kv_heads, head_size, block_size), cache_dtype, 0)
    k_scale, v_scale = _scales(like, kv_cache_dtype, k_scale, v_scale)
    reshape_and_cache(key_tokens, value_tokens, key_cache, value_cache, _upload(like, slots),
                      kv_cache_dtype, k_scale, v_scale)
    return PagedKV(key_cache, value_cache, _upload(like, table),
                   _upload(like, np.asarray(lens, np.int32)))


# --------------------------------------------------------------------------------------------
# Arrays in the caller's framework

def _new(like, shape, dtype, fill=None):
    arr = _interop.empty_like_framework(like, tuple(shape), dtype).obj
    if fill is not None:
        arr.fill_(fill) if like.framework == "torch" else arr.fill(fill)
    return arr


def _upload(like, host: np.ndarray):
    """NumPy data as an array of ``like``'s framework and device."""
    if like.framework == "numpy":
        return host
    if like.framework == "torch":
        import torch
        t = torch.from_numpy(host)
        return t if like.device is None else t.to(f"cuda:{like.device}")
    import cupy
    with cupy.cuda.Device(like.device):
        return cupy.asarray(host)


def _concat(like, arrays: Sequence):
    if like.framework == "torch":
        import torch
        return torch.cat(list(arrays))
    if like.framework == "cupy":
        import cupy
        return cupy.concatenate(list(arrays))
    return np.concatenate(list(arrays))


def _host_ints(op, values) -> np.ndarray:
    if isinstance(values, (list, tuple)):
        return np.asarray(values, np.int64)
    return _interop.to_host(_interop.describe(op, "seq_lens", values)).reshape(-1)


def _max_seq_len(op, block_tables, seq_lens, block_size) -> int:
    lens = _interop.describe(op, "seq_lens", seq_lens)
    if lens.device is None:
        values = _interop.to_numpy(lens)
        return int(values.max()) if values.size else 0
    table = _interop.describe(op, "block_tables", block_tables)
    C.check_rank(op, "block_tables", table, 2, "num_seqs, max_num_blocks_per_seq")
    return table.shape[1] * block_size


def _scales(like, kv_cache_dtype, k_scale, v_scale):
    """fp8 caches need scale arrays on the device: floats (or None = 1.0) become 0-d float32."""
    if KV_KINDS.get(kv_cache_dtype, "auto") == "auto":
        return k_scale, v_scale
    return tuple(_new(like, (), "float32", 1.0 if s is None else float(s))
                 if s is None or isinstance(s, numbers.Real) else s for s in (k_scale, v_scale))
