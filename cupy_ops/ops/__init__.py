"""One module per op family; FAMILIES is the kernel table every reader walks.

Readers of the tables: the dispatchers (choose_variant in each module), ``python -m cupy_ops
precompile`` and tests/test_compile_all.py.
"""

from . import (merge_attn_states, paged_attention, reshape_and_cache, top_k_per_row,
               vertical_slash)

FAMILIES = {f.op: f for f in (merge_attn_states.FAMILY, paged_attention.FAMILY,
                              paged_attention.MMA_FAMILY, paged_attention.MMA8_FAMILY,
                              paged_attention.GQA_FAMILY,
                              paged_attention.MMA_PARTS_FAMILY,
                              paged_attention.REDUCE_FAMILY, reshape_and_cache.FAMILY,
                              top_k_per_row.FAMILY, vertical_slash.FAMILY)}
