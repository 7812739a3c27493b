"""CPU: every kernel variant the dispatchers can choose compiles with NVRTC (no GPU needed).

Reads the same tables as the dispatchers and `python -m cupy_ops precompile`. Many name
expressions of one source share an NVRTC program here, to keep CI fast; production compiles one
variant per program through the same nvrtc_compile().
"""

import pytest

from cupy_ops import _runtime
from cupy_ops.ops import FAMILIES

from .conftest import requires_nvrtc

pytestmark = requires_nvrtc

# sm_90 is the card we ship for; sm_80 keeps the sources honest for Ampere users.
ARCHS = (90, 80)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("op", sorted(FAMILIES))
def test_every_variant_compiles(op, arch):
    family = FAMILIES[op]
    exprs = [family.name_expression(v) for v in family.variants]
    assert len(set(exprs)) == len(exprs), "two variants format to one name expression"
    compiled = _runtime.nvrtc_compile(_runtime.read_source(family.source), exprs,
                                      _runtime.compile_options(arch), program_name=family.source)
    assert set(compiled.lowered_names) == set(exprs)
    assert all(name.startswith("_Z") for name in compiled.lowered_names.values())
    assert len(compiled.binary) > 1000


def test_common_sets_are_subsets_of_tables():
    for family in FAMILIES.values():
        assert family.common, f"{family.op} has no common variants to precompile"
        assert all(family.contains(v) for v in family.common)
