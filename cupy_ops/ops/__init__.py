"""One module per op family; FAMILIES is the kernel table every reader walks.

Readers of the tables: the dispatchers (choose_variant in each module), ``python -m cupy_ops
precompile`` and tests/test_compile_all.py.
"""

from . import merge_attn_states

FAMILIES = {
    merge_attn_states.FAMILY.op: merge_attn_states.FAMILY,
}
