"""float64 oracle for merge_attn_states (spec: merge_attn_states.md §4)."""

from __future__ import annotations

import numpy as np


def merge_attn_states(prefix_output, prefix_lse, suffix_output, suffix_lse, *, lse_base2=False):
    """Merge two partial attention results by their LSEs, in float64.

    Parameters
    ----------
    prefix_output, suffix_output : array [num_tokens, num_heads, head_size], any float dtype
    prefix_lse, suffix_lse : array [num_heads, num_tokens], float
        Log-sum-exp of each partial result's scores; natural log unless ``lse_base2``.
        +inf and -inf both mean "no keys" (FA2 reports +inf, FA3 -inf).

    Returns
    -------
    output : float64 [num_tokens, num_heads, head_size]
    output_lse : float64 [num_heads, num_tokens]

    Notes
    -----
    Both sides empty: output is prefix_output unchanged and the LSE is -inf (vLLM's CUDA
    behaviour; its Triton kernel gives NaN). A NaN LSE paired with -inf counts as both empty,
    since the kernel takes max(p, s) with fmaxf, which drops the NaN. A side whose weight is
    exactly zero (LSE -inf or so small that the exponential underflows in fp32) does not
    contribute: the output is the other side unchanged, even where the zero-weight side holds NaN.
    Any other NaN LSE gives NaN output and LSE.
    """
    x = np.asarray(prefix_output, dtype=np.float64)
    y = np.asarray(suffix_output, dtype=np.float64)
    p = np.asarray(prefix_lse, dtype=np.float64).T[:, :, None]  # [T, H, 1]
    s = np.asarray(suffix_lse, dtype=np.float64).T[:, :, None]
    p = np.where(np.isinf(p), -np.inf, p)
    s = np.where(np.isinf(s), -np.inf, s)
    m = np.fmax(p, s)  # like fmaxf: NaN only when both are NaN
    both_empty = m == -np.inf
    exp = np.exp2 if lse_base2 else np.exp
    log = np.log2 if lse_base2 else np.log
    with np.errstate(invalid="ignore", over="ignore", under="ignore", divide="ignore"):
        m_safe = np.where(both_empty, 0.0, m)
        wp = exp(p - m_safe)
        ws = exp(s - m_safe)
        z = wp + ws
        a = wp / z
        b = ws / z
        # The kernel decides "zero weight" in fp32, where exp underflows sooner than in float64.
        a32 = _fp32_weight(p - m_safe, lse_base2)
        b32 = _fp32_weight(s - m_safe, lse_base2)
        merged = a * x + b * y
        merged = np.where(a32 == 0, y, merged)
        merged = np.where((b32 == 0) & (a32 != 0), x, merged)
        merged = np.where(both_empty, x, merged)
        lse = np.where(both_empty, -np.inf, m_safe + log(z))
    return merged, lse[:, :, 0].T


def _fp32_weight(diff, lse_base2):
    """Whether the kernel's fp32 weight e^diff / (e^diff + 1) is exactly zero: 0 or nonzero."""
    d = diff.astype(np.float32)
    with np.errstate(under="ignore", over="ignore", invalid="ignore"):
        w = np.exp2(d) if lse_base2 else np.exp(d)
        return np.where(np.isnan(w), 1.0, w)  # NaN weights are not zero: NaN propagates
