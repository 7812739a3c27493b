"""float64 oracle for paged_attention_v1 / v2 (spec: paged_attention.md §2-§6).

One decode query per sequence attends to that sequence's keys and values, read from vLLM's paged
caches through a block table. Everything is computed in float64 from the cache contents as given;
the kernel's low-precision roundings (§4.2: probabilities rounded to the query dtype, fp32
accumulators, fp8 values rounded to the query dtype after scaling, through fp16 first for fp32
queries) are not emulated, so GPU tests compare against this oracle with per-dtype tolerances.
What *is* kept from the kernel, because it is part of the op's definition rather than rounding:
``scale`` narrowed to fp32, the ``+1e-6`` in every softmax denominator, the max starting at
-FLT_MAX and ignoring NaN logits (``fmaxf``), and block-sparse skipped tokens entering the
exp-sum with logit -FLT_MAX.
"""

from __future__ import annotations

import operator
from typing import NamedTuple

import numpy as np

from .._checks import CupyOpsTypeError, CupyOpsValueError

FLT_MAX = float(np.finfo(np.float32).max)
# The kernel adds 1e-6f to each softmax denominator (§4.1, §5.3); this is that fp32 constant.
SOFTMAX_EPS = float(np.float32(1e-6))
PARTITION_SIZE = 512
# vLLM compiles head sizes 32, 64, 80, 96, 112, 120, 128, 192, 256 and block sizes 8, 16, 32 (§3.1);
# we take any multiple of 8 up to 256 (16 for fp8 caches) and any power-of-two block size to 256.
SUPPORTED_HEAD_SIZES = tuple(range(8, 257, 8))
SUPPORTED_BLOCK_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# kv_cache_dtype string -> fp8 format of the cache bytes, None for an unquantized cache (§3.2).
KV_CACHE_DTYPES = {
    "auto": None, "float16": None, "bfloat16": None,
    "fp8": "e4m3", "fp8_e4m3": "e4m3", "fp8_ds_mla": "e4m3", "fp8_e5m2": "e5m2",
}
_FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


# --------------------------------------------------------------------------------------------
# fp8


def _fp8_table(fmt: str) -> np.ndarray:
    """float64 value of each of the 256 bit patterns (sign, exponent, mantissa)."""
    exp_bits, man_bits, bias = (4, 3, 7) if fmt == "e4m3" else (5, 2, 15)
    bits = np.arange(256)
    exponent = (bits >> man_bits) & ((1 << exp_bits) - 1)
    mantissa = bits & ((1 << man_bits) - 1)
    frac = mantissa / float(1 << man_bits)
    magnitude = np.where(exponent == 0,
                         np.ldexp(frac, 1 - bias),                 # subnormal
                         np.ldexp(1.0 + frac, exponent - bias))    # normal
    top = exponent == (1 << exp_bits) - 1
    if fmt == "e4m3":  # "fn": no inf; only S.1111.111 is NaN, so S.1111.110 = 448 is finite
        magnitude[top & (mantissa == 7)] = np.nan
    else:              # IEEE-like: all-ones exponent is inf (mantissa 0) or NaN
        magnitude[top & (mantissa == 0)] = np.inf
        magnitude[top & (mantissa != 0)] = np.nan
    table = np.where(bits & 0x80, -magnitude, magnitude)  # 0x80 decodes to -0.0
    table.flags.writeable = False
    return table


_FP8_TABLES = {fmt: _fp8_table(fmt) for fmt in ("e4m3", "e5m2")}


def _is_fp8_bytes(dtype) -> bool:
    return dtype == np.uint8 or (dtype.itemsize == 1 and dtype.name.startswith("float8"))


def fp8_to_float64(raw_uint8, fmt: str) -> np.ndarray:
    """Decode fp8 bytes exactly.

    Parameters
    ----------
    raw_uint8 : array, any shape, uint8 (or any 1-byte float8 dtype, read as its bits)
    fmt : {"e4m3", "e5m2"}
        "e4m3" is E4M3FN (torch.float8_e4m3fn, CUDA __nv_fp8_e4m3): no inf, 0x7f/0xff are NaN,
        largest finite 448. "e5m2" is IEEE-like: 0x7c/0xfc are +-inf, 0x7d-0x7f/0xfd-0xff NaN,
        largest finite 57344.

    Returns
    -------
    float64 array of the same shape. 0x80 decodes to -0.0.
    """
    if fmt not in _FP8_TABLES:
        raise CupyOpsValueError(f"fp8_to_float64: fmt must be 'e4m3' or 'e5m2'; got {fmt!r}")
    raw = np.asarray(raw_uint8)
    if not _is_fp8_bytes(raw.dtype):
        raise CupyOpsTypeError(f"fp8_to_float64: raw_uint8.dtype must be uint8 or a float8 type; "
                               f"got {raw.dtype.name}")
    return _FP8_TABLES[fmt][raw.view(np.uint8)]


def fp8_format_of(kv_cache_dtype: str) -> str | None:
    """fp8 format ("e4m3"/"e5m2") that a kv_cache_dtype string selects, or None if unquantized.

    "auto", "float16", "bfloat16" -> None (cache dtype = query dtype); "fp8", "fp8_e4m3",
    "fp8_ds_mla" -> "e4m3"; "fp8_e5m2" -> "e5m2" (spec §3.2). Anything else raises
    CupyOpsValueError ("Unsupported data type of kv cache", like vLLM).
    """
    if not isinstance(kv_cache_dtype, str):
        raise CupyOpsTypeError(f"kv_cache_dtype must be a str; got {type(kv_cache_dtype).__name__}")
    if kv_cache_dtype not in KV_CACHE_DTYPES:
        raise CupyOpsValueError(f"Unsupported data type of kv cache: {kv_cache_dtype!r}; kv_cache_dtype "
                                f"must be one of {', '.join(KV_CACHE_DTYPES)}")
    return KV_CACHE_DTYPES[kv_cache_dtype]


# --------------------------------------------------------------------------------------------
# Layout helpers


def num_partitions(max_seq_len: int, partition_size: int = PARTITION_SIZE) -> int:
    """P = ceil(max_seq_len / partition_size): v2 grid z and scratch pitch (§5.1)."""
    return -(-int(max_seq_len) // int(partition_size))


def gather_kv(key_cache, value_cache, block_table, seq_len: int, read_blocks=None, *, op="gather_kv"):
    """Dense keys and values of one sequence, read from the paged caches (no dtype conversion).

    Parameters
    ----------
    key_cache : array [num_blocks, num_kv_heads, head_size // x, block_size, x]
        Key element d of token t, kv head g sits at ``[b, g, d // x, t % block_size, d % x]`` with
        ``b = block_table[t // block_size]`` (the layout vLLM's reshape_and_cache writes).
    value_cache : array [num_blocks, num_kv_heads, head_size, block_size]
        Value element at ``[b, g, d, t % block_size]``.
    block_table : int array [>= ceil(seq_len / block_size)], one sequence's row of block_tables
    seq_len : int, >= 0
    read_blocks : bool array [ceil(seq_len / block_size)] or None
        Logical blocks to read (default all). Unread blocks are neither indexed nor range-checked
        (their table entries may be garbage) and come back as zeros of the cache dtype.

    Returns
    -------
    keys, values : [num_kv_heads, seq_len, head_size], the caches' dtypes.

    Raises
    ------
    CupyOpsValueError
        If the row is shorter than ceil(seq_len / block_size) or a read entry is outside
        [0, num_blocks).
    """
    key_cache = np.asarray(key_cache)
    value_cache = np.asarray(value_cache)
    if key_cache.ndim != 5 or value_cache.ndim != 4:
        raise CupyOpsValueError(f"{op}: key_cache and value_cache must have 5 and 4 dimensions; got shapes "
                                f"{key_cache.shape} and {value_cache.shape}")
    num_blocks, num_kv_heads, head_size_over_x, block_size, x = key_cache.shape
    head_size = head_size_over_x * x
    n = -(-seq_len // block_size)
    row = np.asarray(block_table).reshape(-1)
    if row.shape[0] < n:
        raise CupyOpsValueError(f"{op}: block_tables row has {row.shape[0]} entries but seq_len {seq_len} "
                                f"needs ceil({seq_len}/{block_size}) = {n}")
    ids = row[:n].astype(np.int64)
    read = np.ones(n, dtype=bool) if read_blocks is None else np.asarray(read_blocks, dtype=bool)
    bad = read & ((ids < 0) | (ids >= num_blocks))
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        raise CupyOpsValueError(f"{op}: block_tables entry {j} (logical block of a sequence of length "
                                f"{seq_len}) must be in [0, num_blocks={num_blocks}); got {int(ids[j])}")
    keys = np.zeros((n,) + key_cache.shape[1:], dtype=key_cache.dtype)
    values = np.zeros((n,) + value_cache.shape[1:], dtype=value_cache.dtype)
    keys[read] = key_cache[ids[read]]
    values[read] = value_cache[ids[read]]
    # [n, Hkv, D/x, BS, x] -> [Hkv, n, BS, D/x, x] -> [Hkv, n*BS (token), D]
    keys = keys.transpose(1, 0, 3, 2, 4).reshape(num_kv_heads, n * block_size, head_size)
    # [n, Hkv, D, BS] -> [Hkv, n, BS, D] -> [Hkv, n*BS, D]
    values = values.transpose(1, 0, 3, 2).reshape(num_kv_heads, n * block_size, head_size)
    return keys[:, :seq_len], values[:, :seq_len]


def blocksparse_attended_blocks(seq_len, block_size, num_heads, num_kv_heads, tp_rank=0,
                                blocksparse_local_blocks=0, blocksparse_vert_stride=0,
                                blocksparse_block_size=64, blocksparse_head_sliding_step=0):
    """Which KV-cache blocks each query head attends (spec §4.4).

    Returns bool [num_heads, ceil(seq_len / block_size)]. All True unless
    ``blocksparse_vert_stride > 1``. Otherwise, with B = blocksparse_block_size,
    kb = (j * block_size) // B for cache block j, q_blk = (seq_len - 1) // B and
    off = (tp_rank * num_heads + h) * step + 1 if step >= 0 else
    (tp_rank * num_kv_heads + h // (num_heads // num_kv_heads)) * (-step) + 1,
    block j is attended by head h iff (kb + off) % vert_stride == 0 or
    kb > q_blk - blocksparse_local_blocks. (kb + off >= 1, so C and Python modulo agree.)
    """
    n = -(-seq_len // block_size)
    if blocksparse_vert_stride <= 1:
        return np.ones((num_heads, n), dtype=bool)
    heads = np.arange(num_heads)
    step = blocksparse_head_sliding_step
    if step >= 0:
        offset = (tp_rank * num_heads + heads) * step + 1
    else:
        kv_heads = heads // (num_heads // num_kv_heads)
        offset = (tp_rank * num_kv_heads + kv_heads) * (-step) + 1
    kb = (np.arange(n) * block_size) // blocksparse_block_size
    q_blk = (seq_len - 1) // blocksparse_block_size
    remote = (kb[None, :] + offset[:, None]) % blocksparse_vert_stride == 0
    local = kb > q_blk - blocksparse_local_blocks
    return remote | local[None, :]


# --------------------------------------------------------------------------------------------
# Validation


def _index(op, name, value):
    try:
        return operator.index(value)
    except TypeError:
        raise CupyOpsTypeError(f"{op}: {name} must be an int; got {type(value).__name__}") from None


def _scalar_scale(op, name, value):
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiu" or arr.size < 1:
        raise CupyOpsTypeError(f"{op}: {name} must be a float or a float array with >= 1 element "
                               f"(element 0 is read); got {arr.dtype.name} of shape {arr.shape}")
    return float(arr.reshape(-1)[0])


def _validate(op, query, key_cache, value_cache, num_kv_heads, scale, block_tables, seq_lens,
              block_size, max_seq_len, alibi_slopes, kv_cache_dtype, k_scale, v_scale, tp_rank,
              bs_local, bs_vert, bs_block, bs_step):
    """Check everything (vLLM's §3.3 checks first, in its order); return plain values."""
    try:
        fmt = fp8_format_of(kv_cache_dtype)                                      # §3.3 (1)
    except (CupyOpsValueError, CupyOpsTypeError) as err:
        raise type(err)(f"{op}: {err}") from None
    query = np.asarray(query)
    if query.dtype.name not in _FLOAT_DTYPES:                                    # §3.3 (2)
        raise CupyOpsTypeError(f"{op}: query.dtype must be one of {', '.join(_FLOAT_DTYPES)}; "
                               f"got {query.dtype.name}")
    block_size = _index(op, "block_size", block_size)
    if block_size not in SUPPORTED_BLOCK_SIZES:                                  # §3.3 (3)
        raise CupyOpsValueError(f"{op}: block_size must be one of {SUPPORTED_BLOCK_SIZES}; got {block_size}")
    block_tables, seq_lens = np.asarray(block_tables), np.asarray(seq_lens)
    for name, arr in (("block_tables", block_tables), ("seq_lens", seq_lens)):   # §3.3 (4)
        if arr.dtype != np.int32:
            raise CupyOpsTypeError(f"{op}: {name}.dtype must be int32; got {arr.dtype.name}")
    if query.ndim != 3:
        raise CupyOpsValueError(f"{op}: query must have 3 dimensions [num_seqs, num_heads, head_size]; "
                                f"got shape {query.shape}")
    num_seqs, num_heads, head_size = query.shape
    if head_size not in SUPPORTED_HEAD_SIZES:                                    # §3.3 (5)
        raise CupyOpsValueError(f"{op}: query.shape[2] (head_size) must be one of "
                                f"{SUPPORTED_HEAD_SIZES}; got {head_size}")

    num_kv_heads = _index(op, "num_kv_heads", num_kv_heads)
    if num_kv_heads < 1 or num_heads % num_kv_heads != 0:
        raise CupyOpsValueError(f"{op}: num_kv_heads must be >= 1 and divide num_heads ({num_heads}); "
                                f"got {num_kv_heads}")
    key_cache, value_cache = np.asarray(key_cache), np.asarray(value_cache)
    if key_cache.ndim != 5:
        raise CupyOpsValueError(f"{op}: key_cache must have 5 dimensions [num_blocks, num_kv_heads, "
                                f"head_size/x, block_size, x]; got shape {key_cache.shape}")
    if value_cache.ndim != 4:
        raise CupyOpsValueError(f"{op}: value_cache must have 4 dimensions [num_blocks, num_kv_heads, "
                                f"head_size, block_size]; got shape {value_cache.shape}")
    if key_cache.dtype != value_cache.dtype:
        raise CupyOpsTypeError(f"{op}: value_cache.dtype must equal key_cache.dtype "
                               f"({key_cache.dtype.name}); got {value_cache.dtype.name}")
    cache_dtype = key_cache.dtype
    if fmt is None:
        if cache_dtype != query.dtype:
            raise CupyOpsTypeError(f"{op}: with kv_cache_dtype={kv_cache_dtype!r} key_cache.dtype must equal "
                                   f"query.dtype ({query.dtype.name}); got {cache_dtype.name}")
        # x = 16 // itemsize of the cache dtype; a float32/float64 copy of a 16-bit cache keeps x = 8.
        allowed_x = (8,) if cache_dtype.itemsize == 2 else (4, 8)
    else:
        if not _is_fp8_bytes(cache_dtype):
            raise CupyOpsTypeError(f"{op}: with kv_cache_dtype={kv_cache_dtype!r} key_cache.dtype must be "
                                   f"uint8 (fp8 bytes); got {cache_dtype.name}")
        if head_size % 16 != 0:
            raise CupyOpsValueError(f"{op}: head_size {head_size} has no fp8 cache layout "
                                    "(x = 16 needs head_size % 16 == 0)")
        allowed_x = (16,)
    num_blocks, kv_heads_k, d_over_x, bs_k, x = key_cache.shape
    if x not in allowed_x:
        raise CupyOpsValueError(f"{op}: key_cache.shape[4] (x = 16 bytes / cache element size) must be "
                                f"{' or '.join(map(str, allowed_x))} for a {cache_dtype.name} cache; got {x}")
    if bs_k != block_size:
        raise CupyOpsValueError(f"{op}: key_cache.shape[3] (block_size) must equal block_size "
                                f"({block_size}); got {bs_k}")
    if d_over_x * x != head_size:
        raise CupyOpsValueError(f"{op}: key_cache.shape[2] * key_cache.shape[4] (head_size/x * x) must equal "
                                f"head_size ({head_size}); got {d_over_x} * {x}")
    if kv_heads_k != num_kv_heads:
        raise CupyOpsValueError(f"{op}: key_cache.shape[1] (num_kv_heads) must equal num_kv_heads "
                                f"({num_kv_heads}); got {kv_heads_k}")
    want_v = (num_blocks, num_kv_heads, head_size, block_size)
    if value_cache.shape != want_v:
        raise CupyOpsValueError(f"{op}: value_cache.shape must be {want_v} [num_blocks, num_kv_heads, "
                                f"head_size, block_size]; got {value_cache.shape}")

    if block_tables.ndim != 2 or block_tables.shape[0] != num_seqs:
        raise CupyOpsValueError(f"{op}: block_tables.shape must be ({num_seqs}, max_num_blocks_per_seq); "
                                f"got {block_tables.shape}")
    if seq_lens.shape != (num_seqs,):
        raise CupyOpsValueError(f"{op}: seq_lens.shape must be ({num_seqs},) [num_seqs]; "
                                f"got {seq_lens.shape}")
    if num_seqs and seq_lens.min() < 0:
        raise CupyOpsValueError(f"{op}: seq_lens must be >= 0; got {int(seq_lens.min())}")
    max_seq_len = _index(op, "max_seq_len", max_seq_len)
    longest = int(seq_lens.max()) if num_seqs else 0
    if max_seq_len < longest:
        # vLLM: undefined behaviour (v1 overruns shared memory, v2 drops tokens); spec §6.
        raise CupyOpsValueError(f"{op}: max_seq_len must be >= max(seq_lens) ({longest}); got {max_seq_len}")
    needed = -(-longest // block_size)
    if block_tables.shape[1] < needed:
        raise CupyOpsValueError(f"{op}: block_tables.shape[1] (max_num_blocks_per_seq) must be >= "
                                f"ceil(max(seq_lens)/block_size) = {needed}; got {block_tables.shape[1]}")

    try:
        scale = float(np.float32(scale))  # the schema's double is narrowed to fp32 (§1.2)
    except (TypeError, ValueError):
        raise CupyOpsTypeError(f"{op}: scale must be a float; got {type(scale).__name__}") from None
    slopes = None
    if alibi_slopes is not None:
        slopes = np.asarray(alibi_slopes)
        if slopes.dtype.kind != "f":
            raise CupyOpsTypeError(f"{op}: alibi_slopes.dtype must be a float type; got {slopes.dtype.name}")
        if slopes.shape != (num_heads,):
            raise CupyOpsValueError(f"{op}: alibi_slopes.shape must be ({num_heads},) [num_heads]; "
                                    f"got {slopes.shape}")
        slopes = slopes.astype(np.float64)
    k_scale = _scalar_scale(op, "k_scale", k_scale)
    v_scale = _scalar_scale(op, "v_scale", v_scale)
    tp_rank = _index(op, "tp_rank", tp_rank)
    if tp_rank < 0:
        raise CupyOpsValueError(f"{op}: tp_rank must be >= 0; got {tp_rank}")
    bs_local = _index(op, "blocksparse_local_blocks", bs_local)
    bs_vert = _index(op, "blocksparse_vert_stride", bs_vert)
    bs_block = _index(op, "blocksparse_block_size", bs_block)
    bs_step = _index(op, "blocksparse_head_sliding_step", bs_step)
    if bs_vert > 1 and (bs_block <= 0 or bs_block % block_size != 0):
        raise CupyOpsValueError(f"{op}: blocksparse_block_size must be a positive multiple of block_size "
                                f"({block_size}) when blocksparse_vert_stride > 1; got {bs_block}")
    return dict(query=query.astype(np.float64), key_cache=key_cache, value_cache=value_cache,
                num_kv_heads=num_kv_heads, scale=scale, block_tables=block_tables,
                seq_lens=seq_lens.astype(np.int64), block_size=block_size, max_seq_len=max_seq_len,
                slopes=slopes, fmt=fmt, k_scale=k_scale, v_scale=v_scale,
                sparse=(tp_rank, bs_local, bs_vert, bs_block, bs_step))


# --------------------------------------------------------------------------------------------
# Math


def _sequence_inputs(op, a, seq_idx):
    """Logits [num_heads, L], attended mask [num_heads, L] (None if dense), values [Hkv, L, D]."""
    L = int(a["seq_lens"][seq_idx])
    q = a["query"][seq_idx]
    num_heads, head_size = q.shape
    num_kv_heads, block_size = a["num_kv_heads"], a["block_size"]
    tp_rank, bs_local, bs_vert, bs_block, bs_step = a["sparse"]
    blocks = blocksparse_attended_blocks(L, block_size, num_heads, num_kv_heads, tp_rank,
                                         bs_local, bs_vert, bs_block, bs_step)
    dense = bs_vert <= 1
    keys, values = gather_kv(a["key_cache"], a["value_cache"], a["block_tables"][seq_idx], L,
                             read_blocks=None if dense else blocks.any(axis=0), op=op)
    if a["fmt"] is None:
        keys, values = keys.astype(np.float64), values.astype(np.float64)
    else:
        keys = fp8_to_float64(keys, a["fmt"]) * a["k_scale"]
        values = fp8_to_float64(values, a["fmt"]) * a["v_scale"]
    group = num_heads // num_kv_heads
    # logit[h, t] = scale * dot(q_h, k_{g(h), t}): the scale multiplies the finished dot product.
    # einsum, not matmul: NumPy's own single-threaded loop; a threaded BLAS stalls on busy CPUs.
    logits = np.einsum("gqd,gtd->gqt", q.reshape(num_kv_heads, group, head_size), keys)
    logits = logits.reshape(num_heads, L)
    logits = a["scale"] * logits
    if a["slopes"] is not None:
        slope = a["slopes"][:, None]
        position = np.arange(L) - (L - 1)  # newest token 0, older tokens negative
        logits = logits + np.where(slope != 0, slope * position, 0.0)
    attended = None
    if not dense:
        attended = np.repeat(blocks, block_size, axis=1)[:, :L]
        logits = np.where(attended, logits, -FLT_MAX)
    return logits, attended, values


def _softmax_times_v(logits, attended, values):
    """(m, Z, out) of one token range: m = max (from -FLT_MAX, NaN ignored like fmaxf),
    Z = sum exp(logit - m), out = sum over attended tokens exp(logit - m) / (Z + 1e-6) * v."""
    num_heads, n = logits.shape
    num_kv_heads, _, head_size = values.shape
    group = num_heads // num_kv_heads
    m = np.fmax.reduce(logits, axis=1, initial=-FLT_MAX)
    e = np.exp(logits - m[:, None])
    z = e.sum(axis=1)
    p = e / (z + SOFTMAX_EPS)[:, None]
    if attended is None:
        out = np.einsum("gqt,gtd->gqd", p.reshape(num_kv_heads, group, n), values)
        out = out.reshape(num_heads, head_size)
    else:
        # Per head, so that values of blocks this head skips (maybe NaN) are never multiplied.
        out = np.empty((num_heads, head_size))
        for h in range(num_heads):
            keep = attended[h]
            out[h] = np.einsum("t,td->d", p[h, keep], values[h // group, keep])
    return m, z, out


_ARGS_DOC = """
    Parameters
    ----------
    query : array [num_seqs, num_heads, head_size], float16 / float32 / float64
        One decode query per sequence. Any strides (a slice of a fused qkv buffer is fine).
        float64 is an oracle-only extension (vLLM takes fp32/fp16/bf16; pass bf16 as float32).
    key_cache : array [num_blocks, num_kv_heads, head_size // x, block_size, x]
        x = 16 bytes / cache element size: 8 for float16 (and for a float32/float64 copy of a
        bf16/fp16 cache), 4 for float32, 16 for fp8. Auto mode: dtype must equal query's.
        fp8 modes: uint8 bytes (or a 1-byte float8 dtype, read as bits).
    value_cache : array [num_blocks, num_kv_heads, head_size, block_size], key_cache's dtype
        Indexed by its own shape: vLLM addresses it with key_cache's strides (§2.1), which is
        only right for packed caches; we do not copy that.
    num_kv_heads : int
        Must divide num_heads and equal key_cache.shape[1]. Query head h reads kv head
        h // (num_heads // num_kv_heads) (e.g. 8 heads over 2 kv heads: 0-3 -> 0, 4-7 -> 1).
    scale : float
        Multiplies each finished q.k dot product; narrowed to float32 first, as in vLLM.
    block_tables : int32 array [num_seqs, max_num_blocks_per_seq]
        Logical block j of sequence s lives in physical block block_tables[s, j]. Only entries
        j < ceil(seq_lens[s] / block_size) are read (and range-checked); with block-sparse on,
        only attended blocks. Repeated ids are allowed.
    seq_lens : int32 array [num_seqs], >= 0, context length including the current token.
    block_size : int in {8, 16, 32}, must equal key_cache.shape[3].
    max_seq_len : int, >= max(seq_lens). Sets P for v2; larger values change nothing else.
    alibi_slopes : float array [num_heads] or None
        Adds slope_h * (t - seq_len + 1) to the logit of token t where slope_h != 0.
    kv_cache_dtype : {"auto", "float16", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2", "fp8_ds_mla"}
        "fp8"/"fp8_e4m3"/"fp8_ds_mla" decode the bytes as E4M3FN, "fp8_e5m2" as E5M2.
    k_scale, v_scale : float or float array with >= 1 element (element 0 is read)
        fp8 only: k = decode(byte) * k_scale, v = decode(byte) * v_scale. Ignored in auto mode.
    tp_rank, blocksparse_local_blocks, blocksparse_vert_stride, blocksparse_block_size,
    blocksparse_head_sliding_step : int
        Block-sparse attention (on iff blocksparse_vert_stride > 1); see
        blocksparse_attended_blocks. blocksparse_block_size must then be a positive multiple of
        block_size; tp_rank must be >= 0.
"""

_RAISES_DOC = """
    Raises
    ------
    CupyOpsValueError
        Unknown kv_cache_dtype (first, as in vLLM), block_size or head_size outside vLLM's sets,
        bad shapes, x, num_kv_heads, lengths, block ids or block-sparse sizes.
    CupyOpsTypeError
        Non-float query, non-int32 block_tables / seq_lens, cache dtype not matching the mode,
        non-integer int arguments.
"""

_NOTES_DOC = """
    Per (sequence s, query head h) with L = seq_lens[s]: logit_t = scale * q.k_t (+ ALiBi) for
    t < L, m = max(-FLT_MAX, max_t logit_t) ignoring NaN logits, e_t = exp(logit_t - m),
    Z = sum_t e_t, out = sum_t e_t / (Z + 1e-6) * v_t. Cache slots past L in the last block,
    table columns past ceil(L / block_size) and unreferenced cache blocks are never read, so NaN
    there cannot reach the output. NaN in an attended key makes the whole head's output NaN;
    NaN in an attended value poisons only that head_size element. All logits -inf gives zeros
    (m stays -FLT_MAX, Z = 0). L = 0 gives zeros; num_seqs = 0 gives an empty result.

    Block-sparse: a skipped block is not read; its tokens get logit -FLT_MAX and still add
    exp(-FLT_MAX - m) (0 unless every token is skipped) to Z, never to the output. A sequence
    whose blocks are all skipped gives zeros (m = -FLT_MAX, Z = number of tokens).

    Deliberate differences from vLLM (its undefined behaviour, spec §6): max_seq_len below
    max(seq_lens), out-of-range block ids, short block-table rows and mismatched cache shapes
    raise instead of reading out of bounds.

"""


def paged_attention(query, key_cache, value_cache, num_kv_heads, scale, block_tables, seq_lens,
                    block_size, max_seq_len, alibi_slopes=None, kv_cache_dtype="auto", k_scale=1.0,
                    v_scale=1.0, tp_rank=0, blocksparse_local_blocks=0, blocksparse_vert_stride=0,
                    blocksparse_block_size=64, blocksparse_head_sliding_step=0):
    a = _validate("paged_attention", query, key_cache, value_cache, num_kv_heads, scale, block_tables,
                  seq_lens, block_size, max_seq_len, alibi_slopes, kv_cache_dtype, k_scale, v_scale,
                  tp_rank, blocksparse_local_blocks, blocksparse_vert_stride, blocksparse_block_size,
                  blocksparse_head_sliding_step)
    num_seqs, num_heads, head_size = a["query"].shape
    out = np.zeros((num_seqs, num_heads, head_size))
    with np.errstate(all="ignore"):  # inf/NaN inputs propagate as in the kernel, silently
        for s in range(num_seqs):
            if a["seq_lens"][s] == 0:
                continue  # zeros, as vLLM writes
            logits, attended, values = _sequence_inputs("paged_attention", a, s)
            out[s] = _softmax_times_v(logits, attended, values)[2]
    return out


paged_attention.__doc__ = f"""paged_attention_v1's result, in float64 (spec §4).
{_ARGS_DOC}
    Returns
    -------
    out : float64 [num_seqs, num_heads, head_size]
{_RAISES_DOC}
    Notes
    -----{_NOTES_DOC}"""


class V2Partials(NamedTuple):
    """paged_attention_v2's scratch outputs in float64, plus which entries the op defines."""
    exp_sums: np.ndarray    # [num_seqs, num_heads, P]
    max_logits: np.ndarray  # [num_seqs, num_heads, P]
    tmp_out: np.ndarray     # [num_seqs, num_heads, P, head_size]
    defined: np.ndarray     # bool [num_seqs, num_heads, P]


def paged_attention_v2_partials(query, key_cache, value_cache, num_kv_heads, scale, block_tables,
                                seq_lens, block_size, max_seq_len, alibi_slopes=None,
                                kv_cache_dtype="auto", k_scale=1.0, v_scale=1.0, tp_rank=0,
                                blocksparse_local_blocks=0, blocksparse_vert_stride=0,
                                blocksparse_block_size=64, blocksparse_head_sliding_step=0, *,
                                partition_size=PARTITION_SIZE):
    a = _validate("paged_attention_v2_partials", query, key_cache, value_cache, num_kv_heads, scale,
                  block_tables, seq_lens, block_size, max_seq_len, alibi_slopes, kv_cache_dtype, k_scale,
                  v_scale, tp_rank, blocksparse_local_blocks, blocksparse_vert_stride,
                  blocksparse_block_size, blocksparse_head_sliding_step)
    partition_size = _index("paged_attention_v2_partials", "partition_size", partition_size)
    if partition_size <= 0 or partition_size % a["block_size"] != 0:
        raise CupyOpsValueError(f"paged_attention_v2_partials: partition_size must be a positive multiple "
                                f"of block_size ({a['block_size']}); got {partition_size}")
    num_seqs, num_heads, head_size = a["query"].shape
    P = num_partitions(a["max_seq_len"], partition_size)
    exp_sums = np.full((num_seqs, num_heads, P), np.nan)
    max_logits = np.full((num_seqs, num_heads, P), np.nan)
    tmp_out = np.full((num_seqs, num_heads, P, head_size), np.nan)
    defined = np.zeros((num_seqs, num_heads, P), dtype=bool)
    with np.errstate(all="ignore"):
        for s in range(num_seqs):
            L = int(a["seq_lens"][s])
            if L == 0:
                continue  # every partition CTA exits: nothing written
            logits, attended, values = _sequence_inputs("paged_attention_v2_partials", a, s)
            for p in range(num_partitions(L, partition_size)):
                tokens = slice(p * partition_size, min((p + 1) * partition_size, L))
                m, z, o = _softmax_times_v(logits[:, tokens],
                                           None if attended is None else attended[:, tokens],
                                           values[:, tokens])
                max_logits[s, :, p], exp_sums[s, :, p], tmp_out[s, :, p] = m, z, o
                defined[s, :, p] = True
    return V2Partials(exp_sums, max_logits, tmp_out, defined)


paged_attention_v2_partials.__doc__ = f"""paged_attention_v2's scratch outputs, in float64 (spec §5.1-§5.2).
{_ARGS_DOC}    partition_size : int, keyword-only, default 512
        Tokens per partition; a positive multiple of block_size (vLLM: 512; ROCm builds 256).

    Returns
    -------
    V2Partials (a named tuple) with P = ceil(max_seq_len / partition_size):
    exp_sums : float64 [num_seqs, num_heads, P]
        Z_p = sum over partition p's tokens of exp(logit_t - m_p).
    max_logits : float64 [num_seqs, num_heads, P]
        m_p = max(-FLT_MAX, max of the partition's logits), NaN logits ignored.
    tmp_out : float64 [num_seqs, num_heads, P, head_size]
        The partition-local result sum_t exp(logit_t - m_p) / (Z_p + 1e-6) * v_t (vLLM rounds it
        to the query dtype).
    defined : bool [num_seqs, num_heads, P]
        True where p < ceil(seq_lens[s] / partition_size). vLLM leaves the other entries
        untouched (whatever the caller allocated), so they are NaN here and a test must compare
        only entries where ``defined`` is True (and may check the others kept their poison).
{_RAISES_DOC}
    Notes
    -----
    Partition p covers tokens [p * partition_size, min((p + 1) * partition_size, L)). A
    partition whose blocks block-sparse skips entirely has max_logits = -FLT_MAX, exp_sums =
    its token count and tmp_out = 0; the reduce gives it weight 0 unless all partitions are so.
    A sequence with L = 0 has no defined entry (the reduce then writes zeros).
{_NOTES_DOC}"""


def paged_attention_v2_reduce(exp_sums, max_logits, tmp_out, seq_lens, partition_size=PARTITION_SIZE):
    """paged_attention_v2's reduce step (§5.3) in float64: combine partials into the output.

    Parameters
    ----------
    exp_sums, max_logits : float array [num_seqs, num_heads, P]
    tmp_out : float array [num_seqs, num_heads, P, head_size]
    seq_lens : int array [num_seqs]; only partitions p < n_s = ceil(seq_lens[s] / partition_size)
        are read, so undefined (NaN) entries past them are harmless.
    partition_size : int, default 512

    Returns
    -------
    out : float64 [num_seqs, num_heads, head_size]
        n_s = 0: zeros. n_s = 1: tmp_out[s, :, 0] verbatim (so v2 equals v1 exactly there).
        Otherwise M = max_p m_p, w_p = Z_p * exp(m_p - M), out = sum_p tmp_out_p * w_p /
        (sum_p w_p + 1e-6). Because tmp_out_p was already divided by (Z_p + 1e-6), this differs
        from v1 by less than 1e-6 * max|v|: the spec's "double epsilon".
    """
    op = "paged_attention_v2_reduce"
    exp_sums, max_logits = np.asarray(exp_sums, np.float64), np.asarray(max_logits, np.float64)
    tmp_out, seq_lens = np.asarray(tmp_out, np.float64), np.asarray(seq_lens)
    if tmp_out.ndim != 4:
        raise CupyOpsValueError(f"{op}: tmp_out must have 4 dimensions [num_seqs, num_heads, P, head_size]; "
                                f"got shape {tmp_out.shape}")
    num_seqs, num_heads, P, head_size = tmp_out.shape
    for name, arr in (("exp_sums", exp_sums), ("max_logits", max_logits)):
        if arr.shape != (num_seqs, num_heads, P):
            raise CupyOpsValueError(f"{op}: {name}.shape must be {(num_seqs, num_heads, P)}; got {arr.shape}")
    if seq_lens.shape != (num_seqs,) or seq_lens.dtype.kind not in "iu":
        raise CupyOpsValueError(f"{op}: seq_lens must be an int array of shape ({num_seqs},); "
                                f"got {seq_lens.dtype.name} {seq_lens.shape}")
    out = np.zeros((num_seqs, num_heads, head_size))
    with np.errstate(all="ignore"):
        for s in range(num_seqs):
            n = num_partitions(int(seq_lens[s]), partition_size)
            if n > P:
                raise CupyOpsValueError(f"{op}: seq_lens[{s}] = {int(seq_lens[s])} needs {n} partitions but "
                                        f"the scratch has P = {P}")
            if n == 1:
                out[s] = tmp_out[s, :, 0]
            elif n > 1:
                m = max_logits[s, :, :n]
                w = exp_sums[s, :, :n] * np.exp(m - np.fmax.reduce(m, axis=1, initial=-FLT_MAX)[:, None])
                total = w.sum(axis=1)
                out[s] = np.einsum("hp,hpd->hd", w, tmp_out[s, :, :n]) / (total + SOFTMAX_EPS)[:, None]
    return out


def paged_attention_v2(query, key_cache, value_cache, num_kv_heads, scale, block_tables, seq_lens,
                       block_size, max_seq_len, alibi_slopes=None, kv_cache_dtype="auto", k_scale=1.0,
                       v_scale=1.0, tp_rank=0, blocksparse_local_blocks=0, blocksparse_vert_stride=0,
                       blocksparse_block_size=64, blocksparse_head_sliding_step=0, *,
                       partition_size=PARTITION_SIZE):
    """paged_attention_v2's ``out`` in float64: paged_attention_v2_reduce of
    paged_attention_v2_partials (same arguments). Equals paged_attention exactly for sequences
    with L <= partition_size; otherwise |v2 - v1| < 1e-6 * max|v| per element (double epsilon;
    an absolute bound, so small outputs may differ by more than 1e-6 relative)."""
    partials = paged_attention_v2_partials(
        query, key_cache, value_cache, num_kv_heads, scale, block_tables, seq_lens, block_size,
        max_seq_len, alibi_slopes, kv_cache_dtype, k_scale, v_scale, tp_rank, blocksparse_local_blocks,
        blocksparse_vert_stride, blocksparse_block_size, blocksparse_head_sliding_step,
        partition_size=partition_size)
    return paged_attention_v2_reduce(partials.exp_sums, partials.max_logits, partials.tmp_out,
                                     np.asarray(seq_lens), partition_size)
