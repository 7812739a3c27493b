"""CPU: the compile path and the disk cache (hits, corruption, read-only dirs, concurrency)."""

import os
import stat
import subprocess
import sys
import warnings

import pytest

from cupy_ops import _runtime
from cupy_ops.ops import merge_attn_states as merge

from .conftest import requires_nvrtc

pytestmark = requires_nvrtc
VARIANT = merge.FAMILY.common[0]


def cache_files(d):
    return sorted(p for p in d.glob("*.cubin"))


def test_second_build_is_a_disk_hit(tmp_cache):
    before = (_runtime.stats.compiled, _runtime.stats.disk_hits)
    first = _runtime.build_variant(merge.FAMILY, VARIANT, 90)
    second = _runtime.build_variant(merge.FAMILY, VARIANT, 90)
    assert (_runtime.stats.compiled, _runtime.stats.disk_hits) == (before[0] + 1, before[1] + 1)
    assert first == second
    assert len(cache_files(tmp_cache)) == 1


def test_new_process_hits_the_disk_cache(tmp_cache):
    _runtime.build_variant(merge.FAMILY, VARIANT, 90)
    code = ("from cupy_ops import _runtime; from cupy_ops.ops import merge_attn_states as m;"
            "_runtime.build_variant(m.FAMILY, m.FAMILY.common[0], 90);"
            "print(_runtime.stats.compiled, _runtime.stats.disk_hits)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, CUPY_OPS_CACHE_DIR=str(tmp_cache)))
    assert out.stdout.split() == ["0", "1"]


def test_each_arch_and_variant_gets_its_own_entry(tmp_cache):
    _runtime.build_variant(merge.FAMILY, VARIANT, 90)
    _runtime.build_variant(merge.FAMILY, VARIANT, 80)
    _runtime.build_variant(merge.FAMILY, merge.FAMILY.common[1], 90)
    assert len(cache_files(tmp_cache)) == 3


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_corrupt_cache_file_is_detected_and_rebuilt(tmp_cache, damage):
    good = _runtime.build_variant(merge.FAMILY, VARIANT, 90)
    (path,) = cache_files(tmp_cache)
    blob = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(blob[: len(blob) // 2])
    elif damage == "flip":
        path.write_bytes(blob[:-10] + bytes([blob[-10] ^ 0xFF]) + blob[-9:])
    else:
        path.write_bytes(b"not a cubin")
    compiled_before = _runtime.stats.compiled
    again = _runtime.build_variant(merge.FAMILY, VARIANT, 90)
    assert _runtime.stats.compiled == compiled_before + 1
    # NVRTC need not reproduce the same bytes (one device run differed), so compare what the
    # loader uses and that the file was rewritten whole with the new build.
    assert again.lowered_names == good.lowered_names
    assert again.binary[:4] == good.binary[:4] == b"\x7fELF"
    assert path.read_bytes().endswith(again.binary)  # rewritten whole, with the new build
    assert _runtime.build_variant(merge.FAMILY, VARIANT, 90) == again  # read back from disk


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_cache_dir_falls_back_to_memory_with_one_warning(tmp_cache):
    tmp_cache.mkdir(parents=True)
    tmp_cache.chmod(stat.S_IRUSR | stat.S_IXUSR)
    _runtime._warned_read_only = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _runtime.build_variant(merge.FAMILY, VARIANT, 90)
            _runtime.build_variant(merge.FAMILY, merge.FAMILY.common[1], 90)
        msgs = [w for w in caught if "not writable" in str(w.message)]
        assert len(msgs) == 1
    finally:
        tmp_cache.chmod(stat.S_IRWXU)


def test_unwritable_cache_path_falls_back_to_memory(tmp_path, monkeypatch):
    """Works as root too: the cache 'directory' is a regular file, so nothing can be written."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("CUPY_OPS_CACHE_DIR", str(blocker / "sub"))
    _runtime._warned_read_only = False
    with pytest.warns(RuntimeWarning, match="not writable"):
        compiled = _runtime.build_variant(merge.FAMILY, VARIANT, 90)
    assert len(compiled.binary) > 1000


def test_two_processes_compiling_at_once_both_succeed(tmp_cache):
    code = ("from cupy_ops import _runtime; from cupy_ops.ops import merge_attn_states as m;"
            "c = _runtime.build_variant(m.FAMILY, m.FAMILY.common[2], 90); print(len(c.binary))")
    env = dict(os.environ, CUPY_OPS_CACHE_DIR=str(tmp_cache))
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(3)]
    sizes = [p.communicate()[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len(set(sizes)) == 1
    (path,) = cache_files(tmp_cache)
    assert _runtime._read_cached(path, merge.FAMILY.name_expression(merge.FAMILY.common[2])) is not None
    assert not list(tmp_cache.glob(".tmp-*")), "temporary files left behind"


def test_changed_source_changes_the_key(monkeypatch):
    opts = _runtime.compile_options(90)
    expr = merge.FAMILY.name_expression(VARIANT)
    key = _runtime.cache_key(expr, opts)
    monkeypatch.setattr(_runtime, "_source_tree_hash", lambda: "different")
    assert _runtime.cache_key(expr, opts) != key
    monkeypatch.setattr(_runtime, "nvrtc_version", lambda: (99, 0))
    assert _runtime.cache_key(expr, opts) != key


def test_experiment_defines_reach_nvrtc_and_the_cache_key(tmp_cache, monkeypatch):
    expr = merge.FAMILY.name_expression(VARIANT)
    plain = _runtime.compile_options(90)
    monkeypatch.setenv("CUPY_OPS_EXPERIMENT_DEFINES", "CUPY_OPS_EXP_TEST_B, CUPY_OPS_EXP_TEST_A")
    switched = _runtime.compile_options(90)
    assert switched == plain + ("-DCUPY_OPS_EXP_TEST_A", "-DCUPY_OPS_EXP_TEST_B")
    assert _runtime.cache_key(expr, switched) != _runtime.cache_key(expr, plain)
    source = ("template <int N> __global__ void k(int* p) {\n#ifdef CUPY_OPS_EXP_TEST_A\n"
              "static_assert(N < 0, \"switch seen\");\n#endif\n p[0] = N; }")
    with pytest.raises(_runtime.CompileError, match="switch seen"):
        _runtime.nvrtc_compile(source, ["k<3>"], switched, "switch.cu")
    _runtime.nvrtc_compile(source, ["k<3>"], plain, "switch.cu")  # without the switch it builds
    _runtime.build_variant(merge.FAMILY, VARIANT, 90)
    monkeypatch.delenv("CUPY_OPS_EXPERIMENT_DEFINES")
    _runtime.build_variant(merge.FAMILY, VARIANT, 90)
    assert len(cache_files(tmp_cache)) == 2  # the switched build has its own entry


@pytest.mark.parametrize("bad", ["NDEBUG", "CUPY_OPS_EXP_X=1", "-DCUPY_OPS_EXP_X"])
def test_experiment_defines_refuse_other_macros(monkeypatch, bad):
    monkeypatch.setenv("CUPY_OPS_EXPERIMENT_DEFINES", bad)
    with pytest.raises(ValueError, match="CUPY_OPS_EXPERIMENT_DEFINES"):
        _runtime.compile_options(90)


def test_variant_outside_the_table_is_refused():
    bogus = merge.Variant("float32", 2, False)  # fp32 has no 2-byte vectors
    with pytest.raises(ValueError, match="not in the kernel table"):
        _runtime.build_variant(merge.FAMILY, bogus, 90)


def test_compile_error_names_instantiation_options_and_log():
    source = "template <int N> __global__ void k(int* p) { p[0] = N + undefined_name; }"
    with pytest.raises(_runtime.CompileError) as info:
        _runtime.nvrtc_compile(source, ["k<3>"], _runtime.compile_options(90), "bad.cu")
    msg = str(info.value)
    assert "k<3>" in msg and "-arch=sm_90" in msg and "undefined_name" in msg
    assert "CUPY_OPS_DUMP_SOURCE" in msg


def test_sources_and_cuda_headers_are_found():
    assert (_runtime.cuda_src_dir() / "merge_attn_states.cu").is_file()
    assert any(os.path.isfile(os.path.join(d, "cuda_fp16.h")) for d in _runtime.cuda_include_dirs())
