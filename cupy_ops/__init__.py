"""cupy-ops: vLLM's attention-stage custom ops as NVRTC-compiled CUDA kernels, no C++ build.

Public ops keep vLLM's names and argument order. torch tensors and CuPy arrays run on the GPU
(on the caller's current stream); NumPy arrays and torch CPU tensors run the float64 reference.
"""

from ._checks import CupyOpsTypeError, CupyOpsValueError, NoGPUError
from .ops.merge_attn_states import merge_attn_states
from .ops.paged_attention import paged_attention_v1, paged_attention_v2
from .ops.vertical_slash import (convert_vertical_slash_indexes,
                                 convert_vertical_slash_indexes_mergehead)

__version__ = "0.1.0"

__all__ = [
    "merge_attn_states",
    "paged_attention_v1",
    "paged_attention_v2",
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
