"""cupy-ops: vLLM's attention-stage custom ops as NVRTC-compiled CUDA kernels, no C++ build.

Public ops keep vLLM's names and argument order. torch tensors and CuPy arrays run on the GPU
(on the caller's current stream); NumPy arrays and torch CPU tensors run the float64 reference.
``decode_attention``, ``merge_states`` and ``paged_kv_from_dense`` are a functional layer that
allocates and returns outputs. torch.library ops: ``import cupy_ops.torch_ops``; vLLM drop-in:
``cupy_ops.vllm_compat.install()`` (both import torch; this module does not).
"""

from ._checks import CupyOpsTypeError, CupyOpsValueError, NoGPUError
from .ops.merge_attn_states import merge_attn_states
from .ops.paged_attention import paged_attention_v1, paged_attention_v2
from .ops.top_k_per_row import top_k_per_row_decode, top_k_per_row_prefill
from .ops.reshape_and_cache import reshape_and_cache
from .functional import PagedKV, decode_attention, merge_states, paged_kv_from_dense
from .ops.vertical_slash import (convert_vertical_slash_indexes,
                                 convert_vertical_slash_indexes_mergehead)

__version__ = "0.1.0"

__all__ = [
    "merge_attn_states",
    "paged_attention_v1",
    "paged_attention_v2",
    "top_k_per_row_prefill",
    "top_k_per_row_decode",
    "reshape_and_cache",
    "decode_attention",
    "merge_states",
    "paged_kv_from_dense",
    "PagedKV",
    "convert_vertical_slash_indexes",
    "convert_vertical_slash_indexes_mergehead",
    "CupyOpsTypeError",
    "CupyOpsValueError",
    "NoGPUError",
    "info",
]


def info() -> dict:
    """Versions, device, NVRTC and cache facts (also ``python -m cupy_ops info``)."""
    from ._info import collect
    return collect()
