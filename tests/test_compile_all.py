"""CPU: every kernel variant the dispatchers can choose compiles with NVRTC (no GPU needed).

Reads the same tables as the dispatchers and `python -m cupy_ops precompile`. Name expressions
of one source are grouped into NVRTC programs and compiled in parallel processes to keep CI
fast; production compiles one variant per program through the same nvrtc_compile().
"""

import os
from concurrent.futures import ProcessPoolExecutor

import pytest

from cupy_ops import _runtime
from cupy_ops.ops import FAMILIES

from .conftest import requires_nvrtc

pytestmark = requires_nvrtc

GROUP = 12  # name expressions per NVRTC program


def _compile(args):
    source_name, exprs, arch = args
    compiled = _runtime.nvrtc_compile(_runtime.read_source(source_name), exprs,
                                      _runtime.compile_options(arch), program_name=source_name)
    assert set(compiled.lowered_names) == set(exprs)
    assert all(name.startswith("_Z") for name in compiled.lowered_names.values())
    return len(compiled.binary)


def _compile_all(family, variants, arch):
    exprs = [family.name_expression(v) for v in variants]
    assert len(set(exprs)) == len(exprs), "two variants format to one name expression"
    groups = [(family.source, exprs[i:i + GROUP], arch) for i in range(0, len(exprs), GROUP)]
    with ProcessPoolExecutor(max_workers=max(1, min(len(groups), os.cpu_count() or 1))) as pool:
        sizes = list(pool.map(_compile, groups))
    assert all(size > 1000 for size in sizes)


# sm_90 (the card we ship for): every variant. sm_80 keeps the sources honest for Ampere users:
# the common set.
@pytest.mark.parametrize("op", sorted(FAMILIES))
def test_every_variant_compiles_for_sm90(op):
    _compile_all(FAMILIES[op], FAMILIES[op].variants, 90)


@pytest.mark.parametrize("op", sorted(FAMILIES))
def test_common_variants_compile_for_sm80(op):
    _compile_all(FAMILIES[op], FAMILIES[op].common, 80)


def test_common_sets_are_subsets_of_tables():
    for family in FAMILIES.values():
        assert family.common, f"{family.op} has no common variants to precompile"
        assert all(family.contains(v) for v in family.common)


# Experiment switches staged in docs/perf.md for a device run (CUPY_OPS_EXPERIMENT_DEFINES): each
# must still compile (the common variants) until it is measured and either becomes the
# default or is removed (then drop it here too).
STAGED_SWITCHES: list[tuple[str, str]] = [  # (op, switch) of experiments staged for a device run
    ("top_k_per_row", "CUPY_OPS_EXP_TOPK_PARAMS_FIRST"),
    ("top_k_per_row", "CUPY_OPS_EXP_TOPK_FIND_BIN_CTA_BARRIER"),
]


@pytest.mark.parametrize("op,switch", STAGED_SWITCHES)
def test_staged_experiment_switches_compile(op, switch, monkeypatch):
    monkeypatch.setenv("CUPY_OPS_EXPERIMENT_DEFINES", switch)
    family = FAMILIES[op]
    source = _runtime.read_source(family.source)
    assert switch in source, f"{switch} is no longer in {family.source}: drop it from STAGED_SWITCHES"
    options = _runtime.compile_options(90)
    assert f"-D{switch}" in options
    exprs = [family.name_expression(v) for v in family.common]
    compiled = _runtime.nvrtc_compile(source, exprs, options, program_name=family.source)
    assert set(compiled.lowered_names) == set(exprs) and len(compiled.binary) > 1000


# Profiling builds of tools/exp_top_k.py (phase marks, per-CTA times): not shipped, but a tool
# that no longer compiles is found on the GPU machine, where time is scarce.
@pytest.mark.parametrize("defines", [("CUPY_OPS_TOPK_TIMING",), ("CUPY_OPS_TOPK_CTA_TIMES",),
                                     ("CUPY_OPS_TOPK_TIMING", "CUPY_OPS_TOPK_CTA_TIMES")])
def test_top_k_profiling_builds_compile(defines):
    family = FAMILIES["top_k_per_row"]
    source = _runtime.read_source(family.source)
    options = _runtime.compile_options(90) + tuple(f"-D{d}" for d in defines)
    variant = next(v for v in family.common if v.cluster == 1)
    expr = family.name_expression(variant)
    compiled = _runtime.nvrtc_compile(source, [expr], options, program_name=family.source)
    assert expr in compiled.lowered_names and len(compiled.binary) > 1000
