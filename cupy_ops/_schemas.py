"""One table of op schemas, read by ``torch_ops`` (namespace ``cupy_ops``) and ``vllm_compat``
(vLLM's names). Adding an op to both is one entry here.

Each entry holds:

- ``schema``: our schema. Argument order of vLLM's torch op (``torch.ops._C.<name>``), which is
  not always its Python wrapper's (merge_attn_states puts ``output_lse`` second), so one
  implementation serves both namespaces. Distinct argument names, each mutated tensor marked
  with its own alias set ``Tensor(a!)``, defaults for trailing arguments, our extensions as
  keyword-only arguments (vLLM's calls never pass them).
- ``vllm_schema``: vLLM's schema verbatim (``Tensor!``, no defaults, the upstream duplicate
  ``q_seqlens`` name kept), registered by ``vllm_compat.install()``.
- ``vllm_namespace``: where vLLM registers it (``_C``; ``_C_cache_ops`` for cache ops).
- ``impl``: the function called with the schema's arguments in order, or None while the op has
  only a NumPy reference (such entries are skipped when registering).

Every op writes its outputs in place and returns nothing, so the fake (meta) implementation
that torch.compile and FakeTensor mode run is a no-op: output shapes are the caller's.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from .ops.merge_attn_states import merge_attn_states
from .ops.paged_attention import paged_attention_v1, paged_attention_v2
from .ops.reshape_and_cache import reshape_and_cache
from .ops.top_k_per_row import top_k_per_row_decode, top_k_per_row_prefill
from .ops.vertical_slash import (convert_vertical_slash_indexes,
                                 convert_vertical_slash_indexes_mergehead)


@dataclasses.dataclass(frozen=True)
class OpSchema:
    schema: str
    vllm_schema: str
    impl: Callable | None
    vllm_namespace: str = "_C"

    @property
    def name(self) -> str:
        return self.schema.split("(", 1)[0]


def _merge_attn_states(output, output_lse, prefix_output, prefix_lse, suffix_output, suffix_lse,
                       *, lse_base2=False):
    """merge_attn_states in the torch op's argument order (output_lse second)."""
    merge_attn_states(output, prefix_output, prefix_lse, suffix_output, suffix_lse, output_lse,
                      lse_base2=lse_base2)


_PAGED_TAIL = ("Tensor query, Tensor key_cache, Tensor value_cache, int num_kv_heads, float scale, "
               "Tensor block_tables, Tensor seq_lens, int block_size, int max_seq_len, ")
_PAGED_OURS = (_PAGED_TAIL + 'Tensor? alibi_slopes=None, str kv_cache_dtype="auto", '
               "Tensor? k_scale=None, Tensor? v_scale=None, int tp_rank=0, "
               "int blocksparse_local_blocks=0, int blocksparse_vert_stride=0, "
               "int blocksparse_block_size=64, int blocksparse_head_sliding_step=0) -> ()")
_PAGED_VLLM = (_PAGED_TAIL + "Tensor? alibi_slopes, str kv_cache_dtype, Tensor k_scale, "
               "Tensor v_scale, int tp_rank, int blocksparse_local_blocks, "
               "int blocksparse_vert_stride, int blocksparse_block_size, "
               "int blocksparse_head_sliding_step) -> ()")
def _vertical_slash(block_count, block_offset, column_count, column_index, q_seqlens, kv_seqlens,
                    vertical_indexes, slash_indexes, context_size, block_size_M, block_size_N,
                    causal=True):
    """convert_vertical_slash_indexes in the torch op's form: outputs first, written in place."""
    convert_vertical_slash_indexes(q_seqlens, kv_seqlens, vertical_indexes, slash_indexes,
                                   context_size, block_size_M, block_size_N, causal,
                                   out=(block_count, block_offset, column_count, column_index))


def _vertical_slash_mergehead(block_count, block_offset, column_count, column_index, q_seqlens,
                              kv_seqlens, vertical_indexes, slash_indexes, vertical_indices_count,
                              slash_indices_count, context_size, block_size_M, block_size_N,
                              causal=True):
    """The mergehead op in the torch op's form (outputs first, in place)."""
    convert_vertical_slash_indexes_mergehead(
        q_seqlens, kv_seqlens, vertical_indexes, slash_indexes, vertical_indices_count,
        slash_indices_count, context_size, block_size_M, block_size_N, causal,
        out=(block_count, block_offset, column_count, column_index))


_VS_OUTS = ("Tensor(a!) block_count, Tensor(b!) block_offset, Tensor(c!) column_count, "
            "Tensor(d!) column_index, Tensor q_seqlens, Tensor kv_seqlens, Tensor vertical_indexes, "
            "Tensor slash_indexes, ")
_VS_OUTS_VLLM = ("Tensor! block_count, Tensor! block_offset, Tensor! column_count, "
                 "Tensor! column_index, Tensor q_seqlens, Tensor q_seqlens, Tensor vertical_indexes, "
                 "Tensor slash_indexes, ")
_VS_TAIL = "int context_size, int block_size_M, int block_size_N, bool causal"
_MERGEHEAD = "Tensor vertical_indices_count, Tensor slash_indices_count, "

OPS = (
    OpSchema(
        "merge_attn_states(Tensor(a!) output, Tensor(b!)? output_lse, Tensor prefix_output, "
        "Tensor prefix_lse, Tensor suffix_output, Tensor suffix_lse, *, bool lse_base2=False) -> ()",
        "merge_attn_states(Tensor! output, Tensor!? output_lse, Tensor prefix_output, "
        "Tensor prefix_lse, Tensor suffix_output, Tensor suffix_lse) -> ()",
        _merge_attn_states),
    OpSchema("paged_attention_v1(Tensor(a!) out, " + _PAGED_OURS,
             "paged_attention_v1(Tensor! out, " + _PAGED_VLLM,
             paged_attention_v1),
    OpSchema("paged_attention_v2(Tensor(a!) out, Tensor(b!) exp_sums, Tensor(c!) max_logits, "
             "Tensor(d!) tmp_out, " + _PAGED_OURS,
             "paged_attention_v2(Tensor! out, Tensor! exp_sums, Tensor! max_logits, "
             "Tensor! tmp_out, " + _PAGED_VLLM,
             paged_attention_v2),
    OpSchema(
        "reshape_and_cache(Tensor key, Tensor value, Tensor(a!) key_cache, Tensor(b!) value_cache, "
        'Tensor slot_mapping, str kv_cache_dtype="auto", Tensor? k_scale=None, '
        "Tensor? v_scale=None) -> ()",
        "reshape_and_cache(Tensor key, Tensor value, Tensor! key_cache, Tensor! value_cache, "
        "Tensor slot_mapping, str kv_cache_dtype, Tensor k_scale, Tensor v_scale) -> ()",
        reshape_and_cache, vllm_namespace="_C_cache_ops"),
    OpSchema(
        "top_k_per_row_prefill(Tensor logits, Tensor row_starts, Tensor row_ends, Tensor(a!) indices, "
        "int num_rows, int stride0, int stride1, int top_k) -> ()",
        "top_k_per_row_prefill(Tensor logits, Tensor rowStarts, Tensor rowEnds, Tensor! indices, "
        "int numRows, int stride0, int stride1, int topK) -> ()",
        top_k_per_row_prefill),
    OpSchema(
        "top_k_per_row_decode(Tensor logits, int next_n, Tensor seq_lens, Tensor(a!) indices, "
        "int num_rows, int stride0, int stride1, int top_k) -> ()",
        "top_k_per_row_decode(Tensor logits, int next_n, Tensor seq_lens, Tensor! indices, "
        "int numRows, int stride0, int stride1, int topK) -> ()",
        top_k_per_row_decode),
    OpSchema("convert_vertical_slash_indexes(" + _VS_OUTS + _VS_TAIL + "=True) -> ()",
             "convert_vertical_slash_indexes(" + _VS_OUTS_VLLM + _VS_TAIL + ") -> ()",
             _vertical_slash),
    OpSchema("convert_vertical_slash_indexes_mergehead(" + _VS_OUTS + _MERGEHEAD + _VS_TAIL
             + "=True) -> ()",
             "convert_vertical_slash_indexes_mergehead(" + _VS_OUTS_VLLM + _MERGEHEAD + _VS_TAIL
             + ") -> ()",
             _vertical_slash_mergehead),
)
