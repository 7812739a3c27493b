"""NumPy oracle and checker for the DSA indexer top-k ops (spec: top_k_per_row.md).

``top_k_per_row_prefill`` and ``top_k_per_row_decode`` pick, for each row of a score matrix, the
``top_k`` largest scores inside the row's candidate range ``[s, e)`` and return their column
indices relative to ``s`` (spec §2). Rows with ``L = e - s <= top_k`` get ``0..L-1`` then ``-1``.

The GPU kernels may return the ``top_k`` winners in any order and may break ties at the k-th
score any way they like (spec §2, §6), so GPU tests must not compare against the canonical answer
of this module element by element; they use ``check_top_k_per_row`` / ``check_top_k_result``,
which accept every valid answer and reject every invalid one with a message naming the row, the
output slot and the reason.

Ordering of scores (one total order, used by the oracle and the checker)
-------------------------------------------------------------------------
Scores are compared as float32 through the monotone bit map vLLM uses (flip all bits if the sign
bit is set, else flip only the sign bit), so:

* ``-inf`` is the lowest non-NaN score and is a valid pick when fewer than ``top_k`` finite
  scores exist (never ``-1``);
* ``+0.0`` ranks just above ``-0.0`` (spec §2: "+0 ranks just above -0");
* denormals are ordered exactly (no flush to zero);
* NaN (any sign, any payload) ranks **below -inf** by default (``nan_rank="lowest"``): it is
  never selected while enough non-NaN candidates exist, and never produces an out-of-range or
  duplicate index. The spec leaves NaN undefined in vLLM and suggests "highest, like torch.topk"
  as one option; the project issue asks for "below -inf", which we take as the default.
  ``nan_rank="highest"`` is available for comparisons against torch.topk-style tools.

Canonical answer of the oracle, for ``L > top_k``: indices sorted by descending score, equal scores
by ascending index. For ``L <= top_k``: identity order then ``-1`` padding, exactly as vLLM.

Deliberate differences from vLLM (spec §7): no duplicates after a pass-0 overflow (§7a), decode
ends are clamped at 0 (§7b), 2-D ``seq_lens`` are accepted (§7c), ``-inf`` is handled correctly
(§7d), and ``stride1`` is honoured for every row length (§7e). Unlike vLLM, the reference validates
its arguments (dtypes, ranges, and that every candidate address lies inside ``logits``).
"""

from __future__ import annotations


import numpy as np

from .._checks import CupyOpsTypeError, check_int, check_numpy_int32, fail

MAX_TOP_K = 4096        # project limit; vLLM has no explicit bound (spec §2 "Supported topK")
_INT32_MAX = 2**31 - 1  # vLLM passes stride0/stride1 as 32-bit ints (spec §1)
_LOGITS_DTYPES = ("float32", "float16", "bfloat16")
_NAN_RANKS = ("lowest", "highest")


# --------------------------------------------------------------------------------------- oracle

def top_k_per_row_prefill(logits, row_starts, row_ends, num_rows, stride0, stride1, top_k, *,
                          nan_rank="lowest"):
    """Top-k column indices per row over the candidate range ``[row_starts[r], row_ends[r])``.

    Parameters
    ----------
    logits : np.ndarray, float32 (float16 / bfloat16 also accepted, compared exactly as float32)
        Score matrix, 2-D ``[num_rows, num_cols]``. Element ``(r, c)`` is read at element offset
        ``r*stride0 + c*stride1`` from ``logits``' first element, i.e. the strides, not the array's
        own strides, define the addressing (as vLLM, which only uses the data pointer). Every
        candidate address must lie inside the memory spanned by ``logits``; when ``stride0`` /
        ``stride1`` equal the array's own element strides, candidates must also lie inside
        ``logits.shape``.
    row_starts, row_ends : np.ndarray, int32, 1-D ``[>= num_rows]``
        Half-open candidate column range of each row; ``0 <= row_starts[r] <= row_ends[r]``.
    num_rows : int, >= 0
        Rows to compute (vLLM's grid size). 0 returns an empty ``[0, top_k]`` array.
    stride0, stride1 : int, 0..2**31-1
        Element strides of the rows and columns of ``logits`` (vLLM passes ``logits.stride()``).
    top_k : int, 1..4096
        Entries per output row.
    nan_rank : {"lowest", "highest"}, keyword-only
        Where NaN scores rank; see the module docstring. Default "lowest" (below -inf).

    Returns
    -------
    indices : np.ndarray, int32 ``[num_rows, top_k]``
        ``L = row_ends[r] - row_starts[r]``. If ``L <= top_k``: ``[0, 1, ..., L-1, -1, ..., -1]``
        (scores not read). Else the ``top_k`` positions ``c - row_starts[r]`` with the largest
        scores, by descending score, equal scores by ascending index.

    Raises
    ------
    CupyOpsTypeError
        Wrong array type or dtype, or a non-integer scalar.
    CupyOpsValueError
        Wrong rank, ``num_rows`` larger than an input, a negative value, ``row_ends < row_starts``,
        ``top_k`` outside 1..4096, or a candidate address outside ``logits``.
    """
    op = "top_k_per_row_prefill"
    num_rows, stride0, stride1, top_k = _check_scalars(op, num_rows, stride0, stride1, top_k)
    _check_nan_rank(op, nan_rank)
    _check_logits(op, logits)
    for name, arr in (("row_starts", row_starts), ("row_ends", row_ends)):
        check_numpy_int32(op, name, arr)
        if arr.ndim != 1:
            fail(op, f"{name} must have 1 dimension [num_rows]; got shape {arr.shape}")
        if arr.shape[0] < num_rows:
            fail(op, f"num_rows ({num_rows}) exceeds {name}.shape[0] ({arr.shape[0]})")
    starts = row_starts[:num_rows].astype(np.int64)
    ends = row_ends[:num_rows].astype(np.int64)
    _check_nonnegative(op, "row_starts", starts)
    _check_nonnegative(op, "row_ends", ends)
    bad = np.flatnonzero(ends < starts)
    if bad.size:
        r = int(bad[0])
        fail(op, f"row_ends[{r}] ({ends[r]}) must be >= row_starts[{r}] ({starts[r]})")
    return _select(op, logits, starts, ends, num_rows, stride0, stride1, top_k, nan_rank)


def top_k_per_row_decode(logits, next_n, seq_lens, num_rows, stride0, stride1, top_k, *,
                         nan_rank="lowest"):
    """Top-k positions per decode query row over ``[0, e)``, causal within each sequence.

    Parameters
    ----------
    logits : np.ndarray, float32 (float16 / bfloat16 also accepted)
        ``[num_rows, max_model_len]`` with ``num_rows = batch * next_n``; addressed through
        ``stride0`` / ``stride1`` exactly as in ``top_k_per_row_prefill``.
    next_n : int, >= 1
        Query rows per sequence (1 normally, 2+ with MTP).
    seq_lens : np.ndarray, int32, ``[batch]`` or ``[batch, next_n]``
        1-D: full KV length of each sequence, including its ``next_n`` new tokens. Row ``r`` is
        sequence ``b = r // next_n``, offset ``j = r % next_n`` and gets
        ``e = max(0, seq_lens[b] - next_n + j + 1)``. 2-D (vLLM K2): each row's own length,
        ``e = max(0, seq_lens.reshape(-1)[r])`` (logical C order). Values must be >= 0.
    num_rows : int, >= 0
        Rows to compute. 1-D ``seq_lens`` needs ``batch >= ceil(num_rows / next_n)``, 2-D needs
        ``batch * next_n >= num_rows``.
    stride0, stride1 : int, 0..2**31-1
        Element strides of ``logits``' rows and columns.
    top_k : int, 1..4096
        Entries per output row.
    nan_rank : {"lowest", "highest"}, keyword-only
        Where NaN scores rank. Default "lowest" (below -inf).

    Returns
    -------
    indices : np.ndarray, int32 ``[num_rows, top_k]``
        Positions in ``[0, e)``; same rules as ``top_k_per_row_prefill`` with ``s = 0``. A row
        with ``seq_len < next_n - j`` has ``e = 0`` and is all ``-1`` (vLLM's baseline writes out
        of bounds there, spec §7b).

    Raises
    ------
    CupyOpsTypeError, CupyOpsValueError
        As ``top_k_per_row_prefill``; also ``next_n < 1`` or a ``seq_lens`` shape that does not
        cover ``num_rows``.
    """
    op = "top_k_per_row_decode"
    num_rows, stride0, stride1, top_k = _check_scalars(op, num_rows, stride0, stride1, top_k)
    next_n = check_int(op, "next_n", next_n, 1, _INT32_MAX)
    _check_nan_rank(op, nan_rank)
    _check_logits(op, logits)
    check_numpy_int32(op, "seq_lens", seq_lens)
    ends = decode_row_ends(next_n, seq_lens, num_rows, op=op)
    starts = np.zeros(num_rows, dtype=np.int64)
    return _select(op, logits, starts, ends, num_rows, stride0, stride1, top_k, nan_rank)


def decode_row_ends(next_n, seq_lens, num_rows, *, op="top_k_per_row_decode"):
    """Candidate end ``e`` of each decode row (spec §2), clamped at 0.

    Parameters
    ----------
    next_n : int, >= 1
    seq_lens : np.ndarray, int32, ``[batch]`` or ``[batch, next_n]``
    num_rows : int, >= 0

    Returns
    -------
    ends : np.ndarray, int64 ``[num_rows]``
    """
    if seq_lens.ndim == 1:
        needed = -(-num_rows // next_n)
        if seq_lens.shape[0] < needed:
            fail(op, f"seq_lens.shape[0] (batch={seq_lens.shape[0]}) must be >= "
                      f"ceil(num_rows / next_n) = {needed} (num_rows={num_rows}, next_n={next_n})")
        rows = np.arange(num_rows, dtype=np.int64)
        used = seq_lens.astype(np.int64)[rows // next_n]
        _check_nonnegative(op, "seq_lens", seq_lens[:needed].astype(np.int64))
        ends = used - next_n + rows % next_n + 1
    elif seq_lens.ndim == 2:
        if seq_lens.shape[1] != next_n:
            fail(op, f"2-D seq_lens must have shape [batch, next_n={next_n}]; "
                      f"got {seq_lens.shape}")
        if seq_lens.size < num_rows:
            fail(op, f"num_rows ({num_rows}) exceeds seq_lens.size ({seq_lens.size}) "
                      f"for 2-D seq_lens {seq_lens.shape}")
        ends = seq_lens.reshape(-1)[:num_rows].astype(np.int64)
        _check_nonnegative(op, "seq_lens", ends)
    else:
        fail(op, f"seq_lens must have 1 dimension [batch] or 2 [batch, next_n]; "
                  f"got shape {seq_lens.shape}")
    return np.maximum(ends, 0)


def row_scores(logits, starts, ends, stride0, stride1, *, op="top_k_per_row"):
    """The candidate scores of every row, as float32 copies (position ``i`` is column ``s + i``).

    Parameters
    ----------
    logits : np.ndarray, float32 / float16 / bfloat16, 2-D
    starts, ends : array-like of int, ``[num_rows]``
        Candidate ranges (already validated: ``0 <= starts <= ends``).
    stride0, stride1 : int, >= 0
        Element strides used to address ``logits``.

    Returns
    -------
    scores : list of np.ndarray float32, one ``[ends[r] - starts[r]]`` array per row

    Raises
    ------
    CupyOpsValueError
        A candidate address outside ``logits`` (see ``top_k_per_row_prefill``).
    """
    starts = np.asarray(starts, dtype=np.int64)
    ends = np.asarray(ends, dtype=np.int64)
    _check_addresses(op, logits, starts, ends, stride0, stride1)
    view = _addressed(logits, starts.shape[0], int(ends.max(initial=0)), stride0, stride1)
    return [np.array(view[r, starts[r]:ends[r]], dtype=np.float32) for r in range(len(starts))]


def prefill_row_scores(logits, row_starts, row_ends, num_rows, stride0, stride1):
    """Candidate scores of each prefill row (for ``check_top_k_per_row``); same arguments as the op."""
    starts = np.asarray(row_starts[:num_rows], dtype=np.int64)
    ends = np.asarray(row_ends[:num_rows], dtype=np.int64)
    return row_scores(logits, starts, ends, stride0, stride1, op="top_k_per_row_prefill")


def decode_row_scores(logits, next_n, seq_lens, num_rows, stride0, stride1):
    """Candidate scores of each decode row (for ``check_top_k_per_row``); same arguments as the op."""
    ends = decode_row_ends(next_n, seq_lens, num_rows)
    return row_scores(logits, np.zeros_like(ends), ends, stride0, stride1,
                      op="top_k_per_row_decode")


def order_keys(scores, *, nan_rank="lowest", signed_zeros=True):
    """Integer sort keys giving the module's total order: larger key = larger score.

    Parameters
    ----------
    scores : array-like, converted to float32 ``[L]``
    nan_rank : {"lowest", "highest"}
        NaN gets key -1 (below -inf, whose key is 0x007FFFFF) or 2**32 (above +inf).
    signed_zeros : bool
        True (spec): ``+0.0`` ranks above ``-0.0``. False: they are equal (torch.topk's view).

    Returns
    -------
    keys : np.ndarray, int64 ``[L]``
    """
    values = np.ascontiguousarray(scores, dtype=np.float32)
    bits = values.view(np.uint32).astype(np.int64)
    keys = np.where(bits >= 0x80000000, 0xFFFFFFFF - bits, bits + 0x80000000)
    if not signed_zeros:
        keys[bits == 0x80000000] = 0x80000000  # -0.0 takes +0.0's key
    keys[np.isnan(values)] = -1 if nan_rank == "lowest" else 2**32
    return keys


# -------------------------------------------------------------------------------------- checker

def check_top_k_result(row_scores, row_indices, top_k, *, row=None, nan_rank="lowest",
                       signed_zeros=True):
    """Assert that ``row_indices`` is a valid top-k answer for one row; order and ties are free.

    Parameters
    ----------
    row_scores : array-like, float ``[L]``
        The row's candidate scores, position ``i`` = column ``s + i`` (see ``row_scores``).
    row_indices : array-like, integer ``[top_k]``
        The answer to check (relative indices, ``-1`` = padding).
    top_k : int
    row : int or None
        Row number used in messages.
    nan_rank, signed_zeros
        The order to check against (see ``order_keys``); defaults are the spec's.

    Raises
    ------
    AssertionError
        With the row, the offending slot/index and the reason. Rules (spec §6): if ``L <= top_k``
        the row must be exactly ``[0..L-1] + [-1]*(top_k-L)``. Else: ``top_k`` entries, no ``-1``,
        all in ``[0, L)``, all distinct, and the selected scores are the ``top_k`` largest
        (no selected score below the k-th largest, no unselected score above it), which makes
        their multiset equal to the true top-k multiset exactly.
    """
    where = f"row {row}: " if row is not None else ""
    scores = np.asarray(row_scores, dtype=np.float32).reshape(-1)
    idx = np.asarray(row_indices)
    n = scores.shape[0]
    if idx.shape != (top_k,):
        raise AssertionError(f"{where}indices must have shape ({top_k},); got {idx.shape}")
    if not np.issubdtype(idx.dtype, np.integer):
        raise AssertionError(f"{where}indices must be integers; got dtype {idx.dtype}")
    idx = idx.astype(np.int64)

    if n <= top_k:
        expected = np.where(np.arange(top_k) < n, np.arange(top_k), -1)
        wrong = np.flatnonzero(idx != expected)
        if wrong.size:
            j = int(wrong[0])
            raise AssertionError(
                f"{where}L={n} <= top_k={top_k}, so the row must be [0..{n - 1}] then -1 padding; "
                f"slot {j} holds {idx[j]}, expected {expected[j]} ({wrong.size} slots wrong)")
        return

    pad = np.flatnonzero(idx == -1)
    if pad.size:
        raise AssertionError(f"{where}slot {int(pad[0])} holds -1 padding, but L={n} > "
                             f"top_k={top_k} so every slot must hold a candidate")
    out = np.flatnonzero((idx < 0) | (idx >= n))
    if out.size:
        j = int(out[0])
        raise AssertionError(f"{where}slot {j} holds index {idx[j]}, outside [0, L={n})")
    values, first, counts = np.unique(idx, return_index=True, return_counts=True)
    if (counts > 1).any():
        v = int(values[np.argmax(counts > 1)])
        j0, j1 = np.flatnonzero(idx == v)[:2]
        raise AssertionError(f"{where}index {v} is selected twice (slots {j0} and {j1})")

    keys = order_keys(scores, nan_rank=nan_rank, signed_zeros=signed_zeros)
    kth = np.partition(keys, n - top_k)[n - top_k]  # the top_k-th largest key
    kth_pos = int(np.flatnonzero(keys == kth)[0])
    kth_text = f"the top_k-th largest score {_fmt(scores[kth_pos])}"
    selected = np.zeros(n, dtype=bool)
    selected[idx] = True
    below = np.flatnonzero(keys[idx] < kth)
    if below.size:
        j = int(below[0])
        better = np.flatnonzero(~selected & (keys >= kth))
        raise AssertionError(
            f"{where}slot {j} selects index {idx[j]} with score {_fmt(scores[idx[j]])}, below "
            f"{kth_text}; unselected index {int(better[0])} has score {_fmt(scores[better[0]])}")
    missed = np.flatnonzero(~selected & (keys > kth))
    if missed.size:
        m = int(missed[0])
        raise AssertionError(f"{where}index {m} with score {_fmt(scores[m])} is above {kth_text} "
                             f"but not selected ({missed.size} such indices)")


def check_top_k_per_row(scores_per_row, indices, top_k, *, nan_rank="lowest", signed_zeros=True,
                        max_reported=5):
    """Assert ``check_top_k_result`` for every row; one AssertionError lists the first failures.

    Parameters
    ----------
    scores_per_row : sequence of float arrays, ``num_rows`` of them
        From ``prefill_row_scores`` / ``decode_row_scores``.
    indices : array-like, integer ``[num_rows, top_k]``
        The answer to check, e.g. a GPU op's output copied to the host.
    top_k : int
    nan_rank, signed_zeros
        See ``order_keys``.
    max_reported : int
        Failures quoted in the message (the total count is always given).
    """
    indices = np.asarray(indices)
    if indices.shape != (len(scores_per_row), top_k):
        raise AssertionError(f"indices must have shape ({len(scores_per_row)}, {top_k}); "
                             f"got {indices.shape}")
    failures = []
    for r, scores in enumerate(scores_per_row):
        try:
            check_top_k_result(scores, indices[r], top_k, row=r, nan_rank=nan_rank,
                               signed_zeros=signed_zeros)
        except AssertionError as exc:
            failures.append(str(exc))
    if failures:
        shown = "\n  ".join(failures[:max_reported])
        raise AssertionError(f"{len(failures)} of {len(scores_per_row)} rows are wrong:\n  {shown}")


# ------------------------------------------------------------------------------------ internals

def _select(op, logits, starts, ends, num_rows, stride0, stride1, top_k, nan_rank):
    lengths = ends - starts
    slots = np.arange(top_k, dtype=np.int64)
    # L <= top_k rows: identity then -1, scores never read (spec §2).
    out = np.where(slots[None, :] < lengths[:, None], slots[None, :], -1).astype(np.int32)
    long_rows = np.flatnonzero(lengths > top_k)
    # Validate every candidate address (short rows included: a range outside logits is a bug
    # even where vLLM would not read it), but read only the rows that need their scores.
    _check_addresses(op, logits, starts, ends, stride0, stride1)
    if long_rows.size:
        view = _addressed(logits, num_rows, int(ends[long_rows].max()), stride0, stride1)
        for r in long_rows:
            out[r] = _ranked_top_k(order_keys(view[r, starts[r]:ends[r]], nan_rank=nan_rank), top_k)
    return out


def _ranked_top_k(keys, top_k):
    """The first top_k of the stable descending sort of ``keys`` (descending score, equal
    scores by ascending index), without sorting the whole row: the top_k-th largest key T by
    partition, every key above T and the lowest-indexed keys equal to T, then only those
    sorted. Same answer as ``np.argsort(-keys, kind="stable")[:top_k]`` (tests compare it with
    a full lexsort); the CPU fallback 2-6x faster on 8K-128K rows than sorting whole rows."""
    n = keys.size
    kth = np.partition(keys, n - top_k)[n - top_k]
    take = keys > kth
    take[np.flatnonzero(keys == kth)[:top_k - np.count_nonzero(take)]] = True
    chosen = np.flatnonzero(take)  # ascending index
    return chosen[np.argsort(-keys[chosen], kind="stable")]


def _addressed(logits, num_rows, width, stride0, stride1):
    """Read-only view whose (r, c) is logits' element r*stride0 + c*stride1 (vLLM's addressing)."""
    isz = logits.itemsize
    return np.lib.stride_tricks.as_strided(logits, shape=(num_rows, width),
                                           strides=(stride0 * isz, stride1 * isz), writeable=False)


def _check_addresses(op, logits, starts, ends, stride0, stride1):
    """Every candidate ``(r, c)``, ``starts[r] <= c < ends[r]``, must address an element of logits."""
    isz = logits.itemsize
    own = tuple(s // isz if s % isz == 0 else None for s in logits.strides)
    check_candidate_addresses(op, logits.shape, own, _extent_elems(logits), starts, ends,
                              stride0, stride1)


def check_candidate_addresses(op, shape, own_strides, extent, starts, ends, stride0, stride1):
    """Every candidate ``(r, c)``, ``starts[r] <= c < ends[r]``, must address an element of logits.

    Parameters
    ----------
    shape : (int, int)
        logits' shape.
    own_strides : (int or None, int or None)
        logits' own element strides (None where a byte stride is not a whole element).
    extent : (int, int)
        Half-open range of element offsets, relative to logits' first element, that it spans.
    starts, ends : np.ndarray int64 ``[num_rows]``
        Candidate ranges (``0 <= starts <= ends``).
    stride0, stride1 : int
        The strides the op addresses logits with.

    Raises
    ------
    CupyOpsValueError
        Naming the first row whose candidates fall outside logits.
    """
    rows = np.flatnonzero(ends > starts)
    natural = ((shape[0] <= 1 or own_strides[0] == stride0)
               and (shape[1] <= 1 or own_strides[1] == stride1))
    if natural:
        # The strides are logits' own: the candidates must lie inside its shape.
        if starts.shape[0] > shape[0]:
            fail(op, f"num_rows ({starts.shape[0]}) exceeds logits.shape[0] ({shape[0]})")
        past = rows[ends[rows] > shape[1]]
        if past.size:
            r = int(past[0])
            fail(op, f"row {r}'s candidate range [{starts[r]}, {ends[r]}) passes "
                      f"logits.shape[1] ({shape[1]})")
    if rows.size == 0:
        return
    # Any strides: the first and last candidate of each row (offsets are monotone because the
    # strides are >= 0) must lie inside the elements logits spans.
    lo, hi = extent
    first = rows * stride0 + starts[rows] * stride1
    last = rows * stride0 + (ends[rows] - 1) * stride1
    bad = rows[(first < lo) | (last >= hi)]
    if bad.size:
        r = int(bad[0])
        fail(op, f"row {r}'s candidates [{starts[r]}, {ends[r]}) address elements "
                  f"{r}*stride0+{starts[r]}*stride1 .. {r}*stride0+{ends[r] - 1}*stride1 "
                  f"(stride0={stride0}, stride1={stride1}), outside logits' memory, which spans "
                  f"element offsets [{lo}, {hi})")


def _extent_elems(arr):
    """Half-open range of element offsets, relative to arr's first element, that arr spans."""
    if arr.size == 0:
        return 0, 0
    lo = sum(s * (n - 1) for s, n in zip(arr.strides, arr.shape) if s < 0)
    hi = sum(s * (n - 1) for s, n in zip(arr.strides, arr.shape) if s > 0)
    return lo // arr.itemsize, hi // arr.itemsize + 1


def _check_scalars(op, num_rows, stride0, stride1, top_k):
    return (check_int(op, "num_rows", num_rows, 0, _INT32_MAX),
            check_int(op, "stride0", stride0, 0, _INT32_MAX),
            check_int(op, "stride1", stride1, 0, _INT32_MAX),
            check_int(op, "top_k", top_k, 1, MAX_TOP_K))


def _check_nan_rank(op, nan_rank):
    if nan_rank not in _NAN_RANKS:
        fail(op, f"nan_rank must be one of {', '.join(_NAN_RANKS)}; got {nan_rank!r}")


def _check_logits(op, logits):
    if not isinstance(logits, np.ndarray):
        fail(op, f"logits must be a NumPy array; got {type(logits).__name__}",
              kind=CupyOpsTypeError)
    if logits.dtype.name not in _LOGITS_DTYPES:
        fail(op, f"logits.dtype must be one of {', '.join(_LOGITS_DTYPES)}; "
                  f"got {logits.dtype.name}", kind=CupyOpsTypeError)
    if logits.ndim != 2:
        fail(op, f"logits must have 2 dimensions [num_rows, num_cols]; got shape {logits.shape}")


def _check_nonnegative(op, name, values):
    bad = np.flatnonzero(values < 0)
    if bad.size:
        i = int(bad[0])
        fail(op, f"{name}[{i}] must be >= 0; got {values[i]}")


def _fmt(x):
    """A score with its float32 bits, so -0.0 vs +0.0 and NaN payloads are visible."""
    x = np.float32(x)
    return f"{float(x)!r} [0x{int(x.view(np.uint32)):08x}]"
