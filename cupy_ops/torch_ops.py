"""torch.library registration: every op as ``torch.ops.cupy_ops.<name>``.

    import cupy_ops.torch_ops  # registers; ``import cupy_ops`` alone never imports torch
    torch.ops.cupy_ops.paged_attention_v1(out, query, key_cache, value_cache, num_kv_heads,
                                          scale, block_tables, seq_lens, block_size, max_seq_len)

Schemas come from ``cupy_ops._schemas.OPS`` (argument order of vLLM's torch ops, mutation marks,
defaults). Each op gets a CUDA kernel (our GPU op, on torch's current stream), a CPU kernel (the
float64 reference path our ops take for CPU tensors) and a fake implementation, so the ops run
under FakeTensor mode, trace into ``torch.compile(fullgraph=True)`` graphs without breaks and
capture into CUDA graphs (run each op once before capturing, so that its kernel is loaded).

The torch op adds the dispatcher's boxing and one Python call to the direct call;
``measure_host_time_us()`` measures both paths on the GPU.
"""

from __future__ import annotations

import torch

from . import _schemas

NAMESPACE = "cupy_ops"
DISPATCH_KEYS = ("CUDA", "CPU")
# Our kernels honour the strides they are given (and check the ones they need), so inductor
# must pass tensors with the strides the eager program had, not relayout them.
TAGS = (torch.Tag.pt2_compliant_tag, torch.Tag.needs_fixed_stride_order)


def _no_outputs(*args, **kwargs) -> None:
    """Fake implementation of an op that only writes into its arguments."""
    return None


def register(lib: torch.library.Library, entry: _schemas.OpSchema, schema: str) -> None:
    """Define ``schema`` in ``lib`` with ``entry.impl`` for CUDA and CPU and a fake kernel."""
    lib.define(schema, tags=TAGS)
    for key in DISPATCH_KEYS:
        lib.impl(entry.name, entry.impl, key)
    torch.library.register_fake(f"{lib.ns}::{entry.name}", _no_outputs, lib=lib)


_LIB = torch.library.Library(NAMESPACE, "DEF")
for _entry in _schemas.OPS:
    if _entry.impl is not None:
        register(_LIB, _entry, _entry.schema)

REGISTERED = tuple(e.name for e in _schemas.OPS if e.impl is not None)


def measure_host_time_us(reps: int = 2000) -> dict:
    """Host time per call (us) of tiny GPU problems, direct vs through torch.ops.cupy_ops.

    Returns ``{op: {"direct": us, "torch_library": us}}`` for merge_attn_states,
    paged_attention_v1/v2 and reshape_and_cache. The GPU never limits these calls, so the
    numbers are validation (cached), dispatch and launch cost. Needs a CUDA GPU.
    """
    from . import merge_attn_states, paged_attention_v1, paged_attention_v2, reshape_and_cache
    from ._bench import host_time_us

    dev = "cuda"
    ops = torch.ops.cupy_ops
    T, H, Hkv, D, BS, L = 1, 32, 8, 128, 16, 64
    x = torch.randn(T, H, D, device=dev, dtype=torch.bfloat16)
    lse = torch.randn(H, T, device=dev)
    out, out_lse = torch.empty_like(x), torch.empty_like(lse)
    kc = torch.randn(L // BS, Hkv, D // 8, BS, 8, device=dev, dtype=torch.bfloat16)
    vc = torch.randn(L // BS, Hkv, D, BS, device=dev, dtype=torch.bfloat16)
    table = torch.arange(L // BS, device=dev, dtype=torch.int32)[None]
    lens = torch.full((T,), L, device=dev, dtype=torch.int32)
    es, ml = torch.empty(T, H, 1, device=dev), torch.empty(T, H, 1, device=dev)
    tmp = torch.empty(T, H, 1, D, device=dev, dtype=torch.bfloat16)
    k_new = torch.randn(T, Hkv, D, device=dev, dtype=torch.bfloat16)
    slots = torch.zeros(T, device=dev, dtype=torch.int64)
    paged = (x, kc, vc, Hkv, D ** -0.5, table, lens, BS, L)
    calls = {
        "merge_attn_states": (lambda i: merge_attn_states(out, x, lse, x, lse, out_lse),
                              lambda i: ops.merge_attn_states(out, out_lse, x, lse, x, lse)),
        "paged_attention_v1": (lambda i: paged_attention_v1(out, *paged),
                               lambda i: ops.paged_attention_v1(out, *paged)),
        "paged_attention_v2": (lambda i: paged_attention_v2(out, es, ml, tmp, *paged),
                               lambda i: ops.paged_attention_v2(out, es, ml, tmp, *paged)),
        "reshape_and_cache": (lambda i: reshape_and_cache(k_new, k_new, kc, vc, slots, "auto"),
                              lambda i: ops.reshape_and_cache(k_new, k_new, kc, vc, slots, "auto")),
    }
    return {name: {"direct": host_time_us(direct, reps), "torch_library": host_time_us(lib, reps)}
            for name, (direct, lib) in calls.items()}
